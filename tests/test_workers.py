"""`s4d serve --workers 2`: real supervisor, front-end and engine processes on loopback.

Checks what the process split promises (server/PROTOCOL.md, DESIGN.md "Processes"): streams
through front-end processes equal the batch prediction, a session resumes through another
front-end after its own is SIGKILLed, an engine SIGKILL gives `internal` / 1011 (never a hang)
and `/readyz` 503 until the supervisor has it back, SIGTERM drains every stream with `final`
then 1001, and `/metrics` sums every process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import websockets

from tests.conftest import (
    assert_probs_close,
    child_pythonpath,
    encode,
    free_port,
    stop_process_group,
)

START = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1,
         "emit_every": 0}


class Workers:
    def __init__(self, checkpoints, workers: int = 2, models: str = "tiny,tinynone", **env):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # one GPU at most unless a test asks for more: the tests count one engine per device
        first_gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
        e = {**os.environ, "S4D_FRONTEND_TIMEOUT_S": "1", "S4D_LOG_LEVEL": "warning",
             "PYTHONPATH": child_pythonpath(), "CUDA_VISIBLE_DEVICES": first_gpu,
             **{k: str(v) for k, v in env.items()}}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--workers", str(workers), "--port", str(self.port),
             "--checkpoints", str(checkpoints), "--models", models],
            env=e, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.wait_ready()

    def url(self, model: str = "tiny") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/models/{model}/stream"

    def wait_ready(self, timeout: float = 120) -> float:
        """Ready on every front-end: 20 answers in a row on new connections, which the kernel
        spreads over the front-ends (one ready front-end is not enough: a stream landing on
        another, still connecting to its engine, was told to try again)."""
        t0, streak = time.monotonic(), 0
        while time.monotonic() - t0 < timeout:
            assert self.proc.poll() is None, self.proc.stdout.read().decode()[-3000:]
            try:
                ok = httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            streak = streak + 1 if ok else 0
            if streak >= 20:
                return time.monotonic() - t0
            time.sleep(0.01 if ok else 0.1)
        raise AssertionError("server with workers did not become ready")

    def children(self, prefix: str) -> list[psutil.Process]:
        return [c for c in psutil.Process(self.proc.pid).children()
                if c.is_running() and c.name().startswith(prefix)]

    def frontend_of(self, ws) -> psutil.Process:
        """The front-end process holding this client connection."""
        port = ws.transport.get_extra_info("sockname")[1]
        for c in self.children("s4d-frontend"):
            for conn in c.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == port:
                    return c
        raise AssertionError("no front-end holds the connection")

    def stop(self) -> None:
        stop_process_group(self.proc)


@pytest.fixture(scope="module")
def workers(checkpoint_dir):
    w = Workers(checkpoint_dir)
    yield w
    w.stop()


def batch(w: Workers, x: np.ndarray, model: str = "tiny") -> dict:
    """The batch path's prediction. A front-end restarted by a test answers 503 server_busy
    while it loads its models (the documented answer): retry that, for up to 60 s."""
    deadline = time.monotonic() + 60
    while True:
        r = httpx.post(f"{w.base}/v1/models/{model}/predict", json={"inputs": [x.tolist()]},
                       timeout=60)
        busy = r.status_code == 503 and r.json().get("error", {}).get("code") == "server_busy"
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["probabilities"]


async def _stream(url: str, x: np.ndarray, piece: int) -> tuple[dict, int]:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps(START))
        assert json.loads(await ws.recv())["type"] == "started"
        data = encode(x[:, None], "f32le")
        for i in range(0, len(data), piece):
            await ws.send(data[i:i + piece])
        await ws.send(json.dumps({"type": "end"}))
        final = json.loads(await ws.recv())
        await ws.wait_closed()
        return final, ws.close_code


def test_streams_through_workers_equal_batch(workers):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(n).astype(np.float32) * 0.3 for n in (1000, 333, 64 * 7)]

    async def main():
        return await asyncio.gather(*(_stream(workers.url(), x, p)
                                      for x, p in zip(xs, (4 * 37, 4 * 64, 2), strict=True)))

    for (final, code), x in zip(asyncio.run(main()), xs, strict=True):
        assert code == 1000 and final["type"] == "final" and final["offset"] == len(x)
        assert_probs_close(final["probabilities"], batch(workers, x), 1e-5)
    text = httpx.get(f"{workers.base}/metrics", timeout=10).text
    opened = [ln for ln in text.splitlines() if ln.startswith('s4d_sessions_opened_total{model="tiny"}')]
    assert opened and float(opened[0].split()[-1]) >= 3  # the engine's counters, via a front-end
    gc_series = [ln for ln in text.splitlines() if ln.startswith("s4d_gc_pause_seconds_count{")]
    lag_series = [ln for ln in text.splitlines()
                  if ln.startswith("s4d_event_loop_lag_seconds_count{")]
    for process in ("engine", "frontend"):  # each process watches its collector and its loop
        assert any(f'process="{process}"' in ln for ln in gc_series), (process, gc_series)
        assert any(f'process="{process}"' in ln for ln in lag_series), (process, lag_series)


def test_big_json_predict_parses_in_a_decode_process(workers):
    """A JSON body over decode_process_min_bytes (4 MiB) is parsed by a child of the front-end
    (s4d-decode), and answers as a small body of the same numbers does through a thread."""
    x = (np.random.default_rng(7).standard_normal(450_000) * 0.3).astype(np.float32)
    body = ('{"inputs": [[' + ",".join(f"{v:.7f}" for v in x) + "]]}").encode()
    assert len(body) > 4 << 20
    r = httpx.post(f"{workers.base}/v1/models/tiny/predict", content=body,
                   headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code == 200, r.text
    decoders = [c for f in workers.children("s4d-frontend") for c in f.children()
                if c.name() == "s4d-decode"]
    assert decoders, "no s4d-decode process under any front-end"
    # the same numbers as NPY (decoded in a thread): the same prediction
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([float(f"{v:.7f}") for v in x], np.float32))
    ref = httpx.post(f"{workers.base}/v1/models/tiny/predict", content=buf.getvalue(),
                     headers={"content-type": "application/x-npy"}, timeout=120)
    assert_probs_close(r.json()["predictions"][0]["probabilities"],
                       ref.json()["predictions"][0]["probabilities"], 1e-6)


def test_frontend_sigkill_session_resumes_elsewhere(workers):
    """A front-end that dies takes only its sockets: the session resumes on another one."""
    x = (np.random.default_rng(1).standard_normal(900) * 0.3).astype(np.float32)
    cut = 500

    async def main():
        ws = await websockets.connect(workers.url())
        await ws.send(json.dumps(START))
        sid = json.loads(await ws.recv())["session_id"]
        await ws.send(encode(x[:cut, None], "f32le"))
        await asyncio.sleep(0.5)  # the samples reach the engine
        victim = workers.frontend_of(ws)
        victim.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        while True:  # resume through whatever front-end accepts; busy until the engine
            assert time.monotonic() - t0 < 20  # has noticed the dead front-end
            try:
                async with websockets.connect(workers.url()) as ws2:
                    await ws2.send(json.dumps({**START, "session_id": sid, "offset": cut}))
                    msg = json.loads(await ws2.recv())
                    if msg["type"] == "error":
                        assert msg["code"] == "session_busy", msg
                        await asyncio.sleep(0.2)
                        continue
                    assert msg["offset"] == cut
                    assert workers.frontend_of(ws2).pid != victim.pid
                    await ws2.send(encode(x[cut:, None], "f32le"))
                    await ws2.send(json.dumps({"type": "end"}))
                    final = json.loads(await ws2.recv())
                    return final
            except (OSError, websockets.WebSocketException):  # a dying socket
                await asyncio.sleep(0.2)

    final = asyncio.run(main())
    assert final["type"] == "final" and final["offset"] == len(x)
    assert_probs_close(final["probabilities"], batch(workers, x), 1e-5)
    deadline = time.monotonic() + 60  # the supervisor brings the front-end count back
    while len(workers.children("s4d-frontend")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers.children("s4d-frontend")) == 2


def test_engine_sigkill_fails_streams_then_recovers(checkpoint_dir):
    w = Workers(checkpoint_dir)
    try:
        async def main():
            ws = await websockets.connect(w.url())
            await ws.send(json.dumps(START))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(encode(np.zeros((200, 1), np.float32), "f32le"))
            (engine,) = w.children("s4d-engine")
            assert _rings(engine.pid)  # the engine's sample rings live in /dev/shm
            engine.send_signal(signal.SIGKILL)
            msg = json.loads(await asyncio.wait_for(ws.recv(), 15))  # never a hang
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return sid, msg, ws.close_code, engine.pid

        sid, msg, code, dead = asyncio.run(main())
        assert msg["type"] == "error" and msg["code"] == "internal" and code == 1011
        r = httpx.get(f"{w.base}/readyz", timeout=5)
        if r.status_code == 200:  # the supervisor had a new engine up already (a fast restart)
            assert [p.pid for p in w.children("s4d-engine")] != [dead], "ready on a dead engine"
        else:
            assert r.status_code == 503  # not ready until the engine is back
        w.wait_ready()
        assert not _rings(dead)  # the supervisor removed the killed engine's rings
        (new,) = w.children("s4d-engine")

        async def resume():
            async with websockets.connect(w.url()) as ws:
                await ws.send(json.dumps({**START, "session_id": sid, "offset": 200}))
                return json.loads(await ws.recv()), await ws.wait_closed() or ws.close_code

        msg, code = asyncio.run(resume())
        assert msg["code"] == "unknown_session" and code == 1008
        x = np.linspace(-1, 1, 300, dtype=np.float32)
        final, code = asyncio.run(_stream(w.url(), x, 4 * 50))
        assert code == 1000
        assert_probs_close(final["probabilities"], batch(w, x), 1e-5)
    finally:
        w.stop()
    assert not _rings(new.pid)  # a stopped engine unlinks its own


def test_several_engines_share_the_sessions(checkpoint_dir):
    """engines_per_device = 2 on the CPU: the path of a multi-GPU host (the front-ends' pool
    over several engines). New sessions spread over both engines (their ids name the engine);
    every stream equals the batch prediction; a session detached from engine 1 resumes there
    through whichever front-end takes the new connection; killing one engine fails only its
    own streams, and the other engine's stream ends normally."""
    w = Workers(checkpoint_dir, S4D_ENGINES_PER_DEVICE=2, S4D_IDLE_TTL_S=30, S4D_DEVICE="cpu")
    rng = np.random.default_rng(7)
    xs = [(rng.standard_normal(640) * 0.3).astype(np.float32) for _ in range(8)]
    try:
        assert len(w.children("s4d-engine")) == 2

        async def open_stream(x):
            ws = await websockets.connect(w.url())
            await ws.send(json.dumps(START))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(encode(x[:320, None], "f32le"))
            return ws, sid

        async def finish(ws, x):
            await ws.send(encode(x[320:, None], "f32le"))
            await ws.send(json.dumps({"type": "end"}))
            final = json.loads(await ws.recv())
            await ws.close()
            return final

        async def spread():
            opened = [await open_stream(x) for x in xs]  # all open at once
            finals = await asyncio.gather(*(finish(ws, x) for (ws, _), x in zip(opened, xs)))
            return [sid for _, sid in opened], finals

        sids, finals = asyncio.run(spread())
        assert {sid.split("-", 1)[0] for sid in sids} == {"e0", "e1"}, sids
        for final, x in zip(finals, xs, strict=True):
            assert final["type"] == "final" and final["offset"] == len(x)
            assert_probs_close(final["probabilities"], batch(w, x), 1e-5)

        async def detach_and_resume(x):
            for _ in range(20):  # a session on engine 1 (placement: least loaded)
                ws, sid = await open_stream(x)
                if sid.startswith("e1-"):
                    break
                await ws.send(json.dumps({"type": "end"}))
                await ws.close()
            else:
                raise AssertionError("no session was placed on engine 1")
            await asyncio.sleep(0.3)  # the samples reach the engine
            await ws.close()  # no end: the session stays, detached
            for _ in range(50):
                async with websockets.connect(w.url()) as ws2:
                    await ws2.send(json.dumps({**START, "session_id": sid, "offset": 320}))
                    msg = json.loads(await ws2.recv())
                    if msg["type"] == "error":  # the engine has not yet seen the close
                        assert msg["code"] == "session_busy", msg
                        await asyncio.sleep(0.1)
                        continue
                    assert msg["offset"] == 320 and msg["session_id"] == sid
                    return await finish(ws2, x)
            raise AssertionError("the session never became free to resume")

        final = asyncio.run(detach_and_resume(xs[0]))
        assert final["offset"] == len(xs[0])
        assert_probs_close(final["probabilities"], batch(w, xs[0]), 1e-5)

        async def kill_one():
            pair = {}
            while len(pair) < 2:  # one live stream on each engine
                ws, sid = await open_stream(xs[1])
                pair.setdefault(sid[:2], ws)
            (victim,) = [c for c in w.children("s4d-engine") if c.name() == "s4d-engine-1"]
            victim.send_signal(signal.SIGKILL)
            msg = json.loads(await asyncio.wait_for(pair["e1"].recv(), 15))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(pair["e1"].recv(), 5)
            final = await finish(pair["e0"], xs[1])
            return msg, pair["e1"].close_code, final

        msg, code, final = asyncio.run(kill_one())
        assert msg["type"] == "error" and msg["code"] == "internal" and code == 1011
        assert final["type"] == "final" and final["offset"] == len(xs[1])
        assert_probs_close(final["probabilities"], batch(w, xs[1]), 1e-5)
    finally:
        w.stop()


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


