"""Load generator for a running s4d-serve: N concurrent real-time streams, latency and capacity.

    python -m bench.serve --checkpoints checkpoints --model kws-s4d --json
    python -m bench.serve --url http://127.0.0.1:8000 --streams 64 --duration 10

Without --url it starts the server itself (`s4d serve` in a subprocess, on a free loopback
port); the load runs in separate worker processes in any case, so client and server never
share an interpreter.

Each stream sends one frame of `frame` samples (the model's frame_size, else 20 ms of
samples) every frame duration `F = frame / sample_rate`, at real-time pace on the monotonic
clock, with emit_every = frame, so the server answers every frame. Frame k of a stream is
*due* at d_k = t0 + (k+1)·F (when its last sample would exist live). Definitions:

- latency of frame k = time its result (the `result` whose offset is (k+1)·frame) is
  received - time the client started sending frame k.
- frame k is *late* when its result arrives after the next frame is due plus the slack:
  r_k > d_{k+1} + slack = d_k + F + slack (default slack 50 ms). A frame with no result by
  the end of the run counts as late (and as missing).
- client lag = send time - due time (the client's own pacing error); when its p99 exceeds
  F/2 the run is marked client_lagging
  (not a pass: the generator could not send on time, from its own CPU or host contention).
- rtf = acknowledged audio seconds / (N · window seconds): 1.0 means the server kept up.
- server_cpu_per_audio_s = server CPU seconds / acknowledged audio seconds in the window
  (the cost-based real-time factor: 0.01 = one core serves ~100 streams).

A run passes when p99 <= --p99-ms, no frame is late, no session failed, and the client kept
up. --streams N[,N...] runs just those counts (--repeat times each; max_streams is then the
largest N whose every run passed). Without --streams the sweep doubles N from --start until a
run fails (or --max-streams), then bisects between the last pass and the first failure; `max_streams` is the largest pass.
Only the first --warmup seconds of each run are excluded from the statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- arguments
def _int_list(text: str) -> list[int]:
    """'2000,2048' -> [2000, 2048]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N[,N...], got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="benchmark this server instead of starting one")
    p.add_argument("--server-pid", type=int, default=None, help="pid of --url's server (CPU)")
    p.add_argument(
        "--checkpoints", default=str(REPO_ROOT / "checkpoints"), help="checkpoint folder"
    )
    p.add_argument("--model", default="kws-s4d", help="model name (default kws-s4d)")
    p.add_argument("--streams", type=_int_list, default=None, metavar="N[,N...]",
                   help="run only these N, in this order, on one server (no sweep)")
    p.add_argument("--repeat", type=int, default=1,
                   help="with --streams: run each N this many times (an edge needs repeats)")
    p.add_argument("--start", type=int, default=1, help="first N of the sweep")
    p.add_argument("--max-streams", type=int, default=1024, help="largest N of the sweep")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds excluded from stats")
    p.add_argument("--frame", type=int, default=None, help="samples per frame")
    p.add_argument("--encoding", choices=["auto", "pcm_s16le", "f32le"], default="auto")
    p.add_argument("--slack-ms", type=float, default=50.0, help="lateness slack (ms)")
    p.add_argument("--p99-ms", type=float, default=100.0, help="p99 latency target (ms)")
    p.add_argument("--bisect-tol", type=float, default=0.1, help="relative bisection stop")
    p.add_argument("--client-procs", type=int, default=0, help="load processes (0 = auto)")
    p.add_argument("--device", default=None, help="S4D_DEVICE for a server started here")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for a server started here (repeatable)",
    )
    p.add_argument("--workers", type=int, default=None,
                   help="S4D_WORKERS of a server started here (front-end processes; 0 = one process)")
    p.add_argument("--server-cpus", default=None, metavar="LIST",
                   help="pin a server started here to these CPUs, e.g. 0-15 (taskset list)")
    p.add_argument("--client-cpus", default=None, metavar="LIST",
                   help="pin the load generator processes to these CPUs, e.g. 16-31")
    p.add_argument("--server-timeout", type=float, default=120.0, help="seconds to get ready")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--output", default=None, help="also write the JSON here")


