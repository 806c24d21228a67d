"""The benches that drive the engine in-process still run against today's engine.

They call engine internals (rings, feed, lanes), so an engine change can break them silently:
two had (a no-op backend without an attribute the engine reads; `feed` after the samples moved
into front-end-written rings), and one aborted at exit. Small sizes, no timing asserted."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_engine_overhead_bench_runs_and_every_frame_comes_back():
    """bench/engine_overhead.py ends only once every frame's result has come back (it once
    spun forever: the engine's round failed on its no-op backend every time)."""
    from bench.engine_overhead import run

    args = argparse.Namespace(streams=40, frontends=3, seconds=0.2, tick_ms=4.0, round_ms=4.0,
                              profile=False)
    out = asyncio.run(asyncio.wait_for(run(args), timeout=60))
    assert out["frames"] == 40 * 10 and out["frontends"] == 3
    assert out["cpu_us_per_frame"] > 0


def test_failover_wave_bench_snapshots_every_session():
    """bench/failover.py wave: sessions fed as front-ends feed them, every wave stores all."""
    from bench.failover import _wave

    args = argparse.Namespace(checkpoint=ROOT / "checkpoints" / "kws-s4d", store="memory://",
                              sessions=6, reps=2)
    out = asyncio.run(asyncio.wait_for(_wave(args), timeout=120))
    assert out["sessions"] == 6 and out["wave"]["n"] == 2 and out["snapshot_bytes"] > 0


@pytest.mark.parametrize("ring", ["staging", "direct"])
def test_engine_load_bench_answers_frames_and_exits_cleanly(ring):
    """bench/engine_load.py with the shipped kws model on CPU (a few sessions, real time): it
    answers frames and its process exits with status 0 (it aborted at exit, status 134, while
    its device lane was inside torch); by default through staging rings as `--workers` serves
    (copied in by the engine), with `--direct-ring` into the engine's ring."""
    r = subprocess.run(
        [sys.executable, "-m", "bench.engine_load", "--checkpoints", "checkpoints", "--model",
         "kws-s4d", "--sessions", "4", "--frontends", "2", "--duration", "1", "--warmup", "0.5",
         *(["--direct-ring"] if ring == "direct" else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-800:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["sessions"] == 4 and out["frames_answered"] > 0
    assert out["staging_rings"] is (ring == "staging")


def test_batch_fft_bench_runs_every_variant_within_float32():
    """bench/batch_fft.py swaps model.s4d's convolution per variant: a model change must not
    leave a variant calling a signature that no longer exists, or differ from float64."""
    r = subprocess.run([sys.executable, "-m", "bench.batch_fft", "--smoke", "--device", "cpu",
                        "--min-time", "0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-800:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert {row["variant"] for row in rows} == {"before", "fast", "direct", "pow2", "dim1", "kept"}
    assert all(row["rel_err_vs_f64"] < 5e-5 for row in rows)


def test_rest_load_bench_reports_a_real_server():
    """bench/rest_load.py against a one-process server: every answer a 200, numbers reported."""
    r = subprocess.run([sys.executable, "-m", "bench.rest_load", "--workers", "0", "--connections",
                        "4", "--procs", "1", "--seconds", "1"], cwd=ROOT, capture_output=True,
                       text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-800:]
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["workers"] == 0 and row["non_200"] == 0
    assert row["requests_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"]
