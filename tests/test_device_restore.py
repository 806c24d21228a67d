"""A live session moves between a GPU server and a CPU server (issue 11: "restored in another
process, on another device (CPU <-> GPU), the stream continues exactly").

Two real servers on loopback, one with `device=cuda`, one with `device=cpu`, both on the shipped
kws-s4d. Half of a keyword recording is streamed to the first; the session detaches, the
operator route takes its snapshot (safetensors bytes) and the other server restores it; the rest
of the recording goes there, and its `final` must equal the batch prediction of the whole
recording (within float32 rounding). The snapshot itself is also checked to hold plain float32
state whichever device wrote it.

Needs a CUDA device: skipped elsewhere (run on the lent GPU machine with
`python -m pytest tests/test_device_restore.py`).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets
from conftest import ROOT, encode

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (CPU <-> GPU snapshot moves)")

MODEL = "kws-s4d"
START = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1,
         "emit_every": 0}
# float32 rounding of a 2.3 s stream (2,300 recurrent steps) against the FFT batch path: the
# same server, no move, already differs by ~2e-5 here, so the bound is "no worse than streaming
# without a move" (x2 + 1e-5), and never above these absolute limits
TOL = 1e-4  # probabilities
LOG_TOL = 1e-3  # log-probabilities of every class with p > 1e-6 (the logits, in effect)


@pytest.fixture(scope="module")
def servers(start_server):
    common = dict(checkpoints=ROOT / "checkpoints", models=MODEL, idle_ttl_s=60.0,
                  precision="fp32")
    out = {d: start_server(device=d, **common) for d in ("cuda", "cpu")}
    for d, h in out.items():  # each server really runs where it says
        meta = httpx.get(f"{h.base_url}/v1/models/{MODEL}", timeout=10).json()
        assert meta["device"].startswith(d), meta
    return out


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    """2.3 s of the bundled keyword stream, quietened and mixed with noise so that no class is
    certain (saturated probabilities would hide a difference); ends on a partial frame."""
    x, rate = sf.read(ROOT / "server" / "static" / "samples" / "kws_stream.wav", dtype="float32")
    assert rate == 16000
    # noise 0.1: the shipped kws-s4d puts 0.75 on its top class here (at 0.02 it is saturated:
    # 0.998 for `yes`, and the check below refuses a saturated output)
    x = 0.3 * x[:36_801] + 0.1 * np.random.default_rng(3).standard_normal(36_801)
    return x.astype(np.float32)


def as_array(probs) -> np.ndarray:
    return np.asarray(list(probs.values()) if isinstance(probs, dict) else probs, np.float64)


def batch_probs(base: str, x: np.ndarray) -> np.ndarray:
    r = httpx.post(f"{base}/v1/models/{MODEL}/predict", json={"inputs": [x.tolist()]},
                   timeout=120)
    assert r.status_code == 200, r.text
    return as_array(r.json()["predictions"][0]["probabilities"])


async def _stream(h, x: np.ndarray) -> dict:
    async with websockets.connect(h.ws_url(MODEL)) as ws:
        await ws.send(json.dumps(START))
        json.loads(await ws.recv())
        await ws.send(encode(x[:, None], "f32le"))
        await ws.send(json.dumps({"type": "end"}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if msg["type"] in ("final", "error"):
                return msg


def diffs(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    seen = (a > 1e-6) & (b > 1e-6)
    return float(np.abs(a - b).max()), float(np.abs(np.log(a[seen]) - np.log(b[seen])).max())


async def _move(src, dst, x: np.ndarray, cut: int) -> tuple[dict, bytes, dict]:
    ws = await websockets.connect(src.ws_url(MODEL))
    await ws.send(json.dumps(START))
    sid = json.loads(await ws.recv())["session_id"]
    await ws.send(encode(x[:cut, None], "f32le"))
    await asyncio.sleep(0.5)
    await ws.close()
    await asyncio.sleep(0.5)  # detached: the session waits for its owner, snapshot-able
    async with httpx.AsyncClient(timeout=60) as c:
        snap = await c.get(f"{src.base_url}/v1/sessions/{sid}/snapshot")
        assert snap.status_code == 200, snap.text
        put = await c.put(f"{dst.base_url}/v1/sessions/{sid}", content=snap.content)
        assert put.status_code == 200, put.text
        assert put.json()["offset"] == cut
    async with websockets.connect(dst.ws_url(MODEL)) as ws:
        await ws.send(json.dumps({**START, "session_id": sid, "offset": cut}))
        started = json.loads(await ws.recv())
        assert started["type"] == "started" and started["offset"] == cut, started
        await ws.send(encode(x[cut:, None], "f32le"))
        await ws.send(json.dumps({"type": "end"}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if msg["type"] in ("final", "error"):
                return msg, snap.content, started


@pytest.mark.parametrize("first,second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_live_session_moves_between_gpu_and_cpu_servers(servers, recording, first, second):
    from server.snapshot import decode

    src, dst = servers[first], servers[second]
    cut = 19_200 + 37  # mid-frame and mid-patch: the snapshot carries a partial frame
    final, data, _ = asyncio.run(_move(src, dst, recording, cut))
    assert final["type"] == "final", final
    assert final["offset"] == len(recording)
    snap = decode(data)
    assert snap.consumed < cut == snap.received and len(snap.buffered) == cut - snap.consumed
    assert all(v.dtype == np.float32 for v in snap.state.values())
    got = as_array(final["probabilities"])
    assert got.max() < 0.99, got  # not saturated: differences would show
    unmoved = as_array(asyncio.run(_stream(src, recording))["probabilities"])
    for device in (first, second):  # the batch path of either device agrees
        want = batch_probs(servers[device].base_url, recording)
        diff, log_diff = diffs(got, want)
        base, base_log = diffs(unmoved, want)
        print(f"{first}->{second} vs batch on {device}: moved |dp| {diff:.2e} |dlog p| "
              f"{log_diff:.2e}; unmoved stream on {first} |dp| {base:.2e} |dlog p| "
              f"{base_log:.2e}; top p {got.max():.3f}")
        assert diff <= min(TOL, 2 * base + 1e-5), (first, second, device, diff, base)
        assert log_diff <= min(LOG_TOL, 2 * base_log + 1e-4), (device, log_diff, base_log)
