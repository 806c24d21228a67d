"""Install the stream models trained by scripts/gpu_train_stream15.sh: copy each checkpoint
into checkpoints/<name>/, write its CARD.md and the stream-metrics section of
bench/RESULTS.md, every number read from the returned config.json / metrics.json.

    python -m model.install_streams RETURNED_DIR [--checkpoints checkpoints]
        [--results bench/RESULTS.md]

RETURNED_DIR is the `stream15` folder the script wrote under $OUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .data.kws_bank import ENGINE_NAMES, UNKNOWN_HELDOUT
from .data.stream_bank import (
    ECG_GENERATOR_SOURCE,
    ECG_GENERATOR_TEXT,
    ECG_PER_SPLIT,
    EXTRA_TRAIN_WORDS,
)
from .data.streams import NOISE_KINDS
from .evaluation import poisson_rate_interval, wilson_text
from .stream_eval import ENVIRONMENTS, SNR_BANDS, snr_band_name
from .streaming import StreamingNetwork

NAMES = ("kws-events-s4d", "ecg-monitor-s4d")
BEGIN, END = "<!-- stream-metrics:begin -->", "<!-- stream-metrics:end -->"
LONG_HEAD = "### Cost per second of a long stream (bench/long_stream.py)"
TARGETS = {
    "kws": "false rejection <= 10 % at <= 1 false alarm per hour; onset error p90 <= 300 ms",
    "ecg": ">= 95 % of rhythm changes detected within 15 s; <= 1 false change per hour",
}


def pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def kws_lines(m: dict) -> list[str]:
    t, v = m["test"], m["validation"]
    at1 = m.get("test_frr_at_1fa_per_hour")
    ok_frr = t["false_rejection_rate"] <= 0.10 and t["false_alarms_per_hour"] <= 1.0
    ok_on = t["onset_error_p90_ms"] <= 300
    d = m["detector"]
    grid = len(d.get("min_on_grid") or []) > 1
    chosen = (("of the thresholds x minimum on-times with <= 1 false alarm per hour there, the "
               "one that misses the fewest keywords") if grid else
              "the lowest threshold with <= 1 false alarm per hour there")
    if v["false_alarms_per_hour"] > 1.0:
        chosen = ("no setting of the sweep reached <= 1 false alarm per hour there, so the one "
                  "with the fewest false alarms")
    min_on = (f", minimum on-time {d.get('min_on_ms', 0):.0f} ms (p >= threshold must hold "
              f"that long; the event still reports the onset)") if d.get("min_on_ms") else ""
    lag = (f" Events report their onset {d['onset_lag_ms']:.0f} ms before the frame where the "
           "label turned on: the median lag between a keyword's end and that frame on validation "
           "(without it, the same test streams give an onset p90 of "
           f"{m['test_without_onset_lag']['onset_error_p90_ms']:.0f} ms)."
           if d.get("onset_lag_ms") and m.get("test_without_onset_lag") else "")
    labels = ""
    if d.get("label_thresholds"):
        one = m.get("test_one_threshold")
        labels = (" Each keyword has its own threshold, chosen on validation together (the "
                  "fewest missed keywords with <= 1 false alarm per hour in all): "
                  + ", ".join(f"{k} {v:g}" for k, v in d["label_thresholds"].items()) + "."
                  + (f" With the one threshold for all labels the same test streams give "
                     f"{pct(one['false_rejection_rate'])} missed at "
                     f"{one['false_alarms_per_hour']:.2f} false alarms per hour." if one else "")
                  + (f" On test the per-label setting raises more false alarms than on "
                     f"validation ({m['test']['false_alarms_per_hour']:.2f} against "
                     f"{v['false_alarms_per_hour']:.2f} per hour): thresholds chosen per label "
                     "fit validation's few false alarms." if m["test"]["false_alarms_per_hour"]
                     > v["false_alarms_per_hour"] else ""))
    where = evaluated_where(m)
    lines = [
        f"- Detector (chosen on validation streams: {chosen}): threshold {d['threshold']:g}, "
        f"hysteresis {d['hysteresis']}, hold-off {d['holdoff_ms']:.0f} ms{min_on}.{labels}{lag}"
        f"{where}",
        f"- Test, at that setting: false rejection **{pct(t['false_rejection_rate'])}** "
        f"({t['keywords'] - t['detected']} of {t['keywords']} keywords missed; 95 % CI "
        f"{wilson_text(t['keywords'] - t['detected'], t['keywords'])}) at "
        f"**{t['false_alarms_per_hour']:.2f} false alarms per hour** ({t['false_alarms']} in "
        f"{t['negative_hours']:.2f} h of non-keyword audio; 95 % CI "
        f"{rate_ci(t['false_alarms'], t['negative_hours'])} per hour); target {verdict(ok_frr)}.",
        f"- Onset error (event offset - end of the word), test: p50 {t['onset_error_p50_ms']:.0f} "
        f"ms, **p90 {t['onset_error_p90_ms']:.0f} ms** (mean signed "
        f"{t['onset_error_mean_signed_ms']} ms); target p90 <= 300 ms {verdict(ok_on)}.",
        f"- Events not matching a keyword on the keyword streams: "
        f"{t['unmatched_events_per_hour_on_keyword_streams']:.1f} per hour.",
        f"- Validation at the chosen setting: false rejection {pct(v['false_rejection_rate'])}, "
        f"{v['false_alarms_per_hour']:.2f} false alarms per hour ({v['negative_hours']:.2f} h).",
    ]
    if at1:
        lines.append(f"- The test curve's own point at <= 1 false alarm per hour (for "
                     f"comparison only; it configures nothing): threshold {at1['threshold']:g}, "
                     f"false rejection {pct(at1['false_rejection_rate'])}.")
    else:
        lines.append("- No threshold of the sweep reaches <= 1 false alarm per hour on the test "
                     "streams.")
    curve = [c for c in m.get("test_curve", []) if c["threshold"] in CURVE_POINTS]
    if curve:  # a user trades misses for false alarms with `start`'s threshold
        lines += ["- Test streams at other thresholds (`events.threshold` in `start`, one for "
                  "every label"
                  + (f"; minimum on-time {d['min_on_ms']:.0f} ms" if d.get("min_on_ms") else "")
                  + (f"; onset lag {d['onset_lag_ms']:.0f} ms" if d.get("onset_lag_ms") else "")
                  + "):", "",
                  "  | threshold | false rejection | false alarms / h | onset p90 |",
                  "  | --- | --- | --- | --- |"]
        lines += [f"  | {c['threshold']:g} | {pct(c['false_rejection_rate'])} | "
                  f"{c['false_alarms_per_hour']:.1f} | {c['onset_error_p90_ms']:.0f} ms |"
                  for c in curve]
        lines.append("")
    return lines + condition_lines(m.get("test_by_condition")) + environment_lines(
        m.get("environments"))


def environment_lines(envs: dict | None) -> list[str]:
    """The card's operating points per environment (`train_streams.choose_environments`)."""
    if not envs:
        return []
    lines = ["- Operating points by environment, for a user who knows it (set "
             "`events.threshold` in `start`, e.g. `s4d stream --events '{\"threshold\": "
             f"{next(iter(envs.values()))['threshold']:g}}}'`; the default above stays): each "
             "threshold chosen "
             "on validation streams of that environment alone (<= 1 false alarm per hour of its "
             "non-keyword audio, the fewest misses), then the test streams of that environment "
             "scored once:", "",
             "  | environment | threshold | validation: missed @ false alarms / h | test: missed "
             "| test: false alarms / h (95 % CI) | test onset p90 |",
             "  | --- | --- | --- | --- | --- | --- |"]
    for env, e in envs.items():
        v, t = e["validation"], e["test"]
        lines.append(
            f"  | {env}{'' if e['backgrounds'] == [env] else ' (' + ' / '.join(e['backgrounds']) + ')'}"
            f" | {e['threshold']:g} | "
            f"{pct(v['false_rejection_rate'])} @ {v['false_alarms_per_hour']:.2f} "
            f"({v['false_alarms']} in {v['negative_hours']:.1f} h) | "
            f"{pct(t['false_rejection_rate'])} ({t['keywords'] - t['detected']} of "
            f"{t['keywords']}) | {t['false_alarms_per_hour']:.2f} ({t['false_alarms']} in "
            f"{t['negative_hours']:.1f} h; {rate_ci(t['false_alarms'], t['negative_hours'])}) | "
            f"{t['onset_error_p90_ms']:.0f} ms |")
    return lines + [""]