# ---------------------------------------------------------------------------- server
def cpu_list(spec: str | None) -> set[int] | None:
    """'0-7,16' -> {0, ..., 7, 16} (taskset's list syntax)."""
    if not spec:
        return None
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nobody listens on, picked below the kernel's ephemeral range.

    Why not bind port 0: the kernel hands that port out again as the source port of the next
    outgoing connection (tests open thousands on loopback), so a server started a moment later
    could find it taken ("address already in use"). Ports below the ephemeral range are never
    used as source ports; each is handed out once per process and checked free by a bind.
    """
    low = min(_ephemeral_low(), 65536)
    lo, hi = (20000, low - 1) if low > 21000 else (1024, 65535)
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(lo, hi)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {lo}-{hi}")


class ServerProcess:
    """`s4d serve` on a free loopback port, configured through its S4D_* environment."""

    def __init__(
        self,
        checkpoints: str,
        model: str,
        max_sessions: int,
        extra_env: dict,
        device: str | None,
        log_path: str,
        cpus: set[int] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update(
            S4D_HOST="127.0.0.1",
            S4D_PORT=str(self.port),
            S4D_CHECKPOINTS=str(Path(checkpoints).resolve()),
            S4D_MODELS=model,
            S4D_MAX_SESSIONS=str(max_sessions),
            S4D_LOG_LEVEL="warning",
        )
        if device:
            env["S4D_DEVICE"] = device
        env.update(extra_env)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s4d_cli", "serve"],
            cwd=str(REPO_ROOT),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.tail()}")
            try:
                r = httpx.get(self.url + "/readyz", timeout=2.0, trust_env=False)
                if r.status_code == 200:
                    return
                if "loading failed" in r.text:  # it will never get ready
                    raise RuntimeError(f"the server cannot load its models: {r.text[:500]}")
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server was not ready within {timeout} s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# ---------------------------------------------------------------------------- load worker
def _signal(rate: int, channels: int, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * seconds))
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * min(440.0, rate / 8) * t) + 0.05 * rng.standard_normal(n)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


async def _run_streams(cfg: dict) -> dict:
    from clients.client import AsyncS4DClient
    from clients.errors import S4DError

    n, frame, rate = cfg["n"], cfg["frame"], cfg["rate"]
    fdur = frame / rate
    nframes = max(1, int(round(cfg["duration"] / fdur)))
    sig = _signal(rate, cfg["channels"], 1.0 + fdur, cfg["seed"])
    rng = np.random.default_rng(cfg["seed"] + 1)
    phases = rng.uniform(0.0, fdur, size=n)
    due = np.full((n, nframes), np.nan)
    sent = np.full((n, nframes), np.nan)
    recv = np.full((n, nframes), np.nan)
    server_lat: list[float] = []
    errors: list[str] = []
    client = AsyncS4DClient(cfg["url"], timeout=60.0)

    def on_result(i: int):
        def cb(msg: dict) -> None:
            if msg.get("type") != "result" or msg.get("segment_end"):
                return
            off = int(msg.get("offset", 0))
            if off % frame == 0 and 0 < off <= nframes * frame:
                k = off // frame - 1
                if math.isnan(recv[i, k]):
                    recv[i, k] = time.monotonic()
            lat = msg.get("latency_ms")
            if isinstance(lat, (int, float)):
                server_lat.append(float(lat))

        return cb

    sessions = []
    for i in range(n):
        sessions.append(
            client.stream(
                cfg["model"],
                sample_rate=rate,
                channels=cfg["channels"],
                encoding=cfg["encoding"],
                emit_every=frame,
                on_result=on_result(i),
                reconnect=False,
                results_maxlen=1,
                resume_buffer_seconds=1.0,
            )
        )
    t_open = time.monotonic()
    opened = await asyncio.gather(*(s.open() for s in sessions), return_exceptions=True)
    open_s = time.monotonic() - t_open
    t_start = max(cfg["start_at"], time.monotonic() + 0.05)
    frames = [
        np.ascontiguousarray(sig[(k * frame) % rate : (k * frame) % rate + frame])
        for k in range(min(nframes, rate // math.gcd(rate, frame) or 1))
    ]

    async def one(i: int) -> None:
        s = sessions[i]
        if isinstance(opened[i], BaseException):
            errors.append(f"open: {opened[i]}")
            return
        t0 = t_start + phases[i]
        try:
            for k in range(nframes):
                d = t0 + (k + 1) * fdur
                due[i, k] = d
                delay = d - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent[i, k] = time.monotonic()
                await s.send(frames[k % len(frames)])
            # give the last frames' results time to arrive, then end
            await asyncio.sleep(min(1.0, 2 * fdur + cfg["slack"]))
            await s.end(timeout=30.0)
        except (S4DError, OSError, RuntimeError, asyncio.TimeoutError) as exc:
            errors.append(f"stream {i}: {exc}")
            await s.close()

    cpu0 = time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu = time.process_time() - cpu0
    await client.aclose()
    return {
        "due": due,
        "sent": sent,
        "recv": recv,
        "errors": errors,
        "server_latency_ms": np.asarray(server_lat, dtype=np.float64),
        "client_cpu_s": cpu,
        "open_s": open_s,
        "t_start": t_start,
    }


def run_worker(cfg: dict) -> dict:
    sys.path.insert(0, str(REPO_ROOT))
    try:
        import uvloop

        return uvloop.run(_run_streams(cfg))
    except ImportError:
        return asyncio.run(_run_streams(cfg))


# ---------------------------------------------------------------------------- one run
def _pct(a: np.ndarray, q: float) -> float | None:
    return float(np.percentile(a, q)) if a.size else None


_SCRAPED = {"s4d_step_latency_seconds", "s4d_scheduler_batch_size", "s4d_gc_pause_seconds",
            "s4d_gc_pause_cpu_seconds", "s4d_event_loop_lag_seconds"}


def scrape_metrics(url: str) -> dict[tuple, float]:
    """The server's /metrics samples this bench reads, by (name, sorted labels); {} when the
    endpoint is not reachable (metrics private, server gone)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            text = r.read().decode()
    except Exception:  # noqa: BLE001 - nothing to add to the report
        return {}
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for fam in text_string_to_metric_families(text) if fam.name in _SCRAPED
            for x in fam.samples}


