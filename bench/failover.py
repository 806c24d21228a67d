"""Resume anywhere, measured: the engine's snapshot wave, and failover after a SIGKILL.

    python -m bench.failover wave --store redis://127.0.0.1:6379/0 [--sessions 1000]
    python -m bench.failover kill [--streams 16] [--lease-wait 0.5] [--interval 1.0]

``wave``: an in-process engine (the checkpoint on the torch CPU backend) with ``--sessions``
attached sessions, each fed one frame + a partial frame; ``Persistence.wave()`` (capture every
row on the device lane, encode, one pipelined ``put_many`` that also renews every lease) timed
``--reps`` times. Bandwidth at a 1 s interval = bytes of one wave per second.

``kill``: Debian redis-server, dnsmasq and haproxy (deploy/haproxy/haproxy.cfg) and 3
``python -m server --session-store redis://...`` replicas on 127.0.0.1-3 (tiny random model,
as in tests/test_chaos.py); ``--streams`` streams through the balancer with the Python client
(real time, 20 ms chunks, a result every 20 ms); the replica with the most streams is
SIGKILLed; per moved stream: seconds from the SIGKILL to its first result (necessarily from
another replica). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.serve import free_port

ROOT = Path(__file__).resolve().parent.parent


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1e3
    return {"n": len(xs), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1), "max_ms": round(float(a.max()), 1)}


# ---- the snapshot wave in an engine --------------------------------------------------------
async def _wave(args) -> dict:
    from server.engine.buffers import write_ring
    from server.engine.engine import Engine
    from server.metrics import Metrics
    from server.settings import Settings

    settings = Settings(checkpoints=args.checkpoint.parent, models=args.checkpoint.name,
                        device="cpu", max_sessions=args.sessions, session_store=args.store,
                        snapshot_interval_s=3600, warmup=False)
    engine = Engine(settings, Metrics())
    engine.attach_transport(lambda *_: None)
    await engine.start()
    while not engine.ready:
        assert engine.load_error is None, engine.load_error
        await asyncio.sleep(0.05)
    me = engine.models[0]
    meta = me.metadata
    n = meta.frame_size + meta.frame_size // 3  # one step + a buffered partial frame
    rng = np.random.default_rng(0)
    for _ in range(args.sessions):
        info = await me.open(0, session_id=None, offset=None, encoding="pcm_s16le",
                             emit_every=meta.frame_size)
        data = (0.05 * rng.standard_normal((n, meta.input_channels))).astype(np.float32)
        for i in range(0, n, me.credit):
            part = data[i:i + me.credit]
            slot = info["slot"]  # as a front-end does: samples into the ring, then the count
            write_ring(me.buffers.data, me.buffers.ring, slot, int(me.buffers.received[slot]),
                       part)
            me.feed(np.array([slot]), np.array([info["gen"]]), np.array([len(part)]))
            while me.buffers.available(np.array([info["slot"]]))[0] >= meta.frame_size:
                await asyncio.sleep(0.001)
    await asyncio.sleep(0.5)
    p = engine.persistence
    await asyncio.gather(*list(p._jobs))
    times, sizes = [], 0
    for _ in range(args.reps):
        t0 = time.perf_counter()
        stored = await p.wave()
        times.append(time.perf_counter() - t0)
        assert stored == args.sessions, stored
    blob = await me.snapshot(next(iter(me.sessions.values())))
    sizes = len(blob)
    await engine.stop()
    mean = float(np.mean(times))
    return {"bench": "wave", "store": args.store, "model": meta.name, "sessions": args.sessions,
            "snapshot_bytes": sizes, "wave": _pct(times), "wave_mean_s": round(mean, 3),
            "bandwidth_MBps_at_1s": round(args.sessions * sizes / 1e6, 1),
            "wave_wall_fraction_of_1s_interval": round(mean, 3)}


# ---- failover after a SIGKILL ---------------------------------------------------------------
def _kill_bench(args) -> dict:
    import httpx

    from clients.stream import AsyncStreamSession
    from tests.conftest import TINY_MODELS, _make_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="s4d-failover-"))
    ckpt = tmp / "ckpt"
    m, t = TINY_MODELS["tiny"]
    _make_checkpoint(ckpt, "tiny", m, t, seed=1)
    procs: list[subprocess.Popen] = []
    rport, dport, lport, sport, port = (free_port() for _ in range(5))
    addrs = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    hosts = tmp / "hosts"
    hosts.write_text("".join(f"{a} s4d-replicas.test\n" for a in addrs))

    def spawn(cmd, name, env=None):
        p = subprocess.Popen(cmd, stdout=open(tmp / f"{name}.log", "wb"),
                             stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                             env=env or os.environ)
        procs.append(p)
        return p

    try:
        spawn(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no"], "redis")
        spawn(["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--no-resolv",
               "--no-hosts", "--no-poll", f"--addn-hosts={hosts}", "--listen-address=127.0.0.1",
               "--bind-interfaces", f"--port={dport}", f"--pid-file={tmp / 'dns.pid'}",
               *(["--user=root"] if os.geteuid() == 0 else [])], "dnsmasq")
        replicas = {}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "S4D_COMPUTE_THREADS": "1"}
        for a in addrs:
            replicas[a] = spawn(
                [sys.executable, "-m", "server", "--host", a, "--port", str(port),
                 "--checkpoints", str(ckpt), "--models", "tiny", "--log-level", "warning",
                 "--session-store", f"redis://127.0.0.1:{rport}/0",
                 "--snapshot-interval", str(args.interval), "--lease-wait", str(args.lease_wait)],
                f"server-{a}", env)
        spawn(["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy" / "haproxy.cfg")],
              "haproxy", {**os.environ, "S4D_LB_BIND": f"127.0.0.1:{lport}",
                          "S4D_LB_STATS": f"127.0.0.1:{sport}", "S4D_LB_SLOTS": "4",
                          "S4D_LB_SERVERS": f"s4d-replicas.test:{port}",
                          "S4D_LB_DNS": f"127.0.0.1:{dport}"})
        lb = f"http://127.0.0.1:{lport}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                up = [httpx.get(f"http://{a}:{port}/readyz", timeout=2).status_code for a in addrs]
                stats = httpx.get(f"http://127.0.0.1:{sport}/stats;csv", timeout=2).text
                if up == [200] * 3 and stats.count(",UP,") >= 6:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"stack did not come up; logs in {tmp}")
        text = httpx.get(f"http://127.0.0.1:{sport}/stats;csv", timeout=5).text.lstrip("# ")
        slots = {row["svname"]: row["addr"].rsplit(":", 1)[0]
                 for row in csv.DictReader(io.StringIO(text))
                 if row["pxname"] == "s4d_least_conn" and row.get("addr")}
        url = lb.replace("http://", "ws://") + "/v1/models/tiny/stream"
        return asyncio.run(_kill_streams(args, url, replicas, slots, AsyncStreamSession))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


async def _kill_streams(args, url, replicas, slots, session_cls) -> dict:
    chunk, seconds = 320, args.seconds
    placed: list[str] = [""] * args.streams
    arrivals: list[list[float]] = [[] for _ in range(args.streams)]
    kill = {}

    async def one(i: int):
        x = (np.random.default_rng(i).standard_normal(int(seconds * 16000)) * 0.3).astype(
            np.float32)
        s = session_cls(url, sample_rate=16000, encoding="f32le", emit_every=chunk,
                        max_reconnects=16,
                        on_result=lambda _m, i=i: arrivals[i].append(time.monotonic()))
        async with s:
            placed[i] = s._ws.response.headers.get("X-S4D-Replica", "")
            for j in range(0, len(x), chunk):
                await s.send(x[j:j + chunk])
                await asyncio.sleep(chunk / 16000)
            final = await s.end(timeout=60)
        return final["offset"] == len(x), s.reconnects

    async def killer():
        await asyncio.sleep(seconds * 0.4)
        slot, count = Counter(placed).most_common(1)[0]
        victim = replicas[slots[slot]]
        kill.update(slot=slot, address=slots[slot], streams=count, t=time.monotonic())
        os.killpg(victim.pid, signal.SIGKILL)

    tasks = [asyncio.create_task(one(i)) for i in range(args.streams)]
    k = asyncio.create_task(killer())
    done = await asyncio.gather(*tasks)
    await k
    gaps = [next(t for t in arrivals[i] if t > kill["t"]) - kill["t"]
            for i in range(args.streams) if placed[i] == kill["slot"]]
    return {"bench": "failover", "streams": args.streams, "killed_replica_streams": kill["streams"],
            "all_complete": all(ok for ok, _ in done), "lease_wait_s": args.lease_wait,
            "snapshot_interval_s": args.interval,
            "sigkill_to_first_result_on_new_replica": _pct(gaps)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wave")
    w.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "kws-s4d")
    w.add_argument("--store", default="memory://")
    w.add_argument("--sessions", type=int, default=1000)
    w.add_argument("--reps", type=int, default=5)
    k = sub.add_parser("kill")
    k.add_argument("--streams", type=int, default=16)
    k.add_argument("--seconds", type=float, default=6.0)
    k.add_argument("--lease-wait", type=float, default=0.5)
    k.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args(argv)
    out = asyncio.run(_wave(args)) if args.what == "wave" else _kill_bench(args)
    out.update(machine=platform.node(), cpus=os.cpu_count(),
               date=time.strftime("%Y-%m-%d"), python=platform.python_version())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