def _kinds_total(cells: dict, kinds) -> tuple[int, int]:
    """(keywords, detected) of a condition table's cells whose background is one of `kinds`."""
    mine = [v for k, v in cells.items() if k.split(",")[0] in kinds]
    return sum(v["keywords"] for v in mine), sum(v["detected"] for v in mine)


def condition_lines(c: dict | None) -> list[str]:
    """The card's table of where the detector misses: test keyword streams by background and
    speech-to-background band (`stream_eval.by_condition`), false alarms by background."""
    if not c:
        return []
    cells = c["keyword_streams"]
    bands = [snr_band_name(b) for b in SNR_BANDS]

    def cell(key: str) -> str:
        v = cells.get(key)
        return f"{pct(v['false_rejection_rate'])} ({v['keywords']})" if v else "-"

    where = (f" Measured on {c['evaluated_on']} (`{c['command']}`)." if c.get("command")
             else "")
    lines = ["- Test, at that setting, by background: false rejection (keywords) on the keyword "
             "streams, one background per stream at a speech-to-background ratio drawn from "
             "0-30 dB (babble: 6-30 dB), or near silence (quiet); false alarms per hour on the "
             f"non-keyword streams.{where}", "",
             "  | background | " + " | ".join(bands) + " | all | false alarms / h (h) |",
             "  | --- | " + " | ".join("---" for _ in bands) + " | --- | --- |"]
    for kind in NOISE_KINDS:
        n, d = _kinds_total(cells, (kind,))
        row = ["-"] * len(bands) if kind == "quiet" else [cell(f"{kind}, {b}") for b in bands]
        fa = c["non_keyword_streams"].get(kind)
        lines.append(f"  | {kind} | " + " | ".join(row)
                     + (f" | {pct(1 - d / n)} ({n}) | " if n else " | - | ")
                     + (f"{fa['false_alarms_per_hour']:.2f} ({fa['hours']:.1f})" if fa else "-")
                     + " |")
    per_kw = "; by keyword: " + ", ".join(
        f"{k} {pct(v['false_rejection_rate'])}" for k, v in c.get("by_keyword", {}).items())
    lines += ["", f"  Dry streams: {cell('dry')}; through a simulated room: "
                  f"{cell('through a room')}"
              + (per_kw if c.get("by_keyword") else "") + ".", ""]
    return lines


