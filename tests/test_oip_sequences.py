"""Triton sequences (sequence_id / start / end) over OIP, through the real Triton clients.

Every chunk's answer must equal the batch prediction of everything sent so far (<= 1e-5), over
HTTP unary, gRPC unary and gRPC ModelStreamInfer, in random chunkings (single samples, chunks
shorter than a patch, chunks longer than a session's engine credit); the last answer equals
the WebSocket stream's `final`. Errors reach the client readable; sequences expire after the
idle TTL and belong to their API key.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import httpx
import numpy as np
import pytest

from server.auth import key_line
from tests.conftest import free_port

th = pytest.importorskip("tritonclient.http")
tg = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOL = 1e-5
CHANNELS = {"tiny": 1, "tiny2": 2, "tinynone": 1, "tinyema": 1}
PATCH = {"tiny": 1, "tiny2": 2, "tinynone": 1, "tinyema": 1}


@pytest.fixture(scope="module")
def srv(start_server, checkpoint_dir):
    return start_server(checkpoints=checkpoint_dir, grpc_port=free_port())


@pytest.fixture(scope="module")
def http(srv):
    c = th.InferenceServerClient(srv.base_url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(srv):
    c = tg.InferenceServerClient(f"127.0.0.1:{srv.settings.grpc_port}")
    yield c
    c.close()


def signal(length: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((length, c)).astype(np.float32)


def chunking(total: int, seed: int) -> list[int]:
    """Random chunk sizes: single samples, odd sizes, and one larger than the engine credit."""
    rng = np.random.default_rng(seed)
    sizes = [1, 3, int(rng.integers(2, 200)), 10_000]
    while sum(sizes) < total:
        sizes.append(int(rng.integers(1, 700)))
    sizes[-1] -= sum(sizes) - total
    return [s for s in sizes if s > 0]


def batch_probs(srv, model: str, prefixes: list[np.ndarray]) -> np.ndarray:
    """/v1 predict of each prefix [L, C] (NaN rows for prefixes shorter than a patch)."""
    out = np.full((len(prefixes), 0), np.nan)
    ok = [i for i, p in enumerate(prefixes) if len(p) >= PATCH[model]]
    r = httpx.post(f"{srv.base_url}/v1/models/{model}/predict",
                   json={"inputs": [prefixes[i].tolist() for i in ok]}, timeout=120)
    assert r.status_code == 200, r.text
    rows = [list(p["probabilities"].values()) for p in r.json()["predictions"]]
    out = np.full((len(prefixes), len(rows[0])), np.nan)
    out[ok] = rows
    return out


def make_input(mod, x: np.ndarray, binary: bool = True):
    inp = mod.InferInput("input", [1, *x.shape], "FP32")
    if mod is th:
        inp.set_data_from_numpy(x[None], binary_data=binary)
    else:
        inp.set_data_from_numpy(x[None])
    return inp


def offset_of(mod, result) -> int:
    resp = result.get_response()
    if mod is th:
        return resp["parameters"]["sequence_offset"]
    return resp.parameters["sequence_offset"].int64_param


def run_sequence(mod, client, model: str, x: np.ndarray, sizes: list[int], seq_id,
                 headers=None, binary: bool = True) -> tuple[np.ndarray, list[int]]:
    """Feed x in chunks of `sizes` as one sequence; probabilities and offsets after each."""
    probs, offsets, at = [], [], 0
    for i, n in enumerate(sizes):
        r = client.infer(model, [make_input(mod, x[at:at + n], binary)], sequence_id=seq_id,
                         sequence_start=i == 0, sequence_end=i == len(sizes) - 1,
                         headers=headers)
        at += n
        probs.append(r.as_numpy("probabilities")[0])
        offsets.append(offset_of(mod, r))
    return np.array(probs), offsets


def check_against_batch(srv, model: str, x: np.ndarray, sizes: list[int], probs: np.ndarray,
                        offsets: list[int]) -> None:
    ends = np.cumsum(sizes)
    p = PATCH[model]
    assert offsets == [int(e - e % p) for e in ends]  # the prediction after whole patches
    expect = batch_probs(srv, model, [x[:e] for e in ends])
    assert np.array_equal(np.isnan(probs), np.isnan(expect))
    diff = np.nanmax(np.abs(probs - expect))
    assert diff <= TOL, f"max |stream - batch| = {diff:.2e}"


# ---- sequences equal the batch prediction --------------------------------------------------
@pytest.mark.parametrize("model", ["tiny", "tiny2", "tinynone", "tinyema"])
def test_http_sequence_equals_batch_after_every_chunk(srv, http, model):
    x = signal(14_000, CHANNELS[model], seed=len(model))
    sizes = chunking(len(x), seed=3)
    probs, offsets = run_sequence(th, http, model, x, sizes, seq_id=1000 + len(model))
    check_against_batch(srv, model, x, sizes, probs, offsets)


def test_http_sequence_with_json_tensors_and_string_id(srv, http):
    x = signal(3_000, 1, seed=5)
    sizes = [700, 1, 999, 1300]
    probs, offsets = run_sequence(th, http, "tiny", x, sizes, seq_id="json-seq", binary=False)
    check_against_batch(srv, "tiny", x, sizes, probs, offsets)


@pytest.mark.parametrize("model", ["tiny", "tiny2"])
def test_grpc_unary_sequence_equals_batch(srv, grpc_client, model):
    x = signal(12_000, CHANNELS[model], seed=7)
    sizes = chunking(len(x), seed=11)
    probs, offsets = run_sequence(tg, grpc_client, model, x, sizes, seq_id=f"g-{model}")
    check_against_batch(srv, model, x, sizes, probs, offsets)


def test_grpc_stream_sequences_interleaved_equal_batch(srv):
    """Two sequences interleaved on one ModelStreamInfer call; answers come back in order."""
    results: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(f"127.0.0.1:{srv.settings.grpc_port}")
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    xs = {"a": signal(9_000, 1, seed=21), "b": signal(6_000, 1, seed=22)}
    plans = {"a": chunking(9_000, seed=1), "b": chunking(6_000, seed=2)}
    order = [(k, i) for i in range(max(map(len, plans.values()))) for k in plans
             if i < len(plans[k])]
    at = {"a": 0, "b": 0}
    for k, i in order:
        n = plans[k][i]
        c.async_stream_infer("tiny", [make_input(tg, xs[k][at[k]:at[k] + n])], request_id=k,
                             sequence_id=f"stream-{k}", sequence_start=i == 0,
                             sequence_end=i == len(plans[k]) - 1)
        at[k] += n
    got: dict[str, list] = {"a": [], "b": []}
    for _ in order:
        result, error = results.get(timeout=60)
        assert error is None, error
        got[result.get_response().id].append(
            (result.as_numpy("probabilities")[0], offset_of(tg, result)))
    c.stop_stream()
    c.close()
    for k in plans:
        probs = np.array([p for p, _ in got[k]])
        check_against_batch(srv, "tiny", xs[k], plans[k], probs, [o for _, o in got[k]])


def test_sequence_final_equals_websocket_final(srv, http, ws_client):
    x = signal(5_000, 1, seed=31)
    probs, _ = run_sequence(th, http, "tiny", x, [1234, 3766], seq_id=31)
    res = asyncio.run(ws_client.stream_signal(srv.ws_url("tiny"), x, start={"sample_rate": 16000}))
    final = np.array(list(res.final["probabilities"].values()))
    assert np.abs(probs[-1] - final).max() <= TOL


def test_concurrent_sequences_are_independent(srv):
    errors: list = []
    outcome: dict = {}

    def one(i: int) -> None:
        try:
            c = th.InferenceServerClient(srv.base_url.removeprefix("http://"))
            x = signal(4_000, 1, seed=100 + i)
            sizes = chunking(4_000, seed=200 + i)
            outcome[i] = (x, sizes, *run_sequence(th, c, "tiny", x, sizes, seq_id=500 + i))
            c.close()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for x, sizes, probs, offsets in outcome.values():
        check_against_batch(srv, "tiny", x, sizes, probs, offsets)


# ---- errors the client can read --------------------------------------------------------------
def test_sequence_errors_readable(http, grpc_client):
    x = signal(100, 1, seed=1)
    for mod, client, sid in ((th, http, 77), (tg, grpc_client, "e77")):
        with pytest.raises(InferenceServerException) as ei:  # never started
            client.infer("tiny", [make_input(mod, x)], sequence_id=sid)
        assert "is not open" in ei.value.message() and "sequence_start" in ei.value.message()
        assert ei.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        client.infer("tiny", [make_input(mod, x)], sequence_id=sid, sequence_start=True)
        with pytest.raises(InferenceServerException) as ei:  # started twice
            client.infer("tiny", [make_input(mod, x)], sequence_id=sid, sequence_start=True)
        assert "already started" in ei.value.message()
        assert ei.value.status() in ("409", "StatusCode.ABORTED")
        client.infer("tiny", [make_input(mod, x)], sequence_id=sid, sequence_end=True)
        with pytest.raises(InferenceServerException) as ei:  # ended twice
            client.infer("tiny", [make_input(mod, x)], sequence_id=sid, sequence_end=True)
        assert "is not open" in ei.value.message()
        with pytest.raises(InferenceServerException) as ei:  # batch-only model
            client.infer("tinybi", [make_input(mod, x)], sequence_id=sid, sequence_start=True)
        assert "bidirectional" in ei.value.message()
        two = mod.InferInput("input", [2, 10], "FP32")
        two.set_data_from_numpy(np.zeros((2, 10), np.float32))
        with pytest.raises(InferenceServerException) as ei:  # a sequence request is one row
            client.infer("tiny", [two], sequence_id=sid, sequence_start=True)
        assert "one row" in ei.value.message()


def test_grpc_stream_error_then_goes_on(srv):
    results: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(f"127.0.0.1:{srv.settings.grpc_port}")
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    x = signal(200, 1, seed=2)
    c.async_stream_infer("tiny", [make_input(tg, x)], sequence_id="never-started")
    c.async_stream_infer("tiny", [make_input(tg, x)], sequence_id="s-ok", sequence_start=True,
                         sequence_end=True)
    (r1, e1), (r2, e2) = results.get(timeout=30), results.get(timeout=30)
    c.stop_stream()
    c.close()
    assert r1 is None and "is not open" in e1.message()
    assert e2 is None and offset_of(tg, r2) == 200


def test_sequence_expires_after_idle_ttl(start_server, checkpoint_dir):
    s = start_server(checkpoints=checkpoint_dir, idle_ttl_s=0.5)
    c = th.InferenceServerClient(s.base_url.removeprefix("http://"))
    x = signal(300, 1, seed=3)
    c.infer("tiny", [make_input(th, x)], sequence_id=9, sequence_start=True)
    c.infer("tiny", [make_input(th, x)], sequence_id=9)  # within the TTL: still there
    time.sleep(1.5)  # > the TTL plus a reaper period (ttl / 4)
    with pytest.raises(InferenceServerException) as ei:
        c.infer("tiny", [make_input(th, x)], sequence_id=9)
    assert "is not open" in ei.value.message() and "idle TTL" in ei.value.message()
    c.close()


def test_cancelled_sequence_start_leaves_no_session(start_server, checkpoint_dir):
    """gRPC deadlines that expire while `sequence_start` is opening the session (the server
    cancels the handler): the engine's answer used to find nobody waiting and the session
    stayed attached to the front-end for ever, so the sequence id answered 409 `already
    started` for good and its state slot never came back. Every id starts again after it, and
    no session is left once the started ones expire."""
    s = start_server(checkpoints=checkpoint_dir, grpc_port=free_port(), idle_ttl_s=0.5)
    c = tg.InferenceServerClient(f"127.0.0.1:{s.settings.grpc_port}")
    x = signal(64, 1, seed=4)
    for i in range(60):  # deadlines of 0.5-10 ms: some expire inside the open
        try:
            c.infer("tiny", [make_input(tg, x)], sequence_id=f"dl{i}", sequence_start=True,
                    client_timeout=0.0005 * (i % 20 + 1))
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.DEADLINE_EXCEEDED", exc
    time.sleep(1.5)  # the ones that did start expire (TTL plus a reaper period)
    for i in range(60):
        r = c.infer("tiny", [make_input(tg, x)], sequence_id=f"dl{i}", sequence_start=True,
                    sequence_end=True)
        assert offset_of(tg, r) == len(x)
    text = httpx.get(f"{s.base_url}/metrics", timeout=10).text
    active = [ln for ln in text.splitlines() if ln.startswith('s4d_sessions_active{model="tiny"}')]
    assert active and float(active[0].split()[-1]) == 0, active
    c.close()


# ---- API keys ------------------------------------------------------------------------------
def test_sequences_belong_to_their_key(start_server, checkpoint_dir, tmp_path):
    keys = {"alice": "ka-" + "1" * 20, "bob": "kb-" + "2" * 20, "carol": "kc-" + "3" * 20}
    path = tmp_path / "keys"
    path.write_text(key_line("alice", keys["alice"]) + "\n" + key_line("bob", keys["bob"])
                    + "\n" + key_line("carol", keys["carol"], max_sessions=1) + "\n")
    s = start_server(checkpoints=checkpoint_dir, api_keys_file=path, grpc_port=free_port())
    hc = th.InferenceServerClient(s.base_url.removeprefix("http://"))
    gc = tg.InferenceServerClient(f"127.0.0.1:{s.settings.grpc_port}")
    def auth(name: str) -> dict:  # a fresh dict: tritonclient.http adds its own headers to it
        return {"authorization": f"Bearer {keys[name]}"}

    x = signal(2_000, 1, seed=4)
    # no key: refused on both transports
    with pytest.raises(InferenceServerException) as ei:
        hc.infer("tiny", [make_input(th, x)], sequence_id=1, sequence_start=True)
    assert ei.value.status() == "401"
    with pytest.raises(InferenceServerException) as ei:
        gc.infer("tiny", [make_input(tg, x)], sequence_id=1, sequence_start=True)
    assert ei.value.status() == "StatusCode.UNAUTHENTICATED"
    assert gc.is_server_live()  # health stays open
    # alice's sequence 1 is not bob's: bob cannot continue it, and his own 1 is independent
    a1 = hc.infer("tiny", [make_input(th, x[:900])], sequence_id=1, sequence_start=True,
                  headers=auth("alice"))
    for client, mod in ((hc, th), (gc, tg)):
        with pytest.raises(InferenceServerException) as ei:
            client.infer("tiny", [make_input(mod, x[900:])], sequence_id=1,
                         headers=auth("bob"))
        assert "is not open" in ei.value.message()
    b1 = gc.infer("tiny", [make_input(tg, x[:50])], sequence_id=1, sequence_start=True,
                  headers=auth("bob"))
    assert offset_of(tg, b1) == 50 and offset_of(th, a1) == 900
    a2 = gc.infer("tiny", [make_input(tg, x[900:])], sequence_id=1, sequence_end=True,
                  headers=auth("alice"))  # alice continues over gRPC what she began over HTTP
    expect = batch_probs_keyed(s, x, auth("alice"))
    assert np.abs(a2.as_numpy("probabilities")[0] - expect).max() <= TOL
    # carol's quota: one session; an ended sequence frees it
    hc.infer("tiny", [make_input(th, x)], sequence_id=1, sequence_start=True,
             headers=auth("carol"))
    with pytest.raises(InferenceServerException) as ei:
        hc.infer("tiny", [make_input(th, x)], sequence_id=2, sequence_start=True,
                 headers=auth("carol"))
    assert ei.value.status() == "429"
    hc.infer("tiny", [make_input(th, x)], sequence_id=1, sequence_end=True, headers=auth("carol"))
    hc.infer("tiny", [make_input(th, x)], sequence_id=2, sequence_start=True, sequence_end=True,
             headers=auth("carol"))
    hc.close()
    gc.close()


def batch_probs_keyed(s, x: np.ndarray, headers: dict) -> np.ndarray:
    r = httpx.post(f"{s.base_url}/v1/models/tiny/predict", json={"inputs": [x[:, 0].tolist()]},
                   headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return np.array(list(r.json()["predictions"][0]["probabilities"].values()))


# ---- /v2 infer is budgeted like /v1 predict (issue 12) ---------------------------------------
def test_v2_infer_flood_gets_server_busy(start_server, checkpoint_dir):
    s = start_server(checkpoints=checkpoint_dir, max_pending_samples=50_000)
    x = signal(200_000, 1, seed=6)[None]
    statuses: list = []

    def one() -> None:
        c = th.InferenceServerClient(s.base_url.removeprefix("http://"), network_timeout=120)
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        try:
            c.infer("tiny", [inp])
            statuses.append("200")
        except InferenceServerException as exc:
            statuses.append((exc.status(), exc.message()))
        c.close()

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    busy = [st for st in statuses if st != "200"]
    assert "200" in statuses and busy, statuses
    assert all(st[0] == "503" and "pending" in st[1] for st in busy), busy
    # the budget is released afterwards: the same request passes alone
    r = httpx.post(f"{s.base_url}/v2/models/tiny/infer", timeout=60, json={
        "inputs": [{"name": "input", "shape": [1, 1000], "datatype": "FP32",
                    "data": [0.0] * 1000}]})
    assert r.status_code == 200, r.text


def test_v2_infer_body_limit_before_parsing(start_server, checkpoint_dir):
    s = start_server(checkpoints=checkpoint_dir, max_body_bytes=4096)
    r = httpx.post(f"{s.base_url}/v2/models/tiny/infer", content=b"[" * 10_000, timeout=30)
    assert r.status_code == 413 and isinstance(r.json()["error"], str)



def test_sequence_samples_sent_refuses_a_retried_chunk(srv, http, grpc_client):
    """A chunk whose answer was lost (a client timeout after the server received it) and that
    is sent again with the same `sequence_samples_sent` is refused, not applied twice; the
    sequence goes on from the server's count and still equals the batch path."""
    x = signal(260, 1, seed=9)
    for mod, client, sid in ((th, http, 4242), (tg, grpc_client, "retry-4242")):
        def send(lo, hi, sent, mod=mod, client=client, sid=sid, **kw):
            return client.infer("tiny", [make_input(mod, x[lo:hi])], sequence_id=sid,
                                parameters={"sequence_samples_sent": sent}, **kw)

        assert offset_of(mod, send(0, 100, 0, sequence_start=True)) == 100
        assert offset_of(mod, send(100, 150, 100)) == 150
        with pytest.raises(InferenceServerException) as ei:  # the same chunk again
            send(100, 150, 100)
        assert "has received 150 samples, not 100" in ei.value.message()
        assert ei.value.status() in ("409", "StatusCode.ABORTED")
        assert 'code="sequence_samples_mismatch"' in srv.metrics_text()
        last = send(150, 260, 150, sequence_end=True)
        assert offset_of(mod, last) == 260
        expect = batch_probs(srv, "tiny", [x])[0]
        assert np.abs(last.as_numpy("probabilities")[0] - expect).max() <= TOL
        for bad, start in ((-1, False), ("7", False), (True, False), (5, True)):
            with pytest.raises(InferenceServerException) as ei:
                client.infer("tiny", [make_input(mod, x[:10])], sequence_id=f"{sid}-bad",
                             sequence_start=start, parameters={"sequence_samples_sent": bad})
            assert "sequence_samples_sent" in ei.value.message()
            assert ei.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
