"""`python -m model.install_streams` rewrites bench/RESULTS.md's stream section: a new
long-stream run replaces its own model's row of the cost table and keeps the other models'
measured rows (they are not measured again when one model changes)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.long_stream import run as long_stream_run
from model.install_streams import BEGIN, END, LONG_HEAD, install

ROOT = Path(__file__).resolve().parent.parent

OLD_TABLE = f"""{BEGIN}
## Continuous streams: event metrics (issue 15)

{LONG_HEAD}

| model | device | stream | 1st second | 1st minute | last minute | min..max over minutes | last / first minute | state bytes | memory before -> after |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| ecg-s4d | NVIDIA H200 | 60 min (3,600 frames) | 0.395 ms | 0.311 ms | 0.310 ms | 0.301..0.328 ms | 0.996 | 65,796 | CUDA 1 -> 1 B |
| kws-events-s4d | OLD MACHINE | 45 min | 14.032 ms | 14.032 ms | 14.896 ms | 13.790..16.942 ms | 1.062 | 131,588 | CUDA 1 -> 1 B |

{END}

## After the section
"""


def test_new_long_stream_run_replaces_only_its_models_row(tmp_path):
    src = tmp_path / "returned"
    src.mkdir()  # no trained models in it: the shipped checkpoints' metrics are kept
    ckpt = ROOT / "checkpoints" / "kws-events-s4d"
    r = long_stream_run(str(ckpt), seconds=2.0, device="cpu", sessions=1, bucket_s=1.0)
    (src / "long_stream_kws-events-s4d.json").write_text(json.dumps(r))
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n" + OLD_TABLE)

    install(src, ROOT / "checkpoints", results)
    text = results.read_text()

    table = text.split(LONG_HEAD, 1)[1].split(END, 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    by_model = {line.split("|")[1].strip(): line for line in rows[1:]}
    assert set(by_model) == {"kws-events-s4d", "ecg-s4d"}
    assert "OLD MACHINE" not in by_model["kws-events-s4d"]  # replaced by the new run
    assert "CPU" in by_model["kws-events-s4d"]
    assert f"{r['state_bytes_per_session']:,}" in by_model["kws-events-s4d"]
    assert "NVIDIA H200" in by_model["ecg-s4d"]  # kept as measured
    assert text.count(BEGIN) == 1 and text.rstrip().endswith("## After the section")


def test_card_lists_other_engines_per_engine_and_pooled():
    """`--eval-engines` results on the card: one row per engine, the pooled row, and the
    pooled curve's lowest threshold within 1 false alarm per hour (or that none reached it)."""
    from model.install_streams import engines_lines

    def row(missed, kw, fa, hours):
        return {"keywords": kw, "detected": kw - missed, "false_rejection_rate": missed / kw,
                "false_alarms": fa, "negative_hours": hours,
                "false_alarms_per_hour": fa / hours, "onset_error_p90_ms": 200.0}

    e = {"detector": {"threshold": 0.9998}, "command": "python -m model.train_streams ...",
         "sizes_per_engine": {"keyword_streams": 60, "negative_streams": 72,
                              "negative_stream_seconds": 60.0},
         "per_engine": {"flite": row(10, 100, 3, 1.2), "pico": row(30, 100, 1, 1.2)},
         "pooled": row(40, 200, 4, 2.4),
         "pooled_curve": [dict(threshold=0.99, **row(20, 200, 9, 2.4)),
                          dict(threshold=0.999, **row(50, 200, 2, 2.4))]}
    text = "\n".join(engines_lines(e))
    assert "| flite | 10.0 % (10 of 100) | 2.50 (3 in 1.2 h)" in text
    assert "| SVOX Pico | 30.0 % (30 of 100) | 0.83 (1 in 1.2 h)" in text
    assert "| **all 2** | **20.0 %** (40 of 200) | **1.67** (4 in 2.4 h)" in text
    assert "0.999, 25.0 % missed" in text and "at 0.99: 10.0 % missed at 3.8" in text
    e["pooled_curve"][1]["false_alarms_per_hour"] = 1.5
    assert "none of the sweep" in "\n".join(engines_lines(e))
    assert "By background" not in "\n".join(engines_lines(e))  # older engines.json: no line
    kw = {"keywords": 40, "detected": 30, "false_rejection_rate": 0.25}
    e["pooled_by_condition"] = {"keyword_streams": {
        "quiet": kw, "white, 0-10 dB": {"keywords": 60, "detected": 20},
        "babble, 20-30 dB": {"keywords": 40, "detected": 30}, "dry": kw, "all": kw}}
    e["environments"] = {"quiet": {"threshold": 0.999, "engines": row(8, 40, 3, 0.6)}}
    text = "\n".join(engines_lines(e))
    assert ("By background, pooled, at the shipped threshold: near silence 25.0 % missed (40 "
            "keywords), white / pink / babble 50.0 % (100).") in text
    assert ("At the quiet operating point (0.999): 20.0 % missed at 5.00 false alarms per hour "
            "(3 in 0.6 h).") in text
    assert engines_lines(None) == []