CURVE_POINTS = (0.5, 0.7, 0.9, 0.96, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998,
                0.9999)


def rate_ci(k: int, hours: float) -> str:
    """'0.37-2.18': the exact 95 % interval of k events in `hours`, per hour."""
    lo, hi = poisson_rate_interval(k, hours)
    return f"{lo:.2g}-{hi:.2g}"


def evaluated_where(m: dict) -> str:
    """Where the detector was chosen and on which streams (runs before the streams were drawn
    on the CPU drew them with the device's RNG: CUDA draws agree across GPUs, not with CPU's)."""
    if m.get("streams_drawn_on") == "cpu":
        return (f" Detector evaluated on {m.get('detector_evaluated_on') or m['hardware']}; the "
                "evaluation streams are drawn on the CPU with fixed seeds, so any machine scores "
                "the same streams (`--rechoose` on a CPU reproduces these numbers up to float "
                "rounding, which can move an event across the threshold: bench/RESULTS.md "
                "gives each model's CPU check).")
    if not m.get("detector_evaluated_on"):
        return ""
    same = "CUDA" in m["detector_evaluated_on"]
    return (f" Detector evaluated on {m['detector_evaluated_on']} (`--rechoose`; "
            + ("the same seeds draw the same streams on any CUDA GPU)." if same else
               "streams drawn with this device's RNG differ from GPU draws)."))


#: what `changes_only` means on a card
CHANGES_ONLY = (", and only when the rhythm differs from the last one reported (`changes_only`: "
                "the same rhythm again after a dip in its probability is no change)")