def _window_metrics(m0: dict, m1: dict, model: str) -> dict:
    """Deltas over the window: steps of `model` (count, mean ms, mean batch, the bucket its
    99th percentile falls in) and collector pauses by process (count, total seconds, the
    collecting threads' CPU seconds in them, the bucket bound the longest one is under)."""
    if not m0 or not m1:
        return {}

    def delta(key: tuple) -> float:
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    sel = (("model", model),)
    steps = delta(("s4d_step_latency_seconds_count", sel))
    out: dict = {"steps": int(steps)}
    if steps:
        out["step_ms_mean"] = round(1e3 * delta(("s4d_step_latency_seconds_sum", sel)) / steps, 3)
        out["batch_mean"] = round(delta(("s4d_scheduler_batch_size_sum", sel)) / steps, 1)
        buckets = sorted((float(dict(labels)["le"]), delta((name, labels)))
                         for name, labels in m1
                         if name == "s4d_step_latency_seconds_bucket"
                         and dict(labels).get("model") == model and dict(labels)["le"] != "+Inf")
        p99 = next((le for le, n in buckets if n >= 0.99 * steps), None)
        out["step_ms_p99_at_most"] = None if p99 is None else p99 * 1e3
    gc_pauses: dict = {}
    for name, labels in m1:
        n = delta((name, labels)) if name == "s4d_gc_pause_seconds_count" else 0
        if n:
            lab = dict(labels)
            g = gc_pauses.setdefault(lab["process"], {"count": 0, "seconds": 0.0,
                                                      "cpu_seconds": 0.0, "longest_at_most": 0.0})
            g["count"] += int(n)
            g["seconds"] = round(g["seconds"] + delta(("s4d_gc_pause_seconds_sum", labels)), 4)
            g["cpu_seconds"] = round(g["cpu_seconds"]
                                     + delta(("s4d_gc_pause_cpu_seconds_sum", labels)), 4)
            # the longest pause, as the smallest bucket bound that holds every one of them
            bounds = sorted(float(dict(lb)["le"]) for nm, lb in m1
                            if nm == "s4d_gc_pause_seconds_bucket" and dict(lb)["le"] != "+Inf"
                            and {k: v for k, v in lb if k != "le"} == lab
                            and delta((nm, lb)) >= n)
            if bounds:
                g["longest_at_most"] = max(g["longest_at_most"], bounds[0])
    out["gc_pauses"] = gc_pauses
    out["loop_lag"] = loop_stalls(m0, m1)
    return out


