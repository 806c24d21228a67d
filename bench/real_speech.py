"""The shipped keyword models on real recorded speech (`model.data.real_speech`: Asterisk's
prompts, ~25 min per language: English by Allison Smith, and as non-English non-keyword speech
French, Italian, Russian and Spanish by other speakers where their Debian packages are
installed), which no training or choice has seen. CPU, about 12 minutes for all five.

    python -m bench.real_speech [--out bench/model_eval/real_speech.json] [--cards]
    python -m bench.real_speech --cards-only   # the cards' section from the existing JSON

- kws-events-s4d, false alarms: every prompt whose transcript holds no keyword, back to back
  with GAP_S of a near-silent floor between them, as one stream through the batch path's
  detector (`model.events.detect`, the model's own settings and a few other thresholds):
  events per hour of that audio, with a Poisson 95 % interval.
- kws-events-s4d, keywords: every English prompt whose transcript says a keyword, alone (GAP_S
  before, TAIL_S after, for the detector's lag): found iff an event of that keyword fires.
- kws-s4d: the keyword-free prompts cut into 1 s windows (what the model classifies): the share
  called a keyword, `unknown`, `silence`.
False alarms and windows are counted per language.
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
SOURCE = ("recordings of Asterisk's core prompts (Debian `asterisk-core-sounds-<language>-g722`, "
          "CC-BY-SA-3.0, G.722 decoded at 16 kHz; `model/data/real_speech.py`), English by "
          "Allison Smith")
LANGUAGES = {"fr": "Canadian French (June Wallack)", "it": "Italian (Carlo Flora)",
             "ru": "Russian (IvrvoiceRU)", "es": "Mexican Spanish (Allison Smith)"}


def floor(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    return (10 ** (FLOOR_DBFS / 20) * rng.standard_normal(int(seconds * rate))).astype(np.float32)


def poisson_ci(k: int, hours: float) -> list[float]:
    """95 % interval of a rate per hour from k events (`evaluation.poisson_rate_interval`),
    rounded for the JSON and the cards."""
    from model.evaluation import poisson_rate_interval

    return [round(v, 2) for v in poisson_rate_interval(k, hours)]


def frame_probabilities(net, cfg, x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """What a stream's detector sees for one recording: probabilities at every frame end."""
    from model.stream_eval import frame_probs

    with torch.no_grad():
        probs, ends = frame_probs(net, torch.from_numpy(x)[None, :, None], cfg.task.frame_size)
    return probs[0], ends


def events_at(cfg, probs: np.ndarray, ends: list[int], threshold: float) -> list[dict]:
    """The events the batch path reports for those frames: the model's detector settings with
    the on-threshold replaced (the hysteresis kept, capped at half the threshold)."""
    from model.events import DetectorSettings, detect

    events_cfg = cfg.task.events
    hysteresis = min(events_cfg.threshold - events_cfg.off_threshold, threshold / 2)
    events_cfg = events_cfg.model_copy(update=dict(threshold=threshold, hysteresis=hysteresis))
    settings = DetectorSettings.from_config(events_cfg, cfg.class_names(), cfg.task.sample_rate)
    return detect(cfg.class_names(), settings, ends, probs)


def shown(checkpoint: Path) -> str:
    return str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint)


def thresholds(cfg) -> tuple[float, ...]:
    """The model's own threshold first, then the others of THRESHOLDS."""
    default = cfg.task.events.threshold
    return (default, *[t for t in THRESHOLDS if t != default])


def false_alarms(net, cfg, negatives: list[dict], rng: np.random.Generator, rate: int) -> dict:
    """Keyword-free prompts back to back (GAP_S of floor between) as one stream: events per
    hour at each threshold, and the prompts they fired in."""
    parts, starts, at = [], [], 0
    for p in negatives:
        gap = floor(rng, GAP_S, rate)
        parts += [gap, p["wav"]]
        starts.append(at + len(gap))
        at += len(gap) + len(p["wav"])
    x = np.concatenate(parts + [floor(rng, TAIL_S, rate)])
    hours = len(x) / rate / 3600
    stream = frame_probabilities(net, cfg, x)
    out = dict(prompts=len(negatives), hours=round(hours, 4), by_threshold={})
    for t in thresholds(cfg):
        events = events_at(cfg, *stream, t)
        where = np.searchsorted(np.asarray(starts), [e["offset"] for e in events], "right") - 1
        out["by_threshold"][f"{t:g}"] = dict(
            false_alarms=len(events), per_hour=round(len(events) / hours, 2),
            per_hour_ci95=poisson_ci(len(events), hours),
            labels=sorted({e["label"] for e in events}),
            prompts=sorted({negatives[max(i, 0)]["name"] for i in where})[:12])
    return out