def ecg_lines(m: dict) -> list[str]:
    t, v = m["test"], m["validation"]
    ok = t["detected_share"] >= 0.95 and t["false_changes_per_hour"] <= 1.0
    return [
        f"- Detector (chosen on validation streams: the most changes detected within 15 s with "
        f"<= 1 false change per hour there): threshold {m['detector']['threshold']:g}, "
        f"hysteresis {m['detector']['hysteresis']}, hold-off "
        f"{m['detector']['holdoff_ms'] / 1000:.0f} s; every rhythm (normal too) raises "
        f"events{CHANGES_ONLY if m['detector'].get('changes_only') else ''}."
        f"{evaluated_where(m)}",
        f"- Test: **{pct(t['detected_share'])} of {t['changes']} rhythm changes detected within "
        f"15 s** (95 % CI {wilson_text(t['detected'], t['changes'])}); delay median "
        f"{t['delay_median_s']:.1f} s, p90 {t['delay_p90_s']:.1f} s; "
        f"**{t['false_changes_per_hour']:.2f} false changes per hour** ({t['false_changes']} in "
        f"{t['hours']:.1f} h; 95 % CI {rate_ci(t['false_changes'], t['hours'])} per hour); "
        f"target {verdict(ok)}.",
        f"- Validation at the chosen setting: {pct(v['detected_share'])} of {v['changes']} "
        f"changes within 15 s, {v['false_changes_per_hour']:.2f} false changes per hour "
        f"({v['hours']:.1f} h).",
    ]


def generators_lines(g: dict | None) -> list[str]:
    """Rhythm events on streams of other ECG generators (`--eval-generators`)."""
    if not g:
        return []
    d, n = g["detector"], g["streams"]
    rows = [f"  | {name} | {ECG_GENERATOR_TEXT[v['generator']]} | {pct(v['detected_share'])} of "
            f"{v['changes']} | {v['delay_median_s']:.1f} s | {v['false_changes_per_hour']:.2f} "
            f"({v['false_changes']} in {v['hours']:.1f} h) | {pct(v['frame_accuracy'])} |"
            for name, v in g["per_bank"].items()]
    return [
        f"- Streams of other generators (trained on {g['trained_on']}; each bank's test split, "
        f"{n['n']} streams of {n['seconds'] / 60:.0f} min composed the same way; the detector as "
        f"shipped, threshold {d['threshold']:g}, nothing chosen on them; `{g['command']}`):", "",
        "  | bank | generator | changes within 15 s | median delay | false changes / h | "
        "frame accuracy |", "  | --- | --- | --- | --- | --- | --- |", *rows, "",
    ]


def sizes(recipe: dict, split: str) -> str:
    """'test: 300 keyword streams of 10-60 s + 6.0 h of non-keyword audio' from the recipe."""
    n, sec = recipe.get("eval_pos", {}).get(split, (0, None))
    what = f"{split}: {n} {'keyword ' if recipe.get('kind') == 'kws' else ''}streams of " + (
        f"{sec / 60:.0f} min" if sec and sec >= 600 else f"{sec:.0f} s" if sec else "10-60 s")
    neg = recipe.get("eval_neg", {}).get(split)
    if neg:
        what += f" + {neg[0] * neg[1] / 3600:.1f} h of non-keyword audio ({neg[1]:.0f} s streams)"
    return what


def engine_row(name: str, v: dict, bold: bool = False) -> str:
    """One row of the other-engines table: missed keywords, false alarms per hour, onset p90."""
    b = "**" if bold else ""
    return (f"  | {b}{name}{b} | {b}{pct(v['false_rejection_rate'])}{b} "
            f"({v['keywords'] - v['detected']} of {v['keywords']}) | "
            f"{b}{v['false_alarms_per_hour']:.2f}{b} ({v['false_alarms']} in "
            f"{v['negative_hours']:.1f} h) | {v['onset_error_p90_ms']:.0f} ms |")