@pytest.mark.parametrize("gpus,engines_per_device", [(2, 1), (1, 2)])
def test_two_gpu_engines_each_serve_their_sessions(gpus, engines_per_device):
    """Two engines on GPUs: one on each of two GPUs (cuda:0, cuda:1), or two processes sharing
    one GPU (--engines-per-device 2). The shipped keyword model (its Triton core and CUDA graphs
    on the engine's own GPU, in its own CUDA context) loads in both, sessions spread over them,
    and every stream equals the batch path."""
    if _gpus() < gpus:
        pytest.skip(f"needs {gpus} CUDA device(s)")
    ckpt = Path(__file__).resolve().parents[1] / "checkpoints"
    w = Workers(ckpt, models="kws-s4d", S4D_DEVICE="cuda",
                CUDA_VISIBLE_DEVICES=",".join(str(i) for i in range(gpus)),
                S4D_ENGINES_PER_DEVICE=engines_per_device)
    rng = np.random.default_rng(11)
    xs = [(rng.standard_normal(3200) * 0.1).astype(np.float32) for _ in range(6)]
    try:
        async def main():
            socks = []
            for x in xs:
                ws = await websockets.connect(w.url("kws-s4d"))
                await ws.send(json.dumps(START))
                sid = json.loads(await ws.recv())["session_id"]
                await ws.send(encode(x[:, None], "f32le"))
                socks.append((ws, sid))
            out = []
            for ws, sid in socks:
                await ws.send(json.dumps({"type": "end"}))
                out.append((sid, json.loads(await ws.recv())))
                await ws.close()
            return out

        results = asyncio.run(main())
        assert {sid[:2] for sid, _ in results} == {"e0", "e1"}
        for (_, final), x in zip(results, xs, strict=True):
            assert final["type"] == "final" and final["offset"] == len(x)
            assert_probs_close(final["probabilities"], batch(w, x, "kws-s4d"), 1e-4)
    finally:
        w.stop()