def events_model(by_language: dict[str, list[dict]], checkpoint: Path, rate: int) -> dict:
    """kws-events-s4d: false alarms on each language's keyword-free prompts; on the English
    prompts that say a keyword, the keywords found (each prompt alone)."""
    from model.checkpoint import load_checkpoint

    net, cfg = load_checkpoint(checkpoint, device=torch.device("cpu"))
    net.eval()
    rng = np.random.default_rng(0)
    english = by_language["en"]
    out = dict(checkpoint=shown(checkpoint), default_threshold=cfg.task.events.threshold)
    neg = false_alarms(net, cfg, [p for p in english if not p["keywords"]], rng, rate)
    positives = [p for p in english if p["keywords"]]
    alone = [frame_probabilities(net, cfg, np.concatenate(
        [floor(rng, GAP_S, rate), p["wav"], floor(rng, TAIL_S, rate)])) for p in positives]
    out.update(negative_prompts=neg["prompts"], negative_hours=neg["hours"],
               keyword_prompts=len(positives),
               keywords=sum(len(p["keywords"]) for p in positives), by_threshold={})
    for t in thresholds(cfg):
        found, wrong = 0, 0
        for p, frames in zip(positives, alone, strict=True):
            labels = {e["label"] for e in events_at(cfg, *frames, t)}
            found += len(labels & set(p["keywords"]))
            wrong += len(labels - set(p["keywords"]))
        out["by_threshold"][f"{t:g}"] = dict(
            neg["by_threshold"][f"{t:g}"], keywords_found=found,
            keywords_missed_pct=round(100 * (1 - found / out["keywords"]), 1),
            wrong_label_events_in_keyword_prompts=wrong)
    out["other_languages"] = {
        lang: false_alarms(net, cfg, [p for p in prompts if not p["keywords"]], rng, rate)
        for lang, prompts in by_language.items() if lang != "en"}
    return out


def one_second_windows(prompts: list[dict], rate: int) -> list[np.ndarray]:
    """The keyword-free prompts cut into 1 s windows (a last piece >= 0.25 s is padded)."""
    windows = []
    for p in prompts:
        if p["keywords"]:
            continue
        for s in range(0, len(p["wav"]), rate):
            piece = p["wav"][s:s + rate]
            if len(piece) >= rate // 4:
                windows.append(np.pad(piece, (0, rate - len(piece))))
    return windows


def clip_model(by_language: dict[str, list[dict]], checkpoint: Path, rate: int) -> dict:
    """kws-s4d on 1 s windows of each language's keyword-free prompts."""
    from model.checkpoint import load_checkpoint
    from model.evaluation import predict_probs

    net, cfg = load_checkpoint(checkpoint, device=torch.device("cpu"))
    net.eval()
    names = cfg.class_names()
    out = dict(checkpoint=shown(checkpoint))
    for lang, prompts in by_language.items():
        windows = one_second_windows(prompts, rate)
        x = torch.from_numpy(np.stack(windows)).unsqueeze(-1)
        pred = predict_probs(net, x, torch.device("cpu")).argmax(1)
        keyword = np.isin(pred, [names.index(c) for c in names if c not in ("unknown", "silence")])
        res = dict(windows=len(windows), keyword_pct=round(100 * float(keyword.mean()), 1),
                   unknown_pct=round(100 * float(np.mean(pred == names.index("unknown"))), 1),
                   silence_pct=round(100 * float(np.mean(pred == names.index("silence"))), 1),
                   by_class={names[k]: int(n) for k, n in zip(*np.unique(pred, return_counts=True))})
        if lang == "en":
            out.update(res)
        else:
            out.setdefault("other_languages", {})[lang] = res
    return out


