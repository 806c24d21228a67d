"""A 60 s soak in the suite (bench/soak.py): real-time streams with churn and resumes against a
real server; nothing lost, no failed stream, no session left behind, memory and descriptors
bounded. (The 30 min run is in bench/RESULTS.md.)"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_soak_60s(checkpoint_dir):
    r = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--seconds", "60", "--streams", "6",
         "--checkpoints", str(checkpoint_dir), "--model", "tiny", "--every", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and res["ok"], res
    assert res["samples_lost"] == 0 and res["error_count"] == 0
    assert res["sessions"] >= 6 * 60 / 8 and res["resumes"] >= 1
    assert res["sessions_left_after_ttl"] == 0
    assert res["rss_mb"]["end"] - res["rss_mb"]["after_warmup"] < 64, res["rss_mb"]
    assert res["fds"]["end"] <= res["fds"]["after_warmup"] + 8, res["fds"]