def _rings(pid: int) -> list[str]:
    return [p.name for p in Path("/dev/shm").glob(f"s4d-{pid}-*")]


async def _streams_then(w: Workers, x: np.ndarray, n: int, stop) -> tuple[list, list]:
    """`n` streams each send `x`, then `stop()` (a signal): their session ids, and per stream
    every message until the server closed it, with the close code."""
    socks, sids = [], []
    for _ in range(n):
        ws = await websockets.connect(w.url())
        await ws.send(json.dumps(START))
        started = json.loads(await ws.recv())
        assert started["type"] == "started", started
        sids.append(started["session_id"])
        await ws.send(encode(x[:, None], "f32le"))
        socks.append(ws)
    await asyncio.sleep(0.5)
    stop()
    out = []
    for ws in socks:
        msgs = []
        try:
            while True:
                msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
        except websockets.ConnectionClosed:
            pass
        out.append((msgs, ws.close_code))
    return sids, out


@pytest.mark.parametrize("engines", [1, 2])
def test_sigterm_drains_every_stream(checkpoint_dir, engines):
    """SIGTERM: every stream gets its final and 1001, with one engine or two (the engines stop
    after the front-ends have drained)."""
    w = Workers(checkpoint_dir, S4D_ENGINES_PER_DEVICE=engines, S4D_DEVICE="cpu")
    x = np.linspace(-1, 1, 500, dtype=np.float32)
    try:
        expected = batch(w, x)
        sids, out = asyncio.run(_streams_then(w, x, 4, lambda: os.kill(w.proc.pid,
                                                                       signal.SIGTERM)))
        for msgs, code in out:
            assert code == 1001, msgs
            final = next(m for m in msgs if m["type"] == "final")
            assert final["offset"] == len(x)
            assert_probs_close(final["probabilities"], expected, 1e-5)
            assert msgs[-1]["code"] == "shutting_down"
        assert w.proc.wait(30) == 0
        assert len({sid[:2] for sid in sids}) == engines
    finally:
        w.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_process_group_signal_drains_every_stream(checkpoint_dir, sig):
    """The signal sent to the whole process group, as Ctrl-C in a terminal (SIGINT), systemd's
    default KillMode or `kill -TERM -PGID` do: the engines get it together with the
    front-ends. They used to stop at once, and every draining stream lost its `final`
    (`internal`, 1011, once its front-end gave the engine up); the engines now stop after
    their front-ends have said goodbye."""
    w = Workers(checkpoint_dir)
    x = np.linspace(-1, 1, 700, dtype=np.float32)
    try:
        expected = batch(w, x)
        _, out = asyncio.run(_streams_then(w, x, 3, lambda: os.killpg(w.proc.pid, sig)))
        for msgs, code in out:
            assert code == 1001, msgs
            assert [m["type"] for m in msgs] == ["final", "error"], msgs
            assert msgs[0]["offset"] == len(x) and msgs[1]["code"] == "shutting_down"
            assert_probs_close(msgs[0]["probabilities"], expected, 1e-5)
        assert w.proc.wait(30) == 0
    finally:
        w.stop()


