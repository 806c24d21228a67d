"""bench.gpu10 (SMOKE sizes on the CPU) and bench.precision: real runs, their JSON, and the
report writers that put measured tables into cards and RESULTS.md (idempotent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench import gpu10, precision

ROOT = Path(__file__).resolve().parent.parent


def test_gpu10_smoke_sections_and_report(tmp_path):
    out = tmp_path / "gpu10"
    assert gpu10.main(["--out", str(out), "--smoke", "--sections", "step,memory,onnx"]) == 0
    step = json.loads((out / "step.json").read_text())
    assert step["ok"] and step["stream_1s_vs_float64_rel"]["fp32"] <= 1e-5
    assert {r["mode"] for r in step["rows"]} == {"fp32", "tf32", "bf16"}
    assert 1e-5 < step["stream_1s_vs_float64_rel"]["bf16"] < 0.05
    memory = json.loads((out / "memory.json").read_text())
    assert memory["slab_bytes"] == memory["state_bytes_per_session"] * memory["idle_sessions"]
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    for _ in range(2):  # a second report replaces the section, never appends another
        assert gpu10.main(["--report", str(out), "--results-md", str(results)]) == 0
    text = results.read_text()
    assert text.count("<!-- gpu10:begin -->") == 1 and "| bf16 | 4 |" in text


def test_precision_bench_and_card_report(tmp_path):
    out = tmp_path / "precision.json"
    assert precision.main(["--device", "cpu", "--checkpoints", "fsdd-s4d", "--limit", "4",
                           "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    rows = {(r["mode"], r["path"]): r for r in result["rows"]}
    assert set(rows) == {(m, p) for m in ("fp32", "tf32", "bf16") for p in ("batch", "stream")}
    assert rows["fp32", "batch"]["max_abs_dp"] < 1e-5 and rows["fp32", "stream"]["max_abs_dp"] < 1e-5
    assert rows["bf16", "stream"]["max_abs_dp"] > rows["fp32", "stream"]["max_abs_dp"]
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(ROOT / "checkpoints" / "fsdd-s4d", ckpts / "fsdd-s4d")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    for _ in range(2):
        precision.report(result, results, ckpts)
    card = (ckpts / "fsdd-s4d" / "CARD.md").read_text()
    assert card.count("## Precision modes") == 1 and "| bf16 | stream | 4 |" in card
    assert results.read_text().count("<!-- precision:begin -->") == 1


def test_precision_stream_models_use_their_clip_split():
    """kws-events / ecg-monitor are checked on the clip split of the task they were built from."""
    from model.checkpoint import load_config

    ckpts = precision.CHECKPOINTS
    kws = precision.split_args(load_config(ckpts / "kws-s4d"))
    assert precision.split_args(load_config(ckpts / "kws-events-s4d")) == kws
    ecg = precision.split_args(load_config(ckpts / "ecg-s4d"))
    assert precision.split_args(load_config(ckpts / "ecg-monitor-s4d")) == ecg
    assert kws[0] == "kws" and ecg[0] == "ecg"