def engines_lines(e: dict | None) -> list[str]:
    """Keyword events on other synthesizers' unheard test voices (`--eval-engines`)."""
    if not e:
        return []
    d, n = e["detector"], e["sizes_per_engine"]
    rows = [engine_row(ENGINE_NAMES.get(k, k), v) for k, v in e["per_engine"].items()]
    rows.append(engine_row(f"all {len(e['per_engine'])}", e["pooled"], bold=True))
    ok = [c for c in e["pooled_curve"] if c["false_alarms_per_hour"] <= 1.0]
    loose = next((c for c in e["pooled_curve"] if c["threshold"] == 0.99), None)
    return [
        "- Other synthesizers' voices (test voices of the keyword bank's other engines, which "
        "neither this model nor kws-s4d trained on; streams composed the same way, "
        f"{n['keyword_streams']} keyword streams of 10-60 s + {n['negative_streams']} non-keyword "
        f"streams of {n['negative_stream_seconds']:.0f} s per engine; their non-keywords are the "
        f"bank's {len(UNKNOWN_HELDOUT)} test-split words, {', '.join(UNKNOWN_HELDOUT)}, which "
        "training streams held in espeak-ng voices; the detector as shipped, threshold "
        f"{d['threshold']:g}, nothing chosen on them; `{e['command']}`):", "",
        "  | engine | missed keywords | false alarms / h | onset p90 |",
        "  | --- | --- | --- | --- |", *rows, "",
        "  Pooled, the lowest threshold with <= 1 false alarm per hour: "
        + (f"{ok[0]['threshold']:g}, {pct(ok[0]['false_rejection_rate'])} missed"
           if ok else "none of the sweep")
        + (f"; at 0.99: {pct(loose['false_rejection_rate'])} missed at "
           f"{loose['false_alarms_per_hour']:.1f} false alarms per hour" if loose else "") + ".",
        *engine_environment_lines(e),
    ]


def engine_environment_lines(e: dict) -> list[str]:
    """On the other synthesizers' voices: misses by background at the shipped threshold, and
    the card's operating points per environment (chosen on espeak-ng validation streams)."""
    c, envs = e.get("pooled_by_condition"), e.get("environments") or {}
    if not c:
        return []
    quiet = c["keyword_streams"].get("quiet")
    n, d = _kinds_total(c["keyword_streams"], ENVIRONMENTS["noisy"])
    line = ("  By background, pooled, at the shipped threshold: "
            + (f"near silence {pct(quiet['false_rejection_rate'])} missed ({quiet['keywords']} "
               "keywords)" if quiet else "no quiet streams")
            + (f", white / pink / babble {pct(1 - d / n)} ({n})" if n else "") + ".")
    for env, x in envs.items():
        t = x["engines"]
        line += (f" At the {env} operating point ({x['threshold']:g}): "
                 f"{pct(t['false_rejection_rate'])} missed at "
                 f"{t['false_alarms_per_hour']:.2f} false alarms per hour ({t['false_alarms']} in "
                 f"{t['negative_hours']:.1f} h).")
    return ["", line]