def test_key_quota_holds_across_engines(checkpoint_dir, tmp_path):
    """Two engines (engines_per_device 2): a key's `max_sessions` is its quota on the whole
    server, for streams and OIP sequences. Each engine counted only its own sessions and new
    sessions spread over the engines, so a key held max_sessions per engine."""
    from server.auth import key_line, new_key

    key = new_key()
    keys = tmp_path / "keys"
    keys.write_text(key_line("alice", key, None, 2) + "\n")
    w = Workers(checkpoint_dir, workers=1, S4D_ENGINES_PER_DEVICE=2, S4D_DEVICE="cpu",
                S4D_API_KEYS_FILE=keys)
    auth = {"Authorization": f"Bearer {key}"}

    async def streams():
        held, answers = [], []
        for _ in range(3):
            ws = await websockets.connect(w.url(), additional_headers=auth)
            await ws.send(json.dumps(START))
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            held.append(ws)
        for ws, a in zip(held, answers, strict=True):  # ended: they no longer count
            if a["type"] == "started":
                await ws.send(json.dumps({"type": "end"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "final"
            await asyncio.wait_for(ws.wait_closed(), 10)
        return answers, held[2].close_code

    def infer(seq: str) -> httpx.Response:
        body = {"parameters": {"sequence_id": seq, "sequence_start": True},
                "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                            "data": [0.0] * 64}]}
        return httpx.post(f"{w.base}/v2/models/tiny/infer", json=body, headers=auth, timeout=30)

    try:
        answers, code = asyncio.run(streams())
        assert [a["type"] for a in answers[:2]] == ["started", "started"], answers
        assert answers[2].get("code") == "quota_exceeded" and code == 1013, answers[2]
        statuses = [infer(seq).status_code for seq in ("q1", "q2", "q3", "q4")]
        assert statuses == [200, 200, 429, 429], statuses
    finally:
        w.stop()


def test_slab_full_and_backpressure_across_workers(checkpoint_dir):
    """Slab-full refusal (1013) holds with several front-ends; a client that sends far more
    than the buffer while the server is slow loses nothing."""
    w = Workers(checkpoint_dir, S4D_MAX_SESSIONS=2, S4D_MAX_BUFFER_SAMPLES=256)
    try:
        async def main():
            held = []
            for _ in range(2):
                ws = await websockets.connect(w.url())
                await ws.send(json.dumps(START))
                assert json.loads(await ws.recv())["type"] == "started"
                held.append(ws)
            async with websockets.connect(w.url()) as ws:
                await ws.send(json.dumps(START))
                refused = json.loads(await ws.recv())
                await ws.wait_closed()
                code = ws.close_code
            x = (np.random.default_rng(3).standard_normal(20_000) * 0.3).astype(np.float32)
            ws = held[0]
            data = encode(x[:, None], "f32le")
            for i in range(0, len(data), 4 * 3000):  # far beyond the 256-sample buffer
                await ws.send(data[i:i + 4 * 3000])
            await ws.send(json.dumps({"type": "end"}))
            final = json.loads(await ws.recv())
            for h in held:
                await h.close()
            return refused, code, final, x

        refused, code, final, x = asyncio.run(main())
        assert refused["code"] == "server_busy" and code == 1013
        assert final["offset"] == len(x)
        assert_probs_close(final["probabilities"], batch(w, x), 1e-5)
    finally:
        w.stop()


def test_cpu_engines_share_the_compute_threads(monkeypatch):
    from server.settings import Settings
    from server.supervisor import engine_devices

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(13)), raising=False)
    s = Settings(workers=2, engines_per_device=3, device="cpu")
    assert engine_devices(s) == ["cpu", "cpu", "cpu"]
    assert s.resolve_compute_threads("cpu") == 4  # (13 - 1) // 3
    assert s.resolve_compute_threads("cuda") == 12  # a GPU engine's host threads: not shared out
    assert Settings(workers=0, engines_per_device=3).resolve_compute_threads("cpu") == 12
    assert Settings(workers=2, engines_per_device=3, compute_threads=5).resolve_compute_threads() == 5


def test_killed_frontend_staging_rings_go(checkpoint_dir):
    """A front-end killed without its `bye` left its staging rings (one per model, in
    /dev/shm) until the engine stopped: once it has been silent past frontend_timeout_s and
    its process is gone, the engine removes them; the restarted front-end has its own."""
    w = Workers(checkpoint_dir)
    try:
        (engine,) = w.children("s4d-engine")

        def staging() -> set[str]:
            return {p.name for p in Path("/dev/shm").glob(f"s4d-{engine.pid}-m*-f*")}

        before = staging()
        assert len(before) == 4, before  # two front-ends x two models
        w.children("s4d-frontend")[0].send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = staging()
            if len(now) == 4 and now != before:  # the new front-end's in, the dead one's out
                break
            time.sleep(0.2)
        assert len(now) == 4 and len(now - before) == 2, (before, now)
    finally:
        w.stop()