def test_card_breaks_the_test_streams_down_by_background():
    """`test_by_condition` on the card: one row per background with its bands and total, the
    quiet row without bands, false alarms per hour by background, dry against room."""
    from model.install_streams import condition_lines

    def kw(n, d):
        return {"keywords": n, "detected": d, "false_rejection_rate": round(1 - d / n, 4)}

    c = {"threshold": 0.9998,
         "keyword_streams": {"white, 0-10 dB": kw(10, 5), "white, 20-30 dB": kw(30, 27),
                             "babble, 10-20 dB": kw(20, 10), "quiet": kw(40, 38),
                             "dry": kw(70, 60), "through a room": kw(30, 20), "all": kw(100, 80)},
         "non_keyword_streams": {"white": {"false_alarms": 2, "hours": 1.5,
                                           "false_alarms_per_hour": 1.333},
                                 "quiet": {"false_alarms": 0, "hours": 1.5,
                                           "false_alarms_per_hour": 0.0}}}
    text = "\n".join(condition_lines(c))
    assert "| white | 50.0 % (10) | - | 10.0 % (30) | 20.0 % (40) | 1.33 (1.5) |" in text
    assert "| babble | - | 50.0 % (20) | - | 50.0 % (20) | - |" in text
    assert "| pink | - | - | - | - | - |" in text
    assert "| quiet | - | - | - | 5.0 % (40) | 0.00 (1.5) |" in text
    assert "Dry streams: 14.3 % (70); through a simulated room: 33.3 % (30)." in text
    c["by_keyword"] = {"yes": kw(50, 45), "go": kw(50, 35)}
    assert "room: 33.3 % (30); by keyword: yes 10.0 %, go 30.0 %." in "\n".join(
        condition_lines(c))
    assert condition_lines(None) == []


def test_card_gives_an_operating_point_per_environment():
    from model.install_streams import environment_lines

    def at(missed, kw, fa, hours):
        return {"keywords": kw, "detected": kw - missed, "false_rejection_rate": missed / kw,
                "false_alarms": fa, "negative_hours": hours,
                "false_alarms_per_hour": fa / hours, "onset_error_p90_ms": 180.0}

    envs = {"quiet": {"backgrounds": ["quiet"], "threshold": 0.999,
                      "validation": at(20, 200, 5, 6.0), "test": at(60, 600, 2, 1.6)}}
    text = "\n".join(environment_lines(envs))
    assert ("| quiet | 0.999 | 10.0 % @ 0.83 (5 in 6.0 h) | 10.0 % (60 of 600) | "
            "1.25 (2 in 1.6 h; 0.15-4.5) | 180 ms |") in text
    envs["noisy"] = dict(envs["quiet"], backgrounds=["white", "pink"])
    assert "| noisy (white / pink) | 0.999 |" in "\n".join(environment_lines(envs))
    assert environment_lines(None) == []


