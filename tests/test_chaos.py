"""Chaos on loopback (issue 11): a replica dies mid-stream and its sessions go on elsewhere.

Real processes only: Debian's redis-server (tests/redis_server.py), dnsmasq + haproxy running
the repo's deploy/haproxy/haproxy.cfg (as in tests/test_deploy_lb.py) and 3 `python -m server
--session-store redis://...` replicas on 127.0.0.1-3. 16 streams go through the balancer with
the Python client (small chunks, about real time); the replica holding the most of them is
SIGKILLed mid-stream; every client resumes through the balancer on a survivor, which restores
the session from its latest snapshot in Redis; nothing accepted is lost or counted twice: every
`final` covers the whole stream and equals the batch prediction (<= 1e-5).
Also `--workers 2` with a store: an engine SIGKILL is followed by a resume restored from Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import websockets
from conftest import (
    ROOT,
    assert_probs_close,
    child_pythonpath,
    encode,
    free_port,
    start_dnsmasq,
    stop_process_group,
)
from redis_server import RedisServer
from test_deploy_lb import HAPROXY_CFG, REPLICA_NAME, Stack, _wait

from clients.stream import AsyncStreamSession

MODEL = "tiny"
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
N_STREAMS = 16
SECONDS = 4.0
CHUNK = 400  # samples per message (25 ms at 16 kHz)


def _start_replica(stack: Stack, address: str, redis_url: str) -> subprocess.Popen:
    log = open(stack.tmp / f"server-{address}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", address, "--port", str(stack.port),
         "--checkpoints", str(stack.checkpoints), "--models", MODEL, "--log-level", "warning",
         "--session-store", redis_url, "--snapshot-interval", "0.5", "--lease-wait", "0.5"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": child_pythonpath(), "S4D_COMPUTE_THREADS": "1"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack.replicas[address] = proc
    return proc


@pytest.fixture(scope="module")
def chaos(checkpoint_dir, tmp_path_factory):
    if not (shutil.which("haproxy") and shutil.which("dnsmasq")):
        pytest.skip("needs `haproxy` and `dnsmasq` (apt-get install haproxy dnsmasq-base)")
    tmp = tmp_path_factory.mktemp("chaos")
    redis = RedisServer(tmp / "redis").start()
    dns_port, lb_port, stats_port = free_port(), free_port(), free_port()
    hosts = tmp / "replicas.hosts"
    hosts.write_text("".join(f"{a} {REPLICA_NAME}\n" for a in ADDRESSES))
    procs: list[subprocess.Popen] = []
    try:
        dns = start_dnsmasq(hosts, dns_port, tmp)
        procs.append(dns)
        stack = Stack(port=free_port(), lb=f"http://127.0.0.1:{lb_port}",
                      stats=f"http://127.0.0.1:{stats_port}", hosts_file=hosts, dns=dns,
                      haproxy=None, checkpoints=checkpoint_dir, tmp=tmp)
        for address in ADDRESSES:
            procs.append(_start_replica(stack, address, redis.url))
        env = {**os.environ, "S4D_LB_BIND": f"127.0.0.1:{lb_port}",
               "S4D_LB_STATS": f"127.0.0.1:{stats_port}",
               "S4D_LB_SERVERS": f"{REPLICA_NAME}:{stack.port}", "S4D_LB_SLOTS": "4",
               "S4D_LB_DNS": f"127.0.0.1:{dns_port}"}
        stack.haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(HAPROXY_CFG)], env=env,
            stdout=open(tmp / "haproxy.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        procs.append(stack.haproxy)
        logs = sorted(tmp.glob("*.log"))
        _wait(lambda: stack.up_addresses() == {"s4d_least_conn": set(ADDRESSES),
                                               "s4d_by_session": set(ADDRESSES)},
              180, "3 replicas UP in HAProxy", logs, (stack.haproxy, dns))
        yield stack, redis
    finally:
        for p in reversed(procs):
            stop_process_group(p)
        redis.stop()


def _slot_addresses(stack: Stack) -> dict[str, str]:
    return {slot: addr.rsplit(":", 1)[0] for (backend, slot), (_, addr)
            in stack.server_states().items() if backend == "s4d_least_conn" and addr}


async def _one_stream(url: str, x: np.ndarray, placed: list, idx: int) -> dict:
    s = AsyncStreamSession(url, sample_rate=16000, channels=1, encoding="f32le",
                           emit_every=CHUNK * 4, max_reconnects=16)
    async with s:
        placed[idx] = s._ws.response.headers.get("X-S4D-Replica", "")
        for i in range(0, len(x), CHUNK):
            await s.send(x[i:i + CHUNK])
            await asyncio.sleep(CHUNK / 16000)
        final = await s.end(timeout=60)
    return {"final": final, "reconnects": s.reconnects, "session_id": s.session_id}


def test_sigkill_replica_every_stream_resumes_exactly(chaos):
    stack, _redis = chaos
    url = stack.lb.replace("http://", "ws://") + f"/v1/models/{MODEL}/stream"
    rng = np.random.default_rng(7)
    n = int(SECONDS * 16000)
    xs = [(rng.standard_normal(n) * 0.3).astype(np.float32) for _ in range(N_STREAMS)]
    placed: list = [""] * N_STREAMS
    victim: dict = {}

    async def killer():
        await asyncio.sleep(SECONDS * 0.45)
        for _ in range(200):  # on a loaded machine opening 16 streams can take a while
            if all(placed):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # every session has had a periodic snapshot (0.5 s interval)
        slots = _slot_addresses(stack)
        slot, count = Counter(placed).most_common(1)[0]
        address = slots[slot]
        victim.update(slot=slot, address=address, streams=count)
        os.killpg(stack.replicas[address].pid, signal.SIGKILL)
        stack.replicas[address].wait(10)

    async def main():
        tasks = [asyncio.create_task(_one_stream(url, x, placed, i))
                 for i, x in enumerate(xs)]
        await asyncio.sleep(0.2)
        k = asyncio.create_task(killer())
        out = await asyncio.gather(*tasks)
        await k
        return out

    results = asyncio.run(main())
    assert victim["streams"] >= 1
    moved = [r for r, p in zip(results, placed, strict=True) if p == victim["slot"]]
    assert moved and all(r["reconnects"] >= 1 for r in moved), (victim, results)
    batch = httpx.post(f"{stack.lb}/v1/models/{MODEL}/predict",
                       json={"inputs": [x.tolist() for x in xs]}, timeout=120)
    assert batch.status_code == 200, batch.text
    for r, x, pred in zip(results, xs, batch.json()["predictions"], strict=True):
        final = r["final"]
        assert final["type"] == "final" and final["offset"] == len(x), (r, victim)
        assert_probs_close(final["probabilities"], pred["probabilities"], 1e-5)
    # the survivors restored the victim's sessions from Redis
    restored = 0.0
    for address in set(ADDRESSES) - {victim["address"]}:
        text = httpx.get(f"http://{address}:{stack.port}/metrics", timeout=10).text
        restored += sum(float(ln.split()[-1]) for ln in text.splitlines()
                        if ln.startswith("s4d_sessions_restored_total"))
    assert restored >= len(moved)


# ---- --workers 2: an engine SIGKILL -------------------------------------------------------
START = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1,
         "emit_every": 0}


def test_workers_engine_sigkill_resumes_from_store(checkpoint_dir, tmp_path):
    import psutil

    redis = RedisServer(tmp_path / "redis").start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--workers", "2", "--port", str(port), "--checkpoints",
         str(checkpoint_dir), "--models", MODEL, "--session-store", redis.url,
         "--snapshot-interval", "0.2", "--lease-wait", "0.3"],
        env={**os.environ, "S4D_FRONTEND_TIMEOUT_S": "1", "S4D_LOG_LEVEL": "warning",
             "PYTHONPATH": child_pythonpath()},
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("not ready")

    x = (np.random.default_rng(5).standard_normal(1200) * 0.3).astype(np.float32)
    ws_url = f"ws://127.0.0.1:{port}/v1/models/{MODEL}/stream"
    try:
        wait_ready()

        async def main():
            ws = await websockets.connect(ws_url)
            await ws.send(json.dumps(START))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(encode(x[:600, None], "f32le"))
            await asyncio.sleep(0.8)  # a few snapshot waves
            (engine,) = [c for c in psutil.Process(proc.pid).children()
                         if c.name().startswith("s4d-engine")]
            engine.send_signal(signal.SIGKILL)
            while True:  # `stored` messages, then the engine's loss
                msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if msg["type"] != "stored":
                    break
            assert msg["code"] == "internal", msg
            return sid

        sid = asyncio.run(main())
        wait_ready()

        async def resume():
            async with websockets.connect(ws_url) as ws:
                await ws.send(json.dumps({**START, "session_id": sid, "offset": 0}))
                started = json.loads(await ws.recv())
                assert started["type"] == "started", started
                await ws.send(encode(x[:, None], "f32le"))  # duplicates are skipped
                await ws.send(json.dumps({"type": "end"}))
                while True:  # snapshot waves may report `stored` before the final
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if msg["type"] != "stored":
                        return started, msg

        started, final = asyncio.run(resume())
        assert started["offset"] == 600
        assert final["type"] == "final" and final["offset"] == len(x)
        r = httpx.post(f"{base}/v1/models/{MODEL}/predict", json={"inputs": [x.tolist()]},
                       timeout=60)
        assert_probs_close(final["probabilities"], r.json()["predictions"][0]["probabilities"],
                           1e-5)
    finally:
        stop_process_group(proc)
        redis.stop()

