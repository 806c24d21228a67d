"""Big JSON predict bodies are parsed in a child process: the same answers and errors as the
decode threads, and the event loop (streams, /healthz) keeps running meanwhile."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import numpy as np
import pytest

from server import audio
from server.errors import ApiError
from server.limits import DecodePool
from server.routes.predict import decode_json

SPEC = audio.DecodeSpec(channels=1, sample_rate=16000, patch=1, max_len=10**6, min_rate=1000,
                        max_rate=384000)


def _slow_decode(body, spec, max_sequences):
    """decode_json after one C call of ~0.5 s that keeps the GIL (as orjson does on a big
    body): a regular expression with catastrophic backtracking."""
    re.fullmatch(r"(x+x+)+y", "x" * 25)
    return decode_json(body, spec, max_sequences)


def _body(n: int, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.3
    return ('{"inputs": [[' + ",".join(f"{v:.6f}" for v in x) + "]]}").encode()


def test_child_decode_equals_the_thread():
    body = _body(3000)

    async def main():
        pool = DecodePool(1, process_min_bytes=1)
        try:
            return await pool.run(decode_json, body, SPEC, 4, size=len(body))
        finally:
            pool.close()

    seqs, per_step, events = asyncio.run(main())
    ref = decode_json(body, SPEC, 4)
    assert (per_step, events) == ref[1:] and len(seqs) == 1
    np.testing.assert_array_equal(seqs[0], ref[0][0])


@pytest.mark.parametrize("body", [b'{"inputs": [[1.0, 2.0,', b'{"inputs": [[1.0, NaN]]}',
                                  b'{"inputs": 3}'])
def test_child_decode_errors_are_the_threads(body):
    async def main():
        pool = DecodePool(1, process_min_bytes=1)
        try:
            await pool.run(decode_json, body, SPEC, 4, size=len(body))
        finally:
            pool.close()

    with pytest.raises(ApiError) as child:
        asyncio.run(main())
    with pytest.raises(ApiError) as thread:
        decode_json(body, SPEC, 4)
    c, t = child.value, thread.value
    assert (c.status, c.code, c.message) == (t.status, t.code, t.message)


def test_big_json_predict_keeps_the_event_loop_free(start_server, checkpoint_dir, live_server,
                                                    monkeypatch):
    """Over the threshold a body's parse stalls nothing: /healthz answers while a decode that
    keeps the GIL for ~0.5 s runs; the answer equals the thread-decoded one (live_server)."""
    import server.routes.predict as predict

    srv = start_server(checkpoints=checkpoint_dir, decode_process_min_bytes=1024)
    body = _body(4000, seed=1)
    headers = {"content-type": "application/json"}
    want = httpx.post(f"{live_server.base_url}/v1/models/tiny/predict", content=body,
                      headers=headers, timeout=30).json()
    # the child imports this module by name for `_slow_decode`: the decode runs there
    monkeypatch.setattr(predict, "decode_json", _slow_decode)
    got: list = []
    finished: list[float] = []

    def post():
        got.append(httpx.post(f"{srv.base_url}/v1/models/tiny/predict", content=body,
                              headers=headers, timeout=60))
        finished.append(time.perf_counter())

    warm = threading.Thread(target=post)  # the first call also spawns the child: not timed
    warm.start()
    warm.join(60)
    t = threading.Thread(target=post)
    due = time.perf_counter() + 0.15  # inside the slow decode by then
    t.start()
    time.sleep(0.15)  # this test shares its process (and GIL) with the server: a decode that
    # kept the GIL here would also hold this sleep, so the wait is counted from `due`
    assert httpx.get(f"{srv.base_url}/healthz", timeout=10).status_code == 200
    healthy_at = time.perf_counter()
    answered = healthy_at - due
    t.join(60)
    assert finished[-1] > healthy_at  # /healthz came back while the predict was decoding
    assert [r.status_code for r in got] == [200, 200]
    for r in got:
        p = r.json()["predictions"][0]["probabilities"]
        want_p = want["predictions"][0]["probabilities"]
        assert p.keys() == want_p.keys()
        assert all(abs(p[k] - want_p[k]) < 1e-6 for k in p)
    assert answered < 0.2, f"/healthz waited {answered:.3f} s behind the decode"


def _oip_body(n: int) -> bytes:
    x = np.random.default_rng(2).standard_normal(n).astype(np.float32) * 0.3
    head = f'{{"inputs": [{{"name": "input", "shape": [1, {n}], "datatype": "FP32", "data": ['
    return (head + ",".join(f"{v:.6f}" for v in x) + "]}]}").encode()


def test_oip_child_decode_equals_the_thread():
    """OIP v2's JSON infer body: parsed (numbers to an array) in the child as in a thread."""
    from server.oip_v2 import decode_infer

    body = _oip_body(3000)
    args = (body, "identity", None, 1 << 30, "tiny", "")

    async def main():
        pool = DecodePool(1, process_min_bytes=1)
        try:
            return await pool.run(decode_infer, *args, size=len(body))
        finally:
            pool.close()

    child, ref = asyncio.run(main()), decode_infer(*args)
    assert (child.model, child.id, child.parameters) == (ref.model, ref.id, ref.parameters)
    (c,), (r,) = child.inputs, ref.inputs
    assert (c.name, c.datatype, c.shape) == (r.name, r.datatype, r.shape) == ("input", "FP32",
                                                                             [1, 3000])
    assert isinstance(c.values, np.ndarray) and c.values.dtype == np.float64
    np.testing.assert_array_equal(c.values, r.values)


