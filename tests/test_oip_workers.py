"""OIP sequences through `s4d serve --workers 2`: a sequence whose requests alternate between
the two front-end processes is one session (its id is derived, not looked up), and its
answers equal the batch prediction."""

from __future__ import annotations

import http.client
import json
import time

import numpy as np
import psutil
import pytest

from tests.test_workers import Workers

TOL = 1e-5


@pytest.fixture(scope="module")
def workers(checkpoint_dir):
    w = Workers(checkpoint_dir)
    yield w
    w.stop()


def frontend_pid(w: Workers, conn: http.client.HTTPConnection) -> int:
    """The front-end process that accepted `conn` (it may still sit in the listen backlog for
    a moment after connect())."""
    port = conn.sock.getsockname()[1]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for c in w.children("s4d-frontend"):
            for tcp in c.net_connections(kind="tcp"):
                if tcp.raddr and tcp.raddr.port == port:
                    return c.pid
        time.sleep(0.02)
    raise AssertionError("no front-end holds the connection")


def one_per_frontend(w: Workers) -> list[http.client.HTTPConnection]:
    """Keep-alive connections, one held by each front-end process (the kernel spreads new
    connections over the SO_REUSEPORT listeners)."""
    by_pid: dict[int, http.client.HTTPConnection] = {}
    for _ in range(64):
        conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=60)
        conn.connect()
        pid = frontend_pid(w, conn)
        if pid in by_pid:
            conn.close()
        else:
            by_pid[pid] = conn
        if len(by_pid) == 2:
            return list(by_pid.values())
    raise AssertionError("every connection landed on the same front-end")


def infer(conn, body: dict) -> tuple[int, dict]:
    conn.request("POST", "/v2/models/tiny/infer", json.dumps(body),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def test_sequence_across_frontends_equals_batch(workers):
    conns = one_per_frontend(workers)
    pids = {frontend_pid(workers, c) for c in conns}
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    x = np.random.default_rng(3).standard_normal(6_000).astype(np.float32)
    sizes = [1, 333, 1000, 2, 4000, 664]
    at, got = 0, []
    for i, n in enumerate(sizes):
        params = {"sequence_id": "across", "sequence_start": i == 0,
                  "sequence_end": i == len(sizes) - 1}
        status, doc = infer(conns[i % 2], {
            "parameters": params, "outputs": [{"name": "probabilities"}],
            "inputs": [{"name": "input", "shape": [1, n], "datatype": "FP32",
                        "data": x[at:at + n].tolist()}]})
        assert status == 200, doc
        at += n
        assert doc["parameters"]["sequence_offset"] == at
        got.append(doc["outputs"][0]["data"])
    # the batch prediction of every prefix, in one request
    ends = np.cumsum(sizes)
    expect = []
    for e in ends:
        status, doc = infer(conns[0], {"outputs": [{"name": "probabilities"}], "inputs": [{
            "name": "input", "shape": [1, int(e)], "datatype": "FP32", "data": x[:e].tolist()}]})
        assert status == 200, doc
        expect.append(doc["outputs"][0]["data"])
    assert np.abs(np.array(got) - np.array(expect)).max() <= TOL
    # ended: unknown from either front-end
    for c in conns:
        status, doc = infer(c, {"parameters": {"sequence_id": "across"}, "inputs": [{
            "name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]})
        assert status == 400 and "is not open" in doc["error"]
        c.close()