def events_section(r: dict) -> str:
    """The kws-events card's section: false alarms on real non-keyword speech, keywords found."""
    e = r["events"]
    lines = [f"## Real recorded speech (`{COMMAND}`, CPU)",
             f"Real speakers, never used for training or for any choice: {SOURCE}; "
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
    others = e.get("other_languages", {})
    if others:
        t = f"{e['default_threshold']:g}"
        lines += ["", "Non-English real speech (the same prompts read by other speakers; prompts "
                  "whose transcript holds a keyword as a word, e.g. Spanish \"no\", left out), "
                  f"at the default threshold {t}:", "",
                  "| speech | minutes | false alarms / h (95 % CI; events) | labels fired |",
                  "| --- | --- | --- | --- |"]
        for lang, o in others.items():
            v = o["by_threshold"][t]
            lines.append(f"| {LANGUAGES.get(lang, lang)} | {60 * o['hours']:.1f} | "
                         f"{v['per_hour']} ({v['per_hour_ci95'][0]}-{v['per_hour_ci95'][1]}; "
                         f"{v['false_alarms']}) | {', '.join(v['labels']) or '-'} |")
    lines += ["", "Real speech by voices it never heard raises false alarms far above the "
              "synthesized test streams' rate, and keywords said inside running phrases (mostly "
              "short function words: on, no, left) are mostly missed: the detector was trained on "
              "keywords spoken as words of their own."]
    return "\n".join(lines)


def clips_section(r: dict) -> str:
    """The kws-s4d card's section: 1 s windows of real non-keyword speech."""
    c = r["clips"]
    names = list(c["by_class"])
    for o in c.get("other_languages", {}).values():
        names += [k for k in o["by_class"] if k not in names]
    rows = [("English (Allison Smith)", c)] + [(LANGUAGES.get(lang, lang), o) for lang, o in
                                               c.get("other_languages", {}).items()]
    return "\n".join([
        f"## Real recorded speech (`{COMMAND}`, CPU)",
        f"Real speakers, never used for training or for any choice: {SOURCE}. The English "
        f"prompts whose transcript holds no keyword ({r['events']['negative_prompts']}), cut into "
        f"{c['windows']} windows of 1 s: **{c['keyword_pct']} % fire a keyword**, "
        f"{c['unknown_pct']} % are called unknown, {c['silence_pct']} % silence (synthesized "
        "test phrases: see `phrases -> keyword` above); the same prompts read in other "
        "languages by other speakers below. Windows per predicted class:",
        "", "| speech | windows | fire a keyword | " + " | ".join(names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
        *[f"| {who} | {o['windows']} | {o['keyword_pct']} % | "
          + " | ".join(str(o["by_class"].get(k, 0)) for k in names) + " |" for who, o in rows]])


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
    reason = real_speech.unavailable_reason("en")
    if reason:
        raise SystemExit(reason)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    by_language = {lang: real_speech.prompts(KEYWORDS, lang) for lang in real_speech.SPEAKERS
                   if not real_speech.unavailable_reason(lang)}
    prompts = by_language["en"]
    rate = real_speech.SAMPLE_RATE
    minutes = {lang: round(sum(len(p["wav"]) for p in ps) / rate / 60, 2)
               for lang, ps in by_language.items()}
    result = dict(source=SOURCE,
                  speakers={lang: real_speech.SPEAKERS[lang] for lang in by_language},
                  prompts=len(prompts), minutes=minutes["en"],
                  other_languages={lang: dict(prompts=len(ps), minutes=minutes[lang],
                                              with_keywords=sum(1 for p in ps if p["keywords"]))
                                   for lang, ps in by_language.items() if lang != "en"},
                  keyword_prompts={p["name"]: p["keywords"] for p in prompts if p["keywords"]},
                  events=events_model(by_language, args.events, rate),
                  clips=clip_model(by_language, args.clips, rate))
    result["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "keyword_prompts"}, indent=1))
    if args.cards:
        write_cards(result)


if __name__ == "__main__":
    main()
