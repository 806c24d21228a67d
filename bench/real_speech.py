"""The shipped keyword models on real recorded speech (`model.data.real_speech`: Allison Smith's
Asterisk prompts, one US English speaker, ~25 min), which no training or choice has seen.

    python -m bench.real_speech [--out bench/model_eval/real_speech.json] [--cards]
    python -m bench.real_speech --cards-only   # the cards' section from the existing JSON

- kws-events-s4d, false alarms: every prompt whose transcript holds no keyword, back to back
  with GAP_S of a near-silent floor between them, as one stream through the batch path's
  detector (`model.events.detect`, the model's own settings and a few other thresholds):
  events per hour of that audio, with a Poisson 95 % interval.
- kws-events-s4d, keywords: every prompt whose transcript says a keyword, alone (GAP_S before,
  TAIL_S after, for the detector's lag): found iff an event of that keyword fires.
- kws-s4d: the keyword-free prompts cut into 1 s windows (what the model classifies): the share
  called a keyword, `unknown`, `silence`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GAP_S, TAIL_S = 0.5, 1.0
FLOOR_DBFS = -70.0  # RMS of the white floor between prompts (a quiet room, not digital zero)
THRESHOLDS = (0.9, 0.99, 0.999, 0.9998)
BEGIN, END = "<!-- real_speech:begin -->", "<!-- real_speech:end -->"
COMMAND = "python -m bench.real_speech --cards"
SOURCE = ("Allison Smith's recordings of Asterisk's core prompts (Debian "
          "`asterisk-core-sounds-en-g722`, CC-BY-SA-3.0, G.722 decoded at 16 kHz; "
          "`model/data/real_speech.py`)")


def floor(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    return (10 ** (FLOOR_DBFS / 20) * rng.standard_normal(int(seconds * rate))).astype(np.float32)


def poisson_ci(k: int, hours: float) -> list[float]:
    """95 % interval of a rate per hour from k events (exact, chi-square)."""
    from scipy.stats import chi2

    lo = chi2.ppf(0.025, 2 * k) / 2 if k else 0.0
    return [round(lo / hours, 2), round(chi2.ppf(0.975, 2 * k + 2) / 2 / hours, 2)]


def stream_events(net, cfg, x: np.ndarray, threshold: float | None) -> list[dict]:
    """The events the batch path reports for one recording (the model's detector settings, the
    on-threshold replaced where given)."""
    from model.events import DetectorSettings, detect
    from model.stream_eval import frame_probs

    events_cfg = cfg.task.events
    if threshold is not None:
        hysteresis = events_cfg.threshold - events_cfg.off_threshold
        events_cfg = events_cfg.model_copy(update=dict(threshold=threshold,
                                                       hysteresis=min(hysteresis, threshold / 2)))
    settings = DetectorSettings.from_config(events_cfg, cfg.class_names(), cfg.task.sample_rate)
    with torch.no_grad():
        probs, ends = frame_probs(net, torch.from_numpy(x)[None, :, None], cfg.task.frame_size)
    return detect(cfg.class_names(), settings, ends, probs[0])


def events_model(prompts: list[dict], checkpoint: Path, rate: int) -> dict:
    from model.checkpoint import load_checkpoint

    net, cfg = load_checkpoint(checkpoint, device=torch.device("cpu"))
    net.eval()
    rng = np.random.default_rng(0)
    negatives = [p for p in prompts if not p["keywords"]]
    parts, starts = [], []
    for p in negatives:
        parts.append(floor(rng, GAP_S, rate))
        starts.append(sum(len(q) for q in parts))
        parts.append(p["wav"])
    x = np.concatenate(parts + [floor(rng, TAIL_S, rate)])
    hours = len(x) / rate / 3600
    positives = [p for p in prompts if p["keywords"]]
    padded = [np.concatenate([floor(rng, GAP_S, rate), p["wav"], floor(rng, TAIL_S, rate)])
              for p in positives]
    out = dict(checkpoint=str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT)
                              else checkpoint),
               default_threshold=cfg.task.events.threshold,
               negative_prompts=len(negatives), negative_hours=round(hours, 4),
               keyword_prompts=len(positives),
               keywords=sum(len(p["keywords"]) for p in positives), by_threshold={})
    for threshold in (None, *[t for t in THRESHOLDS if t != cfg.task.events.threshold]):
        t = cfg.task.events.threshold if threshold is None else threshold
        events = stream_events(net, cfg, x, threshold)
        where = np.searchsorted(np.asarray(starts), [e["offset"] for e in events], "right") - 1
        fired_in = [negatives[max(i, 0)]["name"] for i in where]
        found, wrong = 0, 0
        for p, xp in zip(positives, padded, strict=True):
            labels = {e["label"] for e in stream_events(net, cfg, xp, threshold)}
            found += len(labels & set(p["keywords"]))
            wrong += len(labels - set(p["keywords"]))
        out["by_threshold"][f"{t:g}"] = dict(
            false_alarms=len(events), per_hour=round(len(events) / hours, 2),
            per_hour_ci95=poisson_ci(len(events), hours),
            labels=sorted({e["label"] for e in events}),
            prompts=sorted(set(fired_in))[:12],
            keywords_found=found, keywords_missed_pct=round(100 * (1 - found / out["keywords"]), 1),
            wrong_label_events_in_keyword_prompts=wrong)
    return out


def clip_model(prompts: list[dict], checkpoint: Path, rate: int) -> dict:
    """kws-s4d on 1 s windows of the keyword-free prompts (a last piece >= 0.25 s is padded)."""
    from model.checkpoint import load_checkpoint
    from model.evaluation import predict_probs

    net, cfg = load_checkpoint(checkpoint, device=torch.device("cpu"))
    net.eval()
    windows = []
    for p in prompts:
        if p["keywords"]:
            continue
        w = p["wav"]
        for s in range(0, len(w), rate):
            piece = w[s:s + rate]
            if len(piece) >= rate // 4:
                windows.append(np.pad(piece, (0, rate - len(piece))))
    x = torch.from_numpy(np.stack(windows)).unsqueeze(-1)
    pred = predict_probs(net, x, torch.device("cpu")).argmax(1)
    names = cfg.class_names()
    keyword = np.isin(pred, [names.index(c) for c in names if c not in ("unknown", "silence")])
    counts = {names[k]: int(n) for k, n in zip(*np.unique(pred, return_counts=True))}
    return dict(checkpoint=str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT)
                               else checkpoint),
                windows=len(windows), keyword_pct=round(100 * float(keyword.mean()), 1),
                unknown_pct=round(100 * float(np.mean(pred == names.index("unknown"))), 1),
                silence_pct=round(100 * float(np.mean(pred == names.index("silence"))), 1),
                by_class=counts)


def events_section(r: dict) -> str:
    """The kws-events card's section: false alarms on real non-keyword speech, keywords found."""
    e = r["events"]
    lines = [f"## Real recorded speech (`{COMMAND}`, CPU)",
             f"One real speaker, never used for training or for any choice: {SOURCE}; "
             f"{r['prompts']} prompts, {r['minutes']} min. The {e['negative_prompts']} prompts "
             f"whose transcript holds no keyword run back to back as one stream "
             f"({60 * e['negative_hours']:.1f} min, {GAP_S} s of a {FLOOR_DBFS:.0f} dBFS floor "
             f"between prompts); the {e['keyword_prompts']} that say a keyword "
             f"({e['keywords']} keywords, inside phrases such as \"No more messages.\" or "
             "\"...has left the conference.\") run one by one.", "",
             "| threshold | false alarms / h (95 % CI) | keywords in phrases missed | "
             "events of another label in those prompts |", "| --- | --- | --- | --- |"]
    for t, v in sorted(e["by_threshold"].items(), key=lambda kv: float(kv[0])):
        mark = " (default)" if float(t) == e["default_threshold"] else ""
        lines.append(f"| {t}{mark} | {v['per_hour']} ({v['per_hour_ci95'][0]}-"
                     f"{v['per_hour_ci95'][1]}; {v['false_alarms']} events) | "
                     f"{v['keywords_missed_pct']} % ({e['keywords'] - v['keywords_found']} of "
                     f"{e['keywords']}) | {v['wrong_label_events_in_keyword_prompts']} |")
    lines += ["", "Real speech by a voice it never heard raises false alarms far above the "
              "synthesized test streams' rate, and keywords said inside running phrases (mostly "
              "short function words: on, no, left) are mostly missed: the detector was trained on "
              "keywords spoken as words of their own."]
    return "\n".join(lines)


