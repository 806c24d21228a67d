"""The evaluation streams of the stream presets and their scores: streams drawn on the CPU
with fixed seeds (the same on every machine), each stream's frame probabilities, the event
detector's metrics at a setting, the keyword events on other synthesizers' voices
(`train_streams --eval-engines`) and the rhythm events on other ECG generators' streams
(`--eval-generators`). `train_streams` trains and chooses; this module measures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .data import streams as S
from .data.stream_bank import ecg_generator
from .events import frame_ends
from .network import S4DNetwork
from .stream_metrics import detect_many, ecg_summary, kws_match, kws_summary, settings_for
from .train import hardware

if TYPE_CHECKING:
    from .train_streams import StreamPreset


def make_batch(preset: StreamPreset, bank, rirs, gen, seconds: float, batch: int, patch: int,
               keyword_prob: float = 0.5, segment_s=None, conditions: bool = False):
    """(x [B, T, 1], per-step targets, truths), and with `conditions` the keyword streams'
    `StreamConditions` (None for ECG) last."""
    cond = None
    if preset.kind == "kws":
        x, y, truth, *rest = S.kws_streams(bank, rirs, batch, seconds, gen,
                                           keyword_prob=keyword_prob, patch=patch,
                                           conditions=conditions)
        cond = rest[0] if rest else None
    else:
        x, y, truth = S.ecg_streams(bank, batch, seconds, gen,
                                    segment_s=segment_s or preset.train_segment_s, patch=patch)
    return (x.unsqueeze(-1), y, truth, cond) if conditions else (x.unsqueeze(-1), y, truth)


def watched_labels(cfg) -> list[int]:
    """Class indices that raise events (the model's background labels never do)."""
    names = cfg.class_names()
    background = set(cfg.task.events.background_labels(names))
    return [i for i, c in enumerate(names) if c not in background]


def as_shipped(preset: StreamPreset, checkpoint: Path, dev: torch.device):
    """(net in eval mode, config, the preset scoring with the checkpoint's own detector): the
    measurements on other voices and generators choose nothing."""
    net, cfg = load_checkpoint(checkpoint, device=dev)
    net.eval()
    ev = cfg.task.events
    return net, cfg, replace(preset, hysteresis=ev.hysteresis, holdoff_ms=ev.holdoff_ms,
                             changes_only=ev.changes_only)


def eval_engines(preset: StreamPreset, checkpoint: Path, bank_dir: Path, data13: Path,
                 out: Path, device: str, engines=None, log=print) -> dict:
    """Keyword events on voices of other synthesizers, as a user would meet them: streams
    composed the same way from the test voices of the keyword bank's other engines
    (`stream_bank.engine_words(split="test")`: voices that neither this model nor its clip
    base trained on), scored with the checkpoint's own event defaults: nothing is chosen on
    them. Per engine, pooled, and the pooled curve over the preset's thresholds. Writes
    out/engines.json (install_streams puts it on the card)."""
    from .data.stream_bank import engine_words, other_engines

    if preset.kind != "kws":
        raise ValueError("--eval-engines measures keyword models")
    dev = torch.device(device)
    net, cfg, preset = as_shipped(preset, checkpoint, dev)
    ev = cfg.task.events
    names = cfg.class_names()
    label_on = {names.index(k): v for k, v in (ev.label_thresholds or {}).items()}
    engines = engines or other_engines(data13)
    pooled = {"pos": [], "neg": [], "pos_seconds": 0.0, "neg_seconds": 0.0,
              "conditions": {"pos": [], "neg": []}}
    per_engine = {}
    for engine in engines:
        words = S.WordBank(*engine_words(data13, [engine], split="test"))
        data = evaluate(net, cfg, preset, bank_dir, f"engine-{engine}", dev, words)
        per_engine[engine] = score(preset, cfg, data, ev.threshold, ev.min_on_ms,
                                   ev.onset_lag_ms, label_on)
        per_engine[engine]["frame_accuracy"] = data["frame_accuracy"]
        log(f"{preset.name} on {engine}'s test voices: {per_engine[engine]}")
        for key in ("pos", "neg"):
            pooled[key] += data[key]
            pooled[f"{key}_seconds"] += data[f"{key}_seconds"]
            pooled["conditions"][key] += data["conditions"][key]
    # the operating points per environment the card gives (chosen on espeak-ng validation
    # streams), on these voices: nothing is chosen here either
    envs = {env: {"backgrounds": e["backgrounds"], "threshold": e["threshold"],
                  "engines": score(preset, cfg, environment(pooled, tuple(e["backgrounds"])),
                                   e["threshold"], ev.min_on_ms, ev.onset_lag_ms)}
            for env, e in (cfg.metrics.get("environments") or {}).items()}
    result = {
        "checkpoint": str(checkpoint), "data13_bank": str(data13), "engines": list(engines),
        "detector": {"threshold": ev.threshold, "min_on_ms": ev.min_on_ms,
                     "onset_lag_ms": ev.onset_lag_ms, "label_thresholds": ev.label_thresholds},
        "sizes_per_engine": {"keyword_streams": preset.eval_pos["engine"][0],
                             "negative_streams": preset.eval_neg["engine"][0],
                             "negative_stream_seconds": preset.eval_neg["engine"][1]},
        "per_engine": per_engine,
        "pooled": score(preset, cfg, pooled, ev.threshold, ev.min_on_ms, ev.onset_lag_ms,
                        label_on),
        "pooled_curve": [dict(threshold=t, **score(preset, cfg, pooled, t, ev.min_on_ms,
                                                   ev.onset_lag_ms))
                         for t in preset.thresholds],
        "pooled_by_condition": by_condition(preset, cfg, pooled, ev.threshold, ev.min_on_ms,
                                            ev.onset_lag_ms, label_on),
        "environments": envs,
        "streams_drawn_on": "cpu", "evaluated_on": hardware(dev),
        "command": f"python -m model.train_streams {preset.name.removesuffix('-s4d')} "
                   f"--eval-engines {checkpoint} --data13 {data13} --bank {bank_dir} "
                   f"--device {device}",
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "engines.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def eval_generators(preset: StreamPreset, checkpoint: Path, banks: dict[str, Path], out: Path,
                    device: str, log=print) -> dict:
    """Rhythm events on streams of ECG generators a monitor may never have seen, as a user
    would meet them: each bank's test split (`stream_bank --ecg-generator G`), composed with
    the preset's evaluation recipe and seeds and scored with the checkpoint's own event
    defaults: nothing is chosen on them. Writes out/generators.json (install_streams puts it
    on the card)."""
    if preset.kind != "ecg":
        raise ValueError("--eval-generators measures ECG models")
    dev = torch.device(device)
    net, cfg, preset = as_shipped(preset, checkpoint, dev)
    ev = cfg.task.events
    per_bank = {}
    for name, bank in banks.items():
        data = evaluate(net, cfg, preset, bank, "test", dev)
        per_bank[name] = {"generator": ecg_generator(bank), "bank": str(bank),
                          **score(preset, cfg, data, ev.threshold, ev.min_on_ms),
                          "frame_accuracy": data["frame_accuracy"]}
        log(f"{preset.name} on {name} ({per_bank[name]['generator']}): {per_bank[name]}")
    spec = ",".join(f"{k}={v}" for k, v in banks.items())
    result = {
        "checkpoint": str(checkpoint), "trained_on": cfg.training.get("ecg_generator", "ecgsyn"),
        "detector": {"threshold": ev.threshold, "hysteresis": ev.hysteresis,
                     "holdoff_ms": ev.holdoff_ms, "changes_only": ev.changes_only},
        "streams": {"n": preset.eval_pos["test"][0], "seconds": preset.eval_pos["test"][1]},
        "per_bank": per_bank, "streams_drawn_on": "cpu", "evaluated_on": hardware(dev),
        "command": f"python -m model.train_streams {preset.name.removesuffix('-s4d')} "
                   f"--eval-generators {checkpoint} --generator-banks {spec} --device {device}",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "generators.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


@torch.no_grad()
def frame_probs(net: S4DNetwork, x: torch.Tensor, frame_size: int) -> tuple[np.ndarray, list]:
    """Per stream: probabilities [F, K] at every frame end (what a stream's detector sees)."""
    patch = net.cfg.patch_size
    ends = frame_ends(x.shape[1], frame_size, patch)
    rows = torch.tensor([e // patch - 1 for e in ends], device=x.device)
    logits = net.prefix_logits(x)[:, rows]
    probs = torch.softmax(logits.double(), -1).float().cpu().numpy()
    return probs, ends


def split_seed(split: str) -> int:
    """The evaluation streams' RNG seed: val, test, then one per other engine ("engine-flite")."""
    from .data.kws_bank import ENGINES

    fixed = {"val": 1, "test": 2, **{f"engine-{e}": 10 + i for i, e in enumerate(ENGINES)}}
    return 1000 + fixed[split]


def eval_batches(net, cfg, preset: StreamPreset, bank_dir: Path, split: str, dev,
                 words: S.WordBank | None = None):
    """The evaluation streams of a split, in order and with fixed seeds: yields (kind "pos" /
    "neg", x [b, T, 1], per-step targets, truths, frame probabilities [b, F, K], frame ends,
    keyword streams' conditions or None).
    The streams are drawn and rendered on the CPU whatever `dev` runs the model (a CUDA RNG
    draws other numbers than the CPU's), so every machine scores the same streams and a card's
    numbers can be reproduced anywhere. `words` replaces the bank's own words of the split
    (split "engine-<name>": another synthesizer's test voices, sized by the preset's "engine")."""
    draw = torch.device("cpu")
    bank = words if words is not None else (
        S.WordBank if preset.kind == "kws" else S.EcgBank).load(bank_dir, split, draw)
    rirs = S.load_rirs(bank_dir, draw) if preset.kind == "kws" else None
    gen = torch.Generator(device=draw).manual_seed(split_seed(split))
    per_batch = 8 if preset.kind == "kws" else 4
    sizes = "engine" if split.startswith("engine-") else split
    runs = [("pos", *preset.eval_pos[sizes], 0.5)]
    if preset.kind == "kws":
        runs.append(("neg", *preset.eval_neg[sizes], 0.0))
    for kind, n, seconds, keyword_prob in runs:
        done = 0
        while done < n:
            b = min(per_batch, n - done)
            sec = seconds if seconds is not None else float(
                10 + 50 * torch.rand(1, generator=gen, device=draw))
            x, y, truth, cond = make_batch(preset, bank, rirs, gen, sec, b,
                                           cfg.model.patch_size, keyword_prob,
                                           segment_s=preset.eval_segment_s, conditions=True)
            probs, ends = frame_probs(net, x.to(dev), cfg.task.frame_size)
            yield kind, x, y, truth, probs, ends, cond
            done += b


def evaluate(net, cfg, preset: StreamPreset, bank_dir: Path, split: str, dev,
             words: S.WordBank | None = None) -> dict:
    """Frame probabilities and truth of every evaluation stream of a split (fixed seeds);
    keyword splits also keep each stream's conditions (`conditions[kind]`, in stream order)."""
    patch = cfg.model.patch_size
    out = {"pos": [], "neg": [], "pos_seconds": 0.0, "neg_seconds": 0.0,
           "conditions": {"pos": [], "neg": []}}
    correct = counted = 0
    for kind, x, y, truth, probs, ends, cond in eval_batches(net, cfg, preset, bank_dir, split,
                                                             dev, words):
        if cond is not None:
            out["conditions"][kind] += list(zip(cond.noise, cond.snr_db, cond.room,
                                                strict=True))
        tgt = y[:, [e // patch - 1 for e in ends]].cpu().numpy()
        pred = probs.argmax(-1)
        m = tgt != S.IGNORE
        correct += int((pred[m] == tgt[m]).sum())
        counted += int(m.sum())
        for i in range(x.shape[0]):
            out[kind].append((probs[i], np.array(ends), truth[i]))
        out[f"{kind}_seconds"] += x.shape[0] * x.shape[1] / cfg.task.sample_rate
    out["frame_accuracy"] = round(correct / max(counted, 1), 4)
    out["streams"] = len(out["pos"]) + len(out["neg"])
    return out


def score(preset: StreamPreset, cfg, data: dict, threshold: float, min_on_ms: float = 0.0,
          onset_lag_ms: float = 0.0, label_on: dict[int, float] | None = None) -> dict:
    names = cfg.class_names()
    st = settings_for(float(threshold), preset.hysteresis, preset.holdoff_ms, watched_labels(cfg),
                      cfg.task.sample_rate, min_on_ms, onset_lag_ms, label_on,
                      preset.changes_only)
    rate = cfg.task.sample_rate
    pos_events = detect_many([(p, e) for p, e, _ in data["pos"]], st, names)
    pos = [(ev, truth) for ev, (_, _, truth) in zip(pos_events, data["pos"], strict=True)]
    if preset.kind == "kws":
        neg = detect_many([(p, e) for p, e, _ in data["neg"]], st, names)
        return kws_summary(pos, neg, data["neg_seconds"], data["pos_seconds"], names, rate)
    return ecg_summary(pos, data["pos_seconds"], names, rate)


#: SNR bands of the keyword streams' condition tables (dB, [lo, hi))
SNR_BANDS = ((0.0, 10.0), (10.0, 20.0), (20.0, 30.01))


def snr_band_name(band: tuple[float, float]) -> str:
    """"10-20 dB": how tables name an SNR band (the last one's open end printed as 30)."""
    lo, hi = band
    return f"{lo:.0f}-{min(hi, 30):.0f} dB"


def _cell(noise: str, snr_db: float) -> str:
    """A condition table's cell: "pink, 10-20 dB", or "quiet" (no SNR)."""
    if np.isnan(snr_db):
        return noise
    return f"{noise}, {snr_band_name(next(b for b in SNR_BANDS if snr_db < b[1]))}"


def by_condition(preset: StreamPreset, cfg, data: dict, threshold: float,
                 min_on_ms: float = 0.0, onset_lag_ms: float = 0.0,
                 label_on: dict[int, float] | None = None) -> dict:
    """Keywords: where the detector misses and false-alarms at one setting. Keyword streams
    by background (white / pink / babble x SNR band, or near-silent "quiet"), and dry / through a
    room, and by keyword: keywords, detected, false rejection. Non-keyword streams by
    background: false alarms and hours. Needs the split's conditions (`evaluate` keeps them)."""
    names, watched = cfg.class_names(), watched_labels(cfg)
    st = settings_for(float(threshold), preset.hysteresis, preset.holdoff_ms, watched,
                      cfg.task.sample_rate, min_on_ms, onset_lag_ms, label_on)
    rate = cfg.task.sample_rate
    conds = data["conditions"]
    pos_events = detect_many([(p, e) for p, e, _ in data["pos"]], st, names)
    cells: dict[str, dict] = {}
    by_label: dict[str, dict] = {}

    def add(table: dict, key: str, n: int, d: int) -> None:
        c = table.setdefault(key, {"keywords": 0, "detected": 0})
        c["keywords"] += n
        c["detected"] += d

    for events, (_, _, truth), (noise, snr, room) in zip(pos_events, data["pos"], conds["pos"],
                                                          strict=True):
        n, d, _, _ = kws_match(events, truth, names, rate)
        add(cells, _cell(S.NOISE_KINDS[noise], snr), n, d)
        add(cells, "through a room" if room else "dry", n, d)
        add(cells, "all", n, d)
        for k in {w.label for w in truth if w.label in watched}:  # labels match independently
            add(by_label, names[k], *kws_match([e for e in events if e["label"] == names[k]],
                                               [w for w in truth if w.label == k], names,
                                               rate)[:2])
    for c in [*cells.values(), *by_label.values()]:
        c["false_rejection_rate"] = round(1 - c["detected"] / max(c["keywords"], 1), 4)
    neg_events = detect_many([(p, e) for p, e, _ in data["neg"]], st, names)
    alarms: dict[str, dict] = {}
    hours_each = data["neg_seconds"] / 3600 / max(len(data["neg"]), 1)  # one length per split
    for events, (noise, _, _) in zip(neg_events, conds["neg"], strict=True):
        a = alarms.setdefault(S.NOISE_KINDS[noise], {"false_alarms": 0, "hours": 0.0})
        a["false_alarms"] += len(events)
        a["hours"] += hours_each
    for a in alarms.values():
        a["hours"] = round(a["hours"], 3)
        a["false_alarms_per_hour"] = round(a["false_alarms"] / max(a["hours"], 1e-9), 3)
    return {"threshold": float(threshold), "keyword_streams": dict(sorted(cells.items())),
            "by_keyword": {names[k]: by_label[names[k]] for k in watched if names[k] in by_label},
            "non_keyword_streams": dict(sorted(alarms.items()))}


#: the environments a keyword card gives operating points for (backgrounds of NOISE_KINDS):
#: the near-silent floor, and a background at 0-30 dB SNR
ENVIRONMENTS = {"quiet": ("quiet",), "noisy": ("white", "pink", "babble")}


def environment(data: dict, kinds: tuple[str, ...]) -> dict:
    """The streams of an evaluated split (`evaluate`'s dict) whose background is one of
    `kinds`, as a dict of the same shape: `score` and `choose` take it as they take a split.
    Seconds are shared out by each stream's last frame end (exact for the equal-length
    non-keyword streams)."""
    out: dict = {"conditions": {}}
    for k in ("pos", "neg"):
        idx = [i for i, c in enumerate(data["conditions"][k]) if S.NOISE_KINDS[c[0]] in kinds]
        ends = [float(ends[-1]) if len(ends) else 0.0 for _, ends, _ in data[k]]
        out[k] = [data[k][i] for i in idx]
        out["conditions"][k] = [data["conditions"][k][i] for i in idx]
        out[f"{k}_seconds"] = data[f"{k}_seconds"] * sum(ends[i] for i in idx) / max(
            sum(ends), 1e-9)
    return out