def test_oip_infer_through_the_child(start_server, checkpoint_dir, live_server):
    """The same OIP answer whether the server parses a big body in a thread or a child."""
    srv = start_server(checkpoints=checkpoint_dir, decode_process_min_bytes=1024)
    body = _oip_body(4000)
    outs = []
    for s in (live_server, srv):
        r = httpx.post(f"{s.base_url}/v2/models/tiny/infer", content=body,
                       headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 200, r.text
        outs.append({o["name"]: o["data"] for o in r.json()["outputs"]})
    assert outs[0].keys() == outs[1].keys() and outs[0]["label"] == outs[1]["label"]
    np.testing.assert_allclose(outs[1]["probabilities"], outs[0]["probabilities"], rtol=1e-6,
                               atol=1e-7)
    bad = body[:-10]  # cut: the same 400 from the child as from a thread
    errs = [httpx.post(f"{s.base_url}/v2/models/tiny/infer", content=bad,
                       headers={"content-type": "application/json"}, timeout=30)
            for s in (live_server, srv)]
    assert [e.status_code for e in errs] == [400, 400]
    assert errs[0].json() == errs[1].json()


def test_csv_child_decode_equals_the_thread():
    """A CSV body decodes in the child to the very array a thread makes; its errors match."""
    x = np.random.default_rng(3).standard_normal(5000).astype(np.float32) * 0.3
    good = ("value\n" + "\n".join(f"{v:.6f}" for v in x) + "\n").encode()
    bad = b"1.0\n2.0\nthree\n"

    async def main(body):
        pool = DecodePool(1, process_min_bytes=1)
        try:
            return await pool.run(audio.decode_payload, body, "csv", SPEC, "body", size=len(body))
        finally:
            pool.close()

    np.testing.assert_array_equal(asyncio.run(main(good)),
                                  audio.decode_payload(good, "csv", SPEC, "body"))
    with pytest.raises(ApiError) as child:
        asyncio.run(main(bad))
    with pytest.raises(ApiError) as thread:
        audio.decode_payload(bad, "csv", SPEC, "body")
    assert (child.value.status, child.value.code, child.value.message) == (
        thread.value.status, thread.value.code, thread.value.message)


def test_per_step_answer_written_in_the_child(start_server, checkpoint_dir, live_server):
    """A per-step answer big enough to go to the child (its rows are written by orjson, which
    keeps the GIL) is the answer a thread writes, events included."""
    import orjson

    from server.limits import app_limits

    x = (np.random.default_rng(4).standard_normal(3000) * 0.3).tolist()
    body = orjson.dumps({"inputs": [x], "per_step": True, "events": True})

    def ask(s):
        r = httpx.post(f"{s.base_url}/v1/models/tinynone/predict", content=body,
                       headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]

    thread = ask(live_server)
    numbers = np.size(thread["per_step"])
    assert 12 * numbers > len(body) + 1  # the answer's weight passes a threshold the body does not
    srv = start_server(checkpoints=checkpoint_dir, decode_process_min_bytes=len(body) + 1)
    pool = app_limits(srv.server._s4d_app).pool
    child = ask(srv)
    assert pool._procs is not None  # started by the answer: the body was parsed in a thread
    assert np.shape(child["per_step"]) == np.shape(thread["per_step"])
    np.testing.assert_allclose(child["per_step"], thread["per_step"], rtol=1e-6, atol=1e-7)
    assert child["label"] == thread["label"] and child["events"] == thread["events"]