def card(name: str, cfg, m: dict, state_bytes: int, params: int,
         engines: dict | None = None, generators: dict | None = None) -> str:
    kind = m["kind"]
    tr = cfg.training
    t = cfg.task
    ev = t.events
    bg = ev.background_labels(cfg.class_names())
    per_label = ("; per-label thresholds " + ", ".join(f"{k} {v:g}" for k, v in
                                                       ev.label_thresholds.items())
                 if ev.label_thresholds else "")
    if kind == "kws":
        data = (
            "- Streams of 10-60 s (training: 10-20 s) composed on the fly "
            "(`model/data/streams.py`) from a bank of espeak-ng word renditions "
            "(`model/data/stream_bank.py`, via `model/data/kws.py`): words at random times "
            f"(gaps 0.25-3 s), each a keyword with probability "
            f"{tr.get('train_keyword_prob', 0.5):g} in training, 0.5 in evaluation (else "
            f"another word: the 30 of `kws.UNKNOWN_WORDS`; training streams also "
            f"{len(EXTRA_TRAIN_WORDS)} more words, `stream_bank.EXTRA_TRAIN_WORDS`), speed "
            "0.9-1.1, gain -6..0 dB, 30 % of streams through a simulated room "
            "(pyroomacoustics impulse responses), white / pink / babble noise at 0-30 dB SNR or a "
            "near-silent floor, random level.\n"
            "- Per-step targets: a keyword from the end of the word for 1 s; `unknown` while any "
            "word is spoken and for 1 s after a non-keyword; else `silence`.\n"
            "- Splits by voice (as kws-s4d): train/val/test renditions come from disjoint "
            f"voices. Evaluation (fixed seeds): {sizes(tr, 'val')}; {sizes(tr, 'test')}.")
    else:
        generator = tr.get("ecg_generator", "ecgsyn")
        per_split = ECG_PER_SPLIT[generator]
        data = (
            "- Streams composed (`model/data/streams.py`) from 10 s windows of "
            f"{ECG_GENERATOR_TEXT[generator]} ({' / '.join(str(n) for n in per_split.values())} "
            f"windows for {' / '.join(per_split)} from disjoint seed streams, "
            "`model/data/stream_bank.py`): segments of one rhythm, the "
            "rhythm changes between segments (always to another one); consecutive windows are "
            "joined by a 0.4 s crossfade everywhere, so a join carries no information.\n"
            f"- Training (scaled down): {tr['train_seconds'][0] / 60:.0f} min streams with "
            f"segments of {tr['train_segment_s'][0]:.0f}-{tr['train_segment_s'][1]:.0f} s. "
            f"Evaluation at realistic lengths, a change every "
            f"{tr['eval_segment_s'][0] / 60:.0f}-{tr['eval_segment_s'][1] / 60:.0f} min "
            f"(windows recur within a split, in new orders and gains): "
            f"{sizes(tr, 'val')}; {sizes(tr, 'test')}.\n"
            "- Per-step targets: the current rhythm; the first 2 s after a change are not "
            "scored (no model can know yet).")
    metric_lines = kws_lines(m) if kind == "kws" else ecg_lines(m)
    return f"""# {name}

{t.description}.

**Labels come from generated data**: {("speech synthesized with espeak-ng" + (
" (training streams also hold words of the keyword bank's other synthesizers: flite, festival, "
"MBROLA, SVOX Pico)" if tr.get("extra_words") else "")) if kind == "kws"
else "ECG simulated by " + ECG_GENERATOR_SOURCE[tr.get("ecg_generator", "ecgsyn")]}; the label is what the generator made. No human
recordings were used for training, so quality on real {"microphones" if kind == "kws" else
"patients"} will be lower{" (`python -m bench.real_speech --cards` measures it on real recorded "
"speech; its section, where present, is below)" if kind == "kws" else
": no real recording here has rhythm labels (bench/RESULTS.md streams MIT-BIH 208 through it as a sanity check). Not a medical device"}.

## Task
- Input: 1 channel at {t.sample_rate} Hz; streaming frame {t.frame_size} samples
  ({1000 * t.frame_size / t.sample_rate:.0f} ms). Classes ({len(t.class_names)}):
  {", ".join(t.class_names)}.
- Outputs over a recent horizon: pooling `ema` with time constant {cfg.model.ema_tau_s} s
  (a moving average of per-step features that forgets; exactly streamable, and the batch
  path computes the same prediction for every prefix).
- Event defaults (config `task.events`, overridable in `start` / `/predict`): threshold
  {ev.threshold:g}, hysteresis {ev.hysteresis}, hold-off {ev.holdoff_ms:.0f} ms, minimum
  on-time {ev.min_on_ms:.0f} ms, onset lag {ev.onset_lag_ms:.0f} ms, background {bg or "none"}{per_label}.

## Data
{data}

## Model
- Starts from `{(tr.get("stages") or [{}])[0].get("start") or tr.get("start_from")}` (same shape: H={cfg.model.d_model}, N={cfg.model.d_state},
  {cfg.model.n_layers} layers, patch {cfg.model.patch_size}{", log-mel front end" if cfg.model.front_end == "logmel" else ""}); parameters: {params:,}.
- Streaming state: {state_bytes:,} bytes per session, whatever the stream's length.

## Results on held-out streams (metrics computed by `model/stream_metrics.py`)
Targets (issue 15): {TARGETS[kind]}.
{chr(10).join(metric_lines + engines_lines(engines) + generators_lines(generators))}
- Per-frame accuracy on the test streams (frames with a target): {pct(m["test_frame_accuracy"])}.

## Training
- {m["train_steps"]} AdamW steps (lr {tr.get("lr")}, SSM lr {tr.get("lr_ssm")}, {tr.get("schedule")}),
  batch {tr.get("batch_size")} streams, loss: cross-entropy of the prediction after every step
  (`S4DNetwork.prefix_logits`) against the per-step targets; {m["train_wall_s"]:.0f} s on
  {m["hardware"]} (the step count was set from the measured speed to fit the time budget).
- Command: {how_run(tr)}, then `python -m model.install_streams DIR`, which wrote this card.
{rechosen_line(tr)}{stage_lines(tr)}"""


