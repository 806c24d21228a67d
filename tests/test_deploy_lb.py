"""The shipped HAProxy config (deploy/haproxy/haproxy.cfg), run for real on loopback.

Three real server processes listen on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (one port, as compose
replicas do); a real dnsmasq answers the replicas' name with those three addresses (as Docker's
DNS answers a scaled service's name); Debian's haproxy runs the SAME config file as compose,
with its environment variables pointed at loopback. Checked through the balancer: /readyz, REST
predict, a WebSocket stream whose final equals the batch prediction, consistent hashing of the
`session_id` query parameter and the `X-S4D-Session` header, DNS discovery of a replica that
appears, and a SIGKILLed replica taken out by the /readyz health check.

Needs `haproxy` and `dnsmasq` (Debian `haproxy`, `dnsmasq-base`); skips with the reason when absent.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import (
    assert_probs_close,
    child_pythonpath,
    free_port,
    start_dnsmasq,
    stop_process_group,
)

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
REPLICA_NAME = "s4d-replicas.test"
MODEL = "tiny"

pytestmark = pytest.mark.skipif(
    not (shutil.which("haproxy") and shutil.which("dnsmasq")),
    reason="needs `haproxy` and `dnsmasq` (apt-get install haproxy dnsmasq-base)",
)


@dataclass
class Stack:
    """Replicas (address -> process), the balancer's URLs, and what the test may change."""

    port: int
    lb: str
    stats: str
    hosts_file: Path
    dns: subprocess.Popen
    haproxy: subprocess.Popen
    checkpoints: Path
    tmp: Path
    replicas: dict[str, subprocess.Popen] = field(default_factory=dict)

    def ws(self, query: str = "") -> str:
        return self.lb.replace("http://", "ws://") + f"/v1/models/{MODEL}/stream{query}"

    def publish(self, addresses: list[str]) -> None:
        """Point the replicas' DNS name at these addresses (dnsmasq re-reads on SIGHUP)."""
        self.hosts_file.write_text("".join(f"{a} {REPLICA_NAME}\n" for a in addresses))
        self.dns.send_signal(signal.SIGHUP)

    def server_states(self) -> dict[tuple[str, str], tuple[str, str]]:
        """{(backend, server slot): (status, address)} from HAProxy's CSV stats."""
        text = httpx.get(self.stats + "/stats;csv", timeout=5).text.lstrip("# ")
        out = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row["svname"] not in ("FRONTEND", "BACKEND"):
                out[(row["pxname"], row["svname"])] = (row["status"], row.get("addr", ""))
        return out

    def up_addresses(self) -> dict[str, set[str]]:
        """{backend: addresses of the slots HAProxy considers UP}."""
        up: dict[str, set[str]] = {}
        for (backend, _slot), (status, addr) in self.server_states().items():
            if status.startswith("UP") and addr:
                up.setdefault(backend, set()).add(addr.rsplit(":", 1)[0])
        return up


def _wait(check, timeout: float, what: str, logs: list[Path],
          procs: tuple[subprocess.Popen, ...] = ()):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead:
            timeout = 0  # a process we wait on exited: report its log now
            last = f"{dead} exited"
            break
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(0.3)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    pytest.fail(f"{what}: not within {timeout} s (last: {last!r})\n{tails}")