def test_card_says_when_the_detector_was_chosen_after_training(tmp_path):
    """A `--rechoose` run keeps the weights and the training record; its card names the
    re-choice command, and a card from a plain training run does not."""
    shipped = ROOT / "checkpoints" / "kws-events-s4d"
    src = tmp_path / "returned" / "kws-events-s4d"
    src.mkdir(parents=True)
    for f in ("model.safetensors", "metrics.json"):
        (src / f).write_bytes((shipped / f).read_bytes())
    cfg = json.loads((shipped / "config.json").read_text())
    cfg["training"]["detector_command"] = "python -m model.train_streams kws-events --rechoose X"
    (src / "config.json").write_text(json.dumps(cfg))
    install(src.parent, tmp_path / "checkpoints", tmp_path / "RESULTS.md")
    card_text = (tmp_path / "checkpoints" / "kws-events-s4d" / "CARD.md").read_text()
    assert "chosen again after training, the weights unchanged: `python -m model.train_streams " \
           "kws-events --rechoose X`" in card_text

    del cfg["training"]["detector_command"]
    (src / "config.json").write_text(json.dumps(cfg))
    install(src.parent, tmp_path / "checkpoints", tmp_path / "RESULTS.md")
    card_text = (tmp_path / "checkpoints" / "kws-events-s4d" / "CARD.md").read_text()
    assert "chosen again after training" not in card_text


def test_other_tools_card_sections_survive_a_reinstall_of_the_same_weights(tmp_path):
    """bench/real_speech.py's and bench/precision.py's sections stay on a card that
    install_streams rewrites for the same weights (a re-choice of the detector), and go when the
    weights change (they would describe the old ones)."""
    from model.install_streams import measured_on_same_weights

    src, dest = tmp_path / "run", tmp_path / "ckpt"
    src.mkdir()
    dest.mkdir()
    block = "<!-- real_speech:begin -->\n## Real recorded speech\n| a | b |\n<!-- real_speech:end -->"
    prec = "<!-- precision:begin -->\n## Precision modes\n| fp32 |\n<!-- precision:end -->"
    (dest / "CARD.md").write_text("# old card\n\nstuff\n\n" + prec + "\n\n" + block + "\n")
    (dest / "model.safetensors").write_bytes(b"weights-1")
    (src / "model.safetensors").write_bytes(b"weights-1")
    kept = measured_on_same_weights(src, dest)
    assert block in kept and prec in kept  # bench/precision.py's table too
    (src / "model.safetensors").write_bytes(b"weights-2")
    assert measured_on_same_weights(src, dest) == ""
    (src / "model.safetensors").write_bytes(b"weights-1")
    (dest / "CARD.md").write_text("# a card without other sections\n")
    assert measured_on_same_weights(src, dest) == ""
    assert measured_on_same_weights(src, tmp_path / "new") == ""  # nothing installed yet


def test_card_lists_other_generators_streams():
    """`--eval-generators` results on an ECG card: one row per bank with its generator."""
    from model.install_streams import generators_lines

    row = {"generator": "shift", "changes": 113, "detected_share": 0.9027,
           "delay_median_s": 5.6, "false_changes_per_hour": 5.833, "false_changes": 35,
           "hours": 6.0, "frame_accuracy": 0.9531}
    g = {"trained_on": "template", "detector": {"threshold": 0.999},
         "streams": {"n": 12, "seconds": 1800.0}, "command": "python -m model.train_streams ...",
         "per_bank": {"shift": row}}
    text = "\n".join(generators_lines(g))
    assert "trained on template; each bank's test split, 12 streams of 30 min" in text
    assert "| shift | ECGSYN beats with neurokit2's noise model" in text
    assert "| 90.3 % of 113 | 5.6 s | 5.83 (35 in 6.0 h) | 95.3 % |" in text
    assert generators_lines(None) == []