def clips_section(r: dict) -> str:
    """The kws-s4d card's section: 1 s windows of real non-keyword speech."""
    c = r["clips"]
    return "\n".join([
        f"## Real recorded speech (`{COMMAND}`, CPU)",
        f"One real speaker, never used for training or for any choice: {SOURCE}. The prompts "
        f"whose transcript holds no keyword ({r['events']['negative_prompts']}), cut into "
        f"{c['windows']} windows of 1 s: **{c['keyword_pct']} % fire a keyword**, "
        f"{c['unknown_pct']} % are called unknown, {c['silence_pct']} % silence (synthesized "
        "test phrases: see `phrases -> keyword` above).",
        "", "| " + " | ".join(c["by_class"]) + " |",
        "| " + " | ".join("---" for _ in c["by_class"]) + " |",
        "| " + " | ".join(str(n) for n in c["by_class"].values()) + " |"])


def write_cards(r: dict) -> None:
    from scripts.eval_data13 import write_card

    write_card(ROOT / "checkpoints" / "kws-events-s4d" / "CARD.md", events_section(r), BEGIN, END)
    write_card(ROOT / "checkpoints" / "kws-s4d" / "CARD.md", clips_section(r), BEGIN, END)


def main() -> None:
    from model.data import real_speech
    from model.data.kws import KEYWORDS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=Path, default=ROOT / "checkpoints" / "kws-events-s4d")
    ap.add_argument("--clips", type=Path, default=ROOT / "checkpoints" / "kws-s4d")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "model_eval" / "real_speech.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cards", action="store_true", help="write the two cards' section too")
    ap.add_argument("--cards-only", action="store_true", help="the cards from the existing JSON")
    args = ap.parse_args()
    if args.cards_only:
        write_cards(json.loads(args.out.read_text()))
        return
    reason = real_speech.unavailable_reason()
    if reason:
        raise SystemExit(reason)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    prompts = real_speech.prompts(KEYWORDS)
    rate = real_speech.SAMPLE_RATE
    result = dict(source="Asterisk core prompts, Allison Smith (Debian asterisk-core-sounds-en-g722, "
                  "CC-BY-SA-3.0), G.722 decoded at 16 kHz", prompts=len(prompts),
                  minutes=round(sum(len(p["wav"]) for p in prompts) / rate / 60, 2),
                  keyword_prompts={p["name"]: p["keywords"] for p in prompts if p["keywords"]},
                  events=events_model(prompts, args.events, rate),
                  clips=clip_model(prompts, args.clips, rate))
    result["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "keyword_prompts"}, indent=1))
    if args.cards:
        write_cards(result)


if __name__ == "__main__":
    main()