def rechosen_line(tr: dict) -> str:
    """A detector chosen again after training (`--rechoose`: same weights, e.g. on a larger
    validation set) says so, or the card would credit the training run with its settings."""
    if not tr.get("detector_command"):
        return ""
    return (f"- Event defaults chosen again after training, the weights unchanged: "
            f"`{tr['detector_command']}`.\n")


def stage_lines(tr: dict) -> str:
    """Runs that continued earlier runs (`--init-from`) list every stage in config `stages`."""
    stages = tr.get("stages") or []
    if not stages:
        return ""
    rows = [f"  {i}. {s['steps']} steps, {s['wall_s']:.0f} s on {s['hardware']}, from "
            f"{s['start']}{'; ' + s['note'] if s.get('note') else ''}"
            for i, s in enumerate(stages, 1)]
    return ("- Trained in " + str(len(stages)) + " stages, each continuing the last "
            "(`--init-from`; the schedule restarts each time):\n" + "\n".join(rows) + "\n")


def how_run(tr: dict) -> str:
    """The command that trained it: the GPU script's, or a reduced CPU run's own flags."""
    if tr.get("device") == "cpu":
        lo, hi = tr["train_seconds"]
        return (f"`{tr.get('command')} --batch-size {tr['batch_size']} --train-seconds {lo:g},"
                f"{hi:g} --budget-s {tr['budget_s']:.0f}` on a 2-core CPU (no GPU was available "
                "for this run: a reduced recipe; `scripts/gpu_train_stream15.sh` is the full one "
                "for a GPU)")
    if tr.get("stages"):
        return f"`{tr.get('command')}` (the last stage)"
    return f"`OUT=... bash scripts/gpu_train_stream15.sh` (runs `{tr.get('command')}`)"


def results_section(rows: list[tuple[str, object, dict]], long_runs: list[dict]) -> str:
    out = [BEGIN, "## Continuous streams: event metrics (issue 15)", "",
           "Held-out test streams; detector settings chosen on validation streams. Written by "
           "`python -m model.install_streams` from the training run's metrics.json.", ""]
    for name, _cfg, m in rows:
        out.append(f"### {name} ({m['hardware']}, {m['train_wall_s']:.0f} s of training)")
        out += kws_lines(m) if m["kind"] == "kws" else ecg_lines(m)
        out.append("")
    out += long_stream_lines(long_runs)
    out.append(END)
    return "\n".join(out)