def loop_stalls(m0: dict, m1: dict) -> dict:
    """Event-loop stalls by process role between two scrapes: samples of the 10 ms timer, how
    many woke >= 20 ms and >= 50 ms late, and the bucket bound the longest one is under."""

    def delta(key: tuple) -> float:
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    out: dict = {}
    for name, labels in m1:
        if name != "s4d_event_loop_lag_seconds_count" or not delta((name, labels)):
            continue
        proc = dict(labels)["process"]
        n = delta((name, labels))
        buckets = sorted((float(dict(lb)["le"]), delta((nm, lb))) for nm, lb in m1
                         if nm == "s4d_event_loop_lag_seconds_bucket"
                         and dict(lb).get("process") == proc and dict(lb)["le"] != "+Inf")
        below = dict(buckets)
        out[proc] = {
            "samples": int(n),
            "over_20ms": int(n - below.get(0.02, n)),
            "over_50ms": int(n - below.get(0.05, n)),
            "longest_at_most": next((le for le, k in buckets if k >= n), None),
        }
    return out


def _late_bins(t: np.ndarray, top: int = 5) -> dict:
    """Late frames by 100 ms of their due time (seconds after the window opened): how many
    bins hold any, and the densest few as [start s, frames]."""
    if not t.size:
        return {"bins": 0, "densest": []}
    bins, counts = np.unique(np.floor(t * 10).astype(np.int64), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]  # ties: earliest first
    return {"bins": int(len(bins)),
            "densest": [[round(float(bins[i]) / 10, 1), int(counts[i])] for i in order]}