def _start_replica(stack: Stack, address: str) -> subprocess.Popen:
    log = open(stack.tmp / f"server-{address}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", address, "--port", str(stack.port),
         "--checkpoints", str(stack.checkpoints), "--models", MODEL, "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": child_pythonpath(), "S4D_COMPUTE_THREADS": "1"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack.replicas[address] = proc
    return proc


def _replica_ready(stack: Stack, address: str) -> bool:
    return httpx.get(f"http://{address}:{stack.port}/readyz", timeout=2).status_code == 200


@pytest.fixture(scope="module")
def stack(checkpoint_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lb")
    dns_port, lb_port, stats_port = free_port(), free_port(), free_port()
    hosts = tmp / "replicas.hosts"
    hosts.write_text("")
    dns_log, lb_log = tmp / "dnsmasq.log", tmp / "haproxy.log"
    procs: list[subprocess.Popen] = []
    try:
        dns = start_dnsmasq(hosts, dns_port, tmp)
        procs.append(dns)
        stack = Stack(port=free_port(), lb=f"http://127.0.0.1:{lb_port}",
                      stats=f"http://127.0.0.1:{stats_port}", hosts_file=hosts, dns=dns,
                      haproxy=None, checkpoints=checkpoint_dir, tmp=tmp)
        for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            procs.append(_start_replica(stack, address))
        env = {**os.environ, "S4D_LB_BIND": f"127.0.0.1:{lb_port}",
               "S4D_LB_STATS": f"127.0.0.1:{stats_port}",
               "S4D_LB_SERVERS": f"{REPLICA_NAME}:{stack.port}", "S4D_LB_SLOTS": "4",
               "S4D_LB_DNS": f"127.0.0.1:{dns_port}"}
        check = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CFG)], env=env,
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        stack.haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(HAPROXY_CFG)], env=env,
            stdout=open(lb_log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(stack.haproxy)
        logs = [lb_log, dns_log, *tmp.glob("server-*.log")]
        for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            _wait(lambda a=address: _replica_ready(stack, a), 180, f"replica {address}", logs,
                  (stack.replicas[address],))
        # two replicas published first; the third appears in DNS in test_dns_discovery
        stack.publish(["127.0.0.1", "127.0.0.2"])
        _wait(lambda: all(len(v) == 2 for v in stack.up_addresses().values())
              and len(stack.up_addresses()) == 2, 60, "2 replicas UP in HAProxy", logs,
              (stack.haproxy, dns))
        yield stack
    finally:
        for p in reversed(procs):
            if p is not None:
                stop_process_group(p)


def _logs(stack: Stack) -> list[Path]:
    return sorted(stack.tmp.glob("*.log"))


def _wait_pool(stack: Stack, addresses: set[str], timeout: float = 60):
    _wait(lambda: stack.up_addresses() == {"s4d_least_conn": addresses,
                                           "s4d_by_session": addresses},
          timeout, f"HAProxy pool == {sorted(addresses)}", _logs(stack))


def _replica_of(response: httpx.Response) -> str:
    replica = response.headers.get("x-s4d-replica")
    assert replica, f"no X-S4D-Replica header: {dict(response.headers)}"
    return replica


def test_readyz_and_predict_through_lb(stack):
    r = httpx.get(stack.lb + "/readyz", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    _replica_of(r)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(300).astype(np.float32).tolist()
    direct = httpx.post(f"http://127.0.0.1:{stack.port}/v1/models/{MODEL}/predict",
                        json={"inputs": [x]}, timeout=30)
    via_lb = httpx.post(f"{stack.lb}/v1/models/{MODEL}/predict", json={"inputs": [x]}, timeout=30)
    assert via_lb.status_code == 200, via_lb.text
    assert_probs_close(via_lb.json()["predictions"][0]["probabilities"],
                       direct.json()["predictions"][0]["probabilities"], 1e-5)
    bad = httpx.post(f"{stack.lb}/v1/models/{MODEL}/predict", json={"inputs": "x"}, timeout=30)
    assert bad.status_code == 400 and "error" in bad.json()  # the server's errors pass through


def _stream(url: str, signal_: np.ndarray, frame: int = 100) -> tuple[dict, list[dict], str]:
    """One WebSocket stream (start, f32le pieces, end) -> (started, messages, replica header)."""
    from websockets.sync.client import connect

    with connect(url, open_timeout=15, close_timeout=10, max_size=None) as ws:
        replica = ws.response.headers.get("X-S4D-Replica", "")
        ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "f32le",
                            "channels": 1}))
        started = json.loads(ws.recv(timeout=30))
        assert started["type"] == "started", started
        data = signal_.astype("<f4").tobytes()
        for i in range(0, len(data), 4 * frame):
            ws.send(data[i:i + 4 * frame])
        ws.send(json.dumps({"type": "end"}))
        messages = []
        while True:
            msg = json.loads(ws.recv(timeout=60))
            messages.append(msg)
            if msg["type"] in ("final", "error"):
                break
    return started, messages, replica