def long_stream_lines(runs: list[dict]) -> list[str]:
    """The table of bench/long_stream.py runs (issue 15: cost per second of a long stream)."""
    if not runs:
        return []
    lines = [LONG_HEAD, "",
             "One stream, the server backend's per-frame work (slab gather -> step -> scatter; "
             "CUDA graphs on a GPU), wall time per second of audio. Command: `python -m "
             "bench.long_stream --checkpoint checkpoints/NAME --seconds 3600 --device cuda|cpu "
             "[--threads T] [--max-wall-s S]` (the wall-time cap stops a slow device early; the "
             "row says so).", "",
             "| model | device | stream | 1st second | 1st minute | last minute | min..max over minutes "
             "| last / first minute | state bytes | memory before -> after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        b = r["cost_per_audio_second_by_bucket_ms"]
        mem = r["cuda_allocated_before_after"]
        mem_s = (f"CUDA {mem[0]:,} -> {mem[1]:,} B" if mem[0] is not None
                 else f"RSS {r['rss_mb_before_after'][0]} -> {r['rss_mb_before_after'][1]} MB")
        lines.append(
            f"| {Path(r['checkpoint']).name} | {r['hardware']} | {r['stream_seconds'] / 60:.0f} min "
            f"({r['frames']:,} frames{'; stopped early at the wall-time cap' if r.get('stopped_early') else ''}) | {r['cost_per_audio_second_first_second_ms']:.3f} ms "
            f"| {b[0]:.3f} ms | {b[-1]:.3f} ms | {min(b):.3f}..{max(b):.3f} ms "
            f"| {r['last_over_first_bucket']} | {r['state_bytes_per_session']:,} | {mem_s} |")
    lines.append("")
    return lines


def keep_other_rows(section: str, old_table: str, measured: set[str]) -> str:
    """The new long-stream table plus the old table's rows of models not measured again
    (each row is one model on one device; a new run replaces its model's rows)."""
    old_rows = [line for line in old_table.splitlines()
                if line.startswith("| ") and not line.startswith(("| model |", "| ---"))
                and line.split("|")[1].strip() not in measured]
    if not old_rows:
        return section
    lines = section.split("\n")
    last_row = max(i for i, line in enumerate(lines) if line.startswith("| "))
    return "\n".join(lines[: last_row + 1] + old_rows + lines[last_row + 1:])


#: card sections other tools write (bench/real_speech.py, bench/precision.py); kept while the
#: weights stay the same
OTHER_SECTIONS = (("<!-- real_speech:begin -->", "<!-- real_speech:end -->"),
                  ("<!-- precision:begin -->", "<!-- precision:end -->"))  # bench/precision.py


def measured_on_same_weights(folder: Path, dest: Path) -> str:
    """The other tools' sections of the installed card, if the weights being installed are the
    ones they measured (a re-choice of the detector), else "" (they would describe old weights)."""
    old_card, old_weights = dest / "CARD.md", dest / "model.safetensors"
    if not (old_card.is_file() and old_weights.is_file()):
        return ""
    if old_weights.read_bytes() != (folder / "model.safetensors").read_bytes():
        return ""
    text, kept = old_card.read_text(), ""
    for begin, end in OTHER_SECTIONS:
        if begin in text and end in text.split(begin, 1)[1]:
            kept += "\n" + begin + text.split(begin, 1)[1].split(end, 1)[0] + end + "\n"
    return kept


def measured_json(folder: Path, dest: Path, name: str) -> dict | None:
    """A measurement file of the run being installed, copied beside its weights; one left in
    `dest` from the weights this run replaces is removed (it measured other weights)."""
    if (folder / name).is_file():
        if folder.resolve() != dest.resolve():
            shutil.copyfile(folder / name, dest / name)
        return json.loads((folder / name).read_text())
    (dest / name).unlink(missing_ok=True)
    return None


def install(src: Path, checkpoints: Path, results: Path) -> list[str]:
    rows = []
    for name in NAMES:
        folder = src / name
        if not (folder / "metrics.json").is_file():
            print(f"{folder}: no metrics.json (not in this run): not installed")
            kept = checkpoints / name
            if (kept / "metrics.json").is_file():  # its RESULTS lines stay, from the shipped one
                rows.append((name, load_checkpoint(kept)[1],
                             json.loads((kept / "metrics.json").read_text())))
            continue
        dest = checkpoints / name
        dest.mkdir(parents=True, exist_ok=True)
        kept_sections = measured_on_same_weights(folder, dest)
        for f in ("config.json", "model.safetensors"):
            shutil.copyfile(folder / f, dest / f)
        m = json.loads((folder / "metrics.json").read_text())
        net, cfg = load_checkpoint(dest)
        with torch.no_grad():
            state_bytes = StreamingNetwork(net, cfg.task.frame_size).state_bytes_per_session
        # `--eval-engines` / `--eval-generators` results, measured on these weights
        engines, generators = (measured_json(folder, dest, f)
                               for f in ("engines.json", "generators.json"))
        (dest / "CARD.md").write_text(card(name, cfg, m, state_bytes, net.num_parameters(),
                                           engines, generators) + kept_sections)
        shutil.copyfile(folder / "metrics.json", dest / "metrics.json")
        rows.append((name, cfg, m))
    text = results.read_text() if results.exists() else "# Results\n"
    long_runs = [json.loads(p.read_text()) for p in sorted(src.glob("long_stream_*.json"))]
    section = results_section(rows, long_runs)
    old_long = LONG_HEAD in text and END in text.split(LONG_HEAD, 1)[1]
    if old_long:  # the measured table stays; new runs replace only their own models' rows
        kept = text.split(LONG_HEAD, 1)[1].split(END, 1)[0]
        if not long_runs:
            section = section.replace(END, LONG_HEAD + kept + END)
        else:
            section = keep_other_rows(section, kept, {Path(r["checkpoint"]).name
                                                      for r in long_runs})
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    results.write_text(text)
    return [n for n, _, _ in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="the stream15 folder returned under $OUT")
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--results", default="bench/RESULTS.md")
    args = ap.parse_args(argv)
    names = install(Path(args.src), Path(args.checkpoints), Path(args.results))
    print("installed " + (", ".join(names) or "nothing"))
    return 0 if names else 1


if __name__ == "__main__":
    sys.exit(main())