def _cpu_times(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        import psutil

        p = psutil.Process(pid)
        total = sum(p.cpu_times()[:2])
        for c in p.children(recursive=True):
            try:
                total += sum(c.cpu_times()[:2])
            except psutil.Error:
                pass
        return total
    except Exception:  # noqa: BLE001 - psutil missing or process gone
        return None


def _cpu_by_process(pid: int | None) -> dict[str, float]:
    """CPU seconds of the server and each child, by process name (s4d-engine-0, ...), and of
    each engine's main thread."""
    if pid is None:
        return {}
    try:
        import psutil

        out = {}
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                name = p.name() if p.pid != pid else "server"
                out[f"{name}:{p.pid}"] = sum(p.cpu_times()[:2])
                if name.startswith("s4d-engine"):  # its event loop's thread apart from the
                    # device lanes (a lane waiting on the GPU may spin: that is not the loop)
                    main = [t for t in p.threads() if t.id == p.pid]
                    if main:
                        out[f"main-thread-of-{name}:{p.pid}"] = main[0].user_time + main[0].system_time
            except psutil.Error:
                pass
        return out
    except Exception:  # noqa: BLE001 - psutil missing or process gone
        return {}


def _steal_seconds(cpus: set[int] | None) -> float | None:
    """CPU time the hypervisor gave to others while these CPUs (all if None) had work: the
    `steal` column of /proc/stat (Linux guests), seconds summed over the CPUs."""
    try:
        ticks = 0
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    parts = line.split()
                    if cpus is None or int(parts[0][3:]) in cpus:
                        ticks += int(parts[8])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _runqueue_wait_seconds(pid: int | None) -> float | None:
    """Seconds the server's threads (every process, every thread) spent runnable but waiting for
    a CPU (/proc/PID/task/TID/schedstat, field 2): CPU contention the server's own CPU time
    cannot show."""
    if pid is None:
        return None
    try:
        import psutil

        total = 0
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            for task in Path(f"/proc/{p.pid}/task").iterdir():
                try:
                    total += int((task / "schedstat").read_text().split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        return total / 1e9
    except Exception:  # noqa: BLE001 - psutil missing, no schedstat, process gone
        return None


def run_once(args: argparse.Namespace, ctx: dict, n: int, pool: cf.Executor) -> dict:
    rate, frame = ctx["rate"], ctx["frame"]
    fdur = frame / rate
    procs = max(1, min(ctx["procs"], n))
    # time to open every session before the first frame; capped well inside the server's
    # stream_idle_timeout_s (60 s): a session opened first must not sit silent past it
    # (20,000 ECG streams at 4 ms each waited 81 s and every one was closed `timeout`)
    start_at = time.monotonic() + 1.0 + min(0.004 * n, 40.0)
    counts = [n // procs + (1 if j < n % procs else 0) for j in range(procs)]
    cfgs = [
        dict(
            url=ctx["url"],
            model=args.model,
            n=c,
            frame=frame,
            rate=rate,
            channels=ctx["channels"],
            encoding=ctx["encoding"],
            duration=args.duration,
            start_at=start_at,
            seed=args.seed + 1000 * j,
            slack=args.slack_ms / 1000,
        )
        for j, c in enumerate(counts)
    ]
    futs = [pool.submit(run_worker, c) for c in cfgs]
    # server CPU over the measurement window [start + warmup, start + duration]
    w0, w1 = start_at + args.warmup, start_at + args.duration
    time.sleep(max(0.0, w0 - time.monotonic()))
    p0 = _cpu_by_process(ctx["server_pid"])
    m0 = scrape_metrics(ctx["url"])
    server_cpus = cpu_list(args.server_cpus)
    st0, q0 = _steal_seconds(server_cpus), _runqueue_wait_seconds(ctx["server_pid"])
    s0, t0 = _cpu_times(ctx["server_pid"]), time.monotonic()
    time.sleep(max(0.0, w1 - time.monotonic()))
    s1, t1 = _cpu_times(ctx["server_pid"]), time.monotonic()
    st1, q1 = _steal_seconds(server_cpus), _runqueue_wait_seconds(ctx["server_pid"])
    p1 = _cpu_by_process(ctx["server_pid"])
    m1 = scrape_metrics(ctx["url"])
    outs = [f.result(timeout=args.duration + 120) for f in futs]

    due = np.concatenate([o["due"] for o in outs])
    sent = np.concatenate([o["sent"] for o in outs])
    recv = np.concatenate([o["recv"] for o in outs])
    errors = [e for o in outs for e in o["errors"]]
    stream_start = due[:, :1] - fdur
    window = (due - stream_start >= args.warmup) & ~np.isnan(due)
    lat = (recv - sent)[window & ~np.isnan(recv)] * 1000.0
    lag = (sent - due)[window & ~np.isnan(sent)] * 1000.0
    missing = int((window & np.isnan(recv)).sum())
    late_mask = window & (np.isnan(recv) | (recv > due + fdur + args.slack_ms / 1000.0))
    late = int(late_mask.sum())
    frames_measured = int(window.sum())
    # acknowledged audio inside the CPU window
    acked = int(((recv >= w0) & (recv <= w1)).sum())
    win_s = max(1e-9, w1 - w0)
    audio_s = acked * fdur
    srv_lat = np.concatenate([o["server_latency_ms"] for o in outs])
    client_cpu = sum(o["client_cpu_s"] for o in outs)
    total_s = args.duration + 0.5
    lag_p99 = _pct(lag, 99)
    saturated = lag_p99 is not None and lag_p99 > fdur * 1000 / 2
    p99 = _pct(lat, 99)
    cpu_s = {k: p1[k] - p0[k] for k in p1 if k in p0}  # CPU seconds in the window, by process
    res = {
        "streams": n,
        "frames_measured": frames_measured,
        "results_received": int((~np.isnan(recv)).sum()),
        "latency_ms": {
            "p50": _pct(lat, 50),
            "p95": _pct(lat, 95),
            "p99": p99,
            "max": float(lat.max()) if lat.size else None,
            "mean": float(lat.mean()) if lat.size else None,
        },
        "server_latency_ms": {"p50": _pct(srv_lat, 50), "p99": _pct(srv_lat, 99)},
        "late_frames": late,
        "late_fraction": late / frames_measured if frames_measured else None,
        # when and where: a stall of the server shows as a few dense 100 ms bins over many
        # streams, a shortfall of capacity as late frames spread over the whole run
        "late_streams": int(late_mask.any(axis=1).sum()),
        "late_bins_100ms": _late_bins(due[late_mask] - w0),
        "missing_results": missing,
        "client_lag_ms": {"p50": _pct(lag, 50), "p99": lag_p99},
        "client_lagging": bool(saturated),
        "rtf": audio_s / (n * win_s),
        "audio_s_per_s": audio_s / win_s,
        "server_cpu_percent": None if s0 is None or s1 is None else 100 * (s1 - s0) / (t1 - t0),
        "server_cpu_percent_by_process": {
            k: round(100 * v / (t1 - t0), 1) for k, v in cpu_s.items()},
        "server_cpu_per_audio_s": (
            None if s0 is None or s1 is None or audio_s == 0 else (s1 - s0) / audio_s
        ),
        # CPU per answered frame, by role: what a change to the per-message path moves, with
        # no dependence on how many streams happened to run
        "server_cpu_us_per_frame": {
            role: round(1e6 * sum(v for k, v in cpu_s.items() if k.startswith(prefix)) / acked, 1)
            for role, prefix in (("engine", "s4d-engine"), ("front-ends", "s4d-frontend"),
                                 ("server", "server"))
        } if acked else {},
        # what the machine took from the server in the window, in % of one CPU like the CPU
        # figures: hypervisor steal on the server's CPUs (all CPUs when it is not pinned), and
        # the time its threads waited runnable for a CPU
        "server_cpu_steal_percent": (
            None if st0 is None or st1 is None else round(100 * (st1 - st0) / (t1 - t0), 1)),
        "server_runqueue_wait_percent": (
            None if q0 is None or q1 is None else round(100 * (q1 - q0) / (t1 - t0), 1)),
        # the server's own view of the window (its /metrics): device steps and collector pauses
        "server_metrics": _window_metrics(m0, m1, args.model),
        "client_cpu_percent": 100 * client_cpu / total_s,
        "client_procs": procs,
        "open_s_max": max(o["open_s"] for o in outs),  # slowest worker to open its sessions
        "errors": errors[:10],
        "error_count": len(errors),
    }
    res["pass"] = bool(
        frames_measured > 0
        and p99 is not None
        and p99 <= args.p99_ms
        and late == 0
        and not errors
        and not saturated
    )
    return res


# ---------------------------------------------------------------------------- driver
def _log(args: argparse.Namespace, msg: str) -> None:
    print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)


def server_view(r: dict) -> str:
    """`  steps 2.6 ms x 1.8 sessions, gc engine 1 / frontend 2` from the server's /metrics."""
    m = r.get("server_metrics") or {}
    if not m.get("steps"):
        return ""
    gc_text = ", ".join(f"{p} {g['count']}" for p, g in sorted(m["gc_pauses"].items()))
    lag_text = ", ".join(f"{p} {g['over_20ms']}/{g['over_50ms']}"
                         for p, g in sorted(m.get("loop_lag", {}).items())
                         if g["over_20ms"])
    return (f"  steps {m['step_ms_mean']:.1f} ms x {m['batch_mean']:.0f} sessions"
            f"{'  gc ' + gc_text if gc_text else ''}"
            f"{'  loop stalls >=20/50 ms ' + lag_text if lag_text else ''}")


def machine_view(r: dict) -> str:
    """` (steal 120%, run-queue wait 300%)` when the machine took CPU time from the server."""
    parts = []
    if r.get("server_cpu_steal_percent"):
        parts.append(f"steal {r['server_cpu_steal_percent']:.0f}%")
    if r.get("server_runqueue_wait_percent"):
        parts.append(f"run-queue wait {r['server_runqueue_wait_percent']:.0f}%")
    return f" ({', '.join(parts)})" if parts else ""


def late_where(r: dict) -> str:
    """`  late in S streams, B bins of 100 ms (densest 12.3 s: n)` when any frame was late."""
    if not r["late_frames"] or "late_bins_100ms" not in r:
        return ""
    bins = r["late_bins_100ms"]
    top = bins["densest"][0]
    return (f"  late in {r['late_streams']} streams, {bins['bins']} bins of 100 ms"
            f" (densest {top[0]} s: {top[1]})")


def _fmt(r: dict) -> str:
    lat = r["latency_ms"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:7.1f}"

    cpu = r["server_cpu_percent"]
    top = sorted(r.get("server_cpu_percent_by_process", {}).items(), key=lambda kv: -kv[1])[:3]
    return (
        f"N={r['streams']:5d}  p50 {f(lat['p50'])}  p95 {f(lat['p95'])}  p99 {f(lat['p99'])} ms"
        f"  late {r['late_frames']:6d}/{r['frames_measured']:<7d} rtf {r['rtf']:.3f}"
        f"  server cpu {'-' if cpu is None else f'{cpu:.0f}%'}"
        f"{machine_view(r)}"
        f"  client cpu {r['client_cpu_percent']:.0f}%  open {r['open_s_max']:.1f} s"
        f"  us/frame {' '.join(f'{k} {v:.0f}' for k, v in r['server_cpu_us_per_frame'].items() if v)}"
        f"  [{' '.join(f'{k.split(chr(58))[0]} {v:.0f}%' for k, v in top)}]"
        f"{'  CLIENT LAGGING' if r['client_lagging'] else ''}"
        f"{'  errors ' + str(r['error_count']) if r['error_count'] else ''}"
        f"{server_view(r)}{late_where(r)}  {'PASS' if r['pass'] else 'FAIL'}"
    )


def run(args: argparse.Namespace) -> int:
    import httpx

    server = None
    tmpdir = tempfile.mkdtemp(prefix="s4d-bench-")
    max_n = max(args.streams) if args.streams is not None else args.max_streams
    try:
        if args.url is None:
            extra = dict(kv.split("=", 1) for kv in args.server_env)
            if args.workers is not None:
                extra["S4D_WORKERS"] = str(args.workers)
            server = ServerProcess(
                args.checkpoints,
                args.model,
                max_sessions=max_n + 8,
                extra_env=extra,
                device=args.device,
                log_path=os.path.join(tmpdir, "server.log"),
                cpus=cpu_list(args.server_cpus),
            )
            _log(args, f"starting the server on {server.url} (log {server.log_path})")
            server.wait_ready(args.server_timeout)
            url, server_pid = server.url, server.pid
        else:
            url, server_pid = args.url.rstrip("/"), args.server_pid
        r = httpx.get(f"{url}/v1/models/{args.model}", timeout=10.0, trust_env=False)
        if r.status_code != 200:
            raise RuntimeError(f"model {args.model!r}: {r.status_code} {r.text[:300]}")
        meta = r.json()
        rate = int(meta["sample_rate"])
        channels = int(meta.get("input_channels", 1))
        frame = args.frame or int(meta.get("frame_size") or 0) or max(1, round(0.02 * rate))
        encoding = args.encoding
        if encoding == "auto":
            encoding = "pcm_s16le" if rate >= 8000 else "f32le"
        procs = args.client_procs or max(1, min((os.cpu_count() or 2) // 4, 8))
        ctx = dict(
            url=url,
            server_pid=server_pid,
            rate=rate,
            frame=frame,
            channels=channels,
            encoding=encoding,
            procs=procs,
        )
        report: dict[str, Any] = {
            "benchmark": "serve",
            "model": args.model,
            "url": url,
            "server_started_here": server is not None,
            "workers": args.workers,
            "server_cpus": args.server_cpus,
            "client_cpus": args.client_cpus,
            "backend": meta.get("backend"),
            "device": meta.get("device"),
            "sample_rate": rate,
            "channels": channels,
            "frame_size": frame,
            "frame_ms": 1000.0 * frame / rate,
            "encoding": encoding,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "slack_ms": args.slack_ms,
            "p99_target_ms": args.p99_ms,
            "late_definition": "result received after d_k + frame_duration + slack, where "
            "d_k is when frame k is due; missing results count as late",
            "host": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "runs": [],
        }
        ctx_mp = mp.get_context("spawn")
        client_cpus = cpu_list(args.client_cpus)
        with cf.ProcessPoolExecutor(
            max_workers=procs, mp_context=ctx_mp,
            initializer=os.sched_setaffinity if client_cpus else None,
            initargs=(0, client_cpus) if client_cpus else (),
        ) as pool:

            def measure(n: int) -> dict:
                res = run_once(args, ctx, n, pool)
                report["runs"].append(res)
                _log(args, _fmt(res))
                time.sleep(0.5)  # let the server close the sessions
                return res

            if args.streams is not None:
                passed: dict[int, bool] = {}
                for n in args.streams:
                    for _ in range(max(1, args.repeat)):
                        ok = measure(n)["pass"]
                        passed[n] = passed.get(n, True) and ok
                # the largest N whose every repeat passed
                best = max((n for n, ok in passed.items() if ok), default=None)
            else:
                best, fail = None, None
                n = max(1, args.start)
                while n <= args.max_streams:
                    if measure(n)["pass"]:
                        best = n
                        n *= 2
                    else:
                        fail = n
                        break
                if best is not None and fail is not None:
                    lo, hi = best, fail
                    while hi - lo > max(1, int(lo * args.bisect_tol)):
                        mid = (lo + hi) // 2
                        if measure(mid)["pass"]:
                            lo = mid
                        else:
                            hi = mid
                    best = lo
        report["max_streams"] = best
        if args.json or args.output:
            text = json.dumps(report, indent=2)
            if args.output:
                Path(args.output).write_text(text + "\n")
            if args.json:
                print(text, flush=True)
        if not args.json:
            print(f"largest N with p99 <= {args.p99_ms:g} ms and no late frames: {best}")
        return 0
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        print(f"bench.serve: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