def test_websocket_stream_through_lb(stack):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000).astype(np.float32)
    started, messages, replica = _stream(stack.ws(), x)
    assert replica.startswith("s4d-"), "the upgrade response did not come through HAProxy"
    final = messages[-1]
    assert final["type"] == "final", messages[-3:]
    assert final["offset"] == len(x)
    assert len([m for m in messages if m["type"] == "result"]) >= len(x) // 64 - 1
    batch = httpx.post(f"{stack.lb}/v1/models/{MODEL}/predict", json={"inputs": [x.tolist()]},
                       timeout=30).json()["predictions"][0]["probabilities"]
    assert_probs_close(final["probabilities"], batch, 1e-5)


def _route(stack: Stack, session_id: str, how: str) -> str:
    if how == "query":
        r = httpx.get(f"{stack.lb}/readyz", params={"session_id": session_id}, timeout=10)
    else:
        r = httpx.get(f"{stack.lb}/readyz", headers={"X-S4D-Session": session_id}, timeout=10)
    assert r.status_code == 200, r.text
    return _replica_of(r)


def test_session_id_hashes_to_one_replica(stack):
    ids = [f"sess-{i:02d}" for i in range(16)]
    placement = {}
    for sid in ids:
        seen = {_route(stack, sid, "query") for _ in range(4)}
        seen |= {_route(stack, sid, "header") for _ in range(2)}
        assert len(seen) == 1, f"{sid} went to {seen}"
        placement[sid] = seen.pop()
    assert len(set(placement.values())) == 2, f"16 ids all on one replica: {placement}"
    # a WebSocket that names its session in the URL opens on the same replica
    x = np.zeros(200, np.float32)
    for sid in ids[:3]:
        _, messages, replica = _stream(stack.ws(f"?session_id={sid}"), x)
        assert messages[-1]["type"] == "final"
        assert replica == placement[sid], (sid, replica, placement[sid])
    # without a session id: least connections spreads sequential requests over both replicas
    spread = {_replica_of(httpx.get(stack.lb + "/readyz", timeout=10)) for _ in range(8)}
    assert len(spread) == 2, spread


def test_dns_discovery_adds_a_replica(stack):
    stack.publish(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    _wait_pool(stack, {"127.0.0.1", "127.0.0.2", "127.0.0.3"})
    ids = [f"grow-{i:02d}" for i in range(24)]
    placement = {sid: _route(stack, sid, "query") for sid in ids}
    assert len(set(placement.values())) == 3, placement


def test_killed_replica_is_taken_out(stack):
    _wait_pool(stack, {"127.0.0.1", "127.0.0.2", "127.0.0.3"})
    ids = [f"kill-{i:02d}" for i in range(24)]
    before = {sid: _route(stack, sid, "query") for sid in ids}
    slots = {slot: addr.rsplit(":", 1)[0] for (backend, slot), (_, addr)
             in stack.server_states().items() if backend == "s4d_by_session" and addr}
    victim_slot = before[ids[0]]
    victim = slots[victim_slot]
    os.killpg(stack.replicas[victim].pid, signal.SIGKILL)
    stack.replicas[victim].wait(timeout=10)
    survivors = {"127.0.0.1", "127.0.0.2", "127.0.0.3"} - {victim}
    # DNS still lists the dead address: only the /readyz health check can take it out
    _wait_pool(stack, survivors, timeout=30)
    after = {sid: _route(stack, sid, "query") for sid in ids}
    assert victim_slot not in after.values()
    moved = [sid for sid in ids if before[sid] != after[sid]]
    # consistent hashing: only the dead replica's sessions move
    assert set(moved) == {sid for sid in ids if before[sid] == victim_slot}, (before, after)
    for _ in range(6):
        r = httpx.get(stack.lb + "/readyz", timeout=10)
        assert r.status_code == 200 and _replica_of(r) != victim_slot
    x = np.random.default_rng(2).standard_normal(500).astype(np.float32)
    _, messages, replica = _stream(stack.ws(f"?session_id={ids[0]}"), x)
    assert messages[-1]["type"] == "final" and replica != victim_slot
