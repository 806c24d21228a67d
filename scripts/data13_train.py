"""Issue 13 training runs (called by scripts/gpu_train_data13.sh; SMOKE=1 for a tiny CPU run).

    prep-kws  augmented 1 s clip sets from the utterance bank (.cache/data13/kws_*.flac)
    kws RUN   RUN = all | loeo-<engine> (espeak, flite, festival, mbrola, pico): train on the
              engines of RUN, evaluate on its test set (all: test voices of all engines; loeo-E: every
              voice of the held-out engine E), on non-keyword phrases and on noise
    ecg       template-generator train/val/test, plus the shifted test set (ECGSYN) and the
              MIT-BIH 208 rate-band check from .cache/data13/ecg_bank.npz

Validation picks the epoch; the test sets select nothing. Each run writes <out>/<run>/
(config.json, model.safetensors, metrics.json) and <out>/<run>/extra_metrics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.data.kws_bank import ENGINE_NAMES, ENGINES  # noqa: E402

# epochs are upper bounds: train(deadline=) fits the count (and the cosine) to the time box
FULL = dict(kws_train=5000, kws_val=400, kws_test=600, kws_heldout=1200, kws_phrases=300,
            kws_noise=600, kws_epochs=24, ecg_train=8000, ecg_val=1000, ecg_test=1000,
            ecg_epochs=30)
SMOKE = dict(kws_train=36, kws_val=24, kws_test=24, kws_heldout=24, kws_phrases=12,
             kws_noise=12, kws_epochs=1, ecg_train=30, ecg_val=15, ecg_test=15, ecg_epochs=1)
SMOKE_MODEL = dict(d_model=16, d_state=8, n_layers=1)
KWS_DESCRIPTION = ("Keyword spotting on 1 s of raw 16 kHz audio, trained on speech synthesized "
                   f"by {', '.join(ENGINE_NAMES[e] for e in ENGINES[:-1])} and "
                   f"{ENGINE_NAMES[ENGINES[-1]]}")
ECG_DESCRIPTION = ("Rhythm class of a 10 s single-lead ECG at 250 Hz in mV, trained on "
                   "simulated ECGs (Gaussian-wave beat templates)")


def sizes(smoke: bool) -> dict:
    return SMOKE if smoke else FULL


def _save(work: Path, name: str, x: np.ndarray, y: np.ndarray) -> None:
    np.save(work / f"{name}_x.npy", x)
    np.save(work / f"{name}_y.npy", y)


def _load(work: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(work / f"{name}_x.npy", mmap_mode="r"), np.load(work / f"{name}_y.npy")


def prep_kws(args) -> None:
    from model.data import kws_mix
    from model.data.kws_bank import composition, first_pass, load_bank, validate_on

    n = dict(sizes(args.smoke))
    n.update({k: v for k, v in (("kws_train", args.n_train), ("kws_val", args.n_val)) if v})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = validate_on(load_bank(Path(args.bank)), args.validate_on or [])
    formants = tuple(float(v) for v in args.formants.split(",")) if args.formants else None
    noise = tuple(float(v) for v in args.train_noise.split(",")) if args.train_noise else None
    if noise is not None and len(noise) != 3:
        raise SystemExit("--train-noise takes LO_DB,HI_DB,PROB")
    t0 = time.time()
    made = {}
    for e_i, e in enumerate(ENGINES):
        sets = {
            f"train_{e}": (dict(splits=("train",), kinds=("keyword", "unknown")), n["kws_train"],
                           "words"),
            f"val_{e}": (dict(splits=("val",), kinds=("keyword", "unknown")), n["kws_val"],
                         "words"),
            f"test_{e}": (dict(splits=("test",), kinds=("keyword", "unknown")), n["kws_test"],
                          "words"),
            f"heldout_{e}": (dict(kinds=("keyword", "unknown")), n["kws_heldout"], "words"),
            f"phrases_{e}": (dict(splits=("test",), kinds=("phrase",)), n["kws_phrases"],
                             "phrases"),
            # the validation voices' phrases, where the bank has them (`--val-phrases`)
            f"valphrases_{e}": (dict(splits=("val",), kinds=("phrase",)), n["kws_phrases"],
                                "phrases"),
        }
        for s_i, (name, (flt, count, kind)) in enumerate(sets.items()):
            if args.sets and name.split("_")[0] not in args.sets:
                continue
            pool = kws_mix.select(rows, engines=(e,), **flt)
            if name.startswith("heldout_"):  # every voice, as rendered in a one-pass bank
                pool = [r for r in pool if first_pass(r)]
            if not pool:  # pico has no val voice (festival: rab_diphone since the contrib voices)
                continue
            train = name.startswith("train_")
            x, y, said = kws_mix.make_clips(
                pool, count, seed=0, kind=kind, code=100 + 10 * e_i + s_i, workers=args.workers,
                formants=formants if train else None, texts=True,
                silence_top_db=args.silence_top_db if train else None,
                noise=noise if train else None)
            _save(work, name, x, y)
            np.save(work / f"{name}_texts.npy", said)  # what each clip says: phone targets
            made[name] = len(y)
    if not args.sets or "noise" in args.sets:
        test_pool = kws_mix.select(rows, splits=("test",))
        x, y = kws_mix.make_clips(test_pool, n["kws_noise"], seed=0, kind="noise", code=199,
                                  workers=args.workers)
        _save(work, "noise", x, y)
        made["noise"] = len(y)
    made["n_train"] = n["kws_train"]  # clips per engine (an online-mix epoch, if not prepared)
    made["formants"] = formants  # training clips only
    made["silence_top_db"] = args.silence_top_db  # training clips only (None: -40 dBFS)
    made["train_noise"] = noise  # training clips only (None: 0-30 dB SNR for 85 %)
    made["bank"] = composition(rows)  # passes and vocabulary beyond the one-pass plan
    made["validate_on"] = args.validate_on  # training voices made validation voices, if any
    (work / "kws_sets.json").write_text(json.dumps(made) + "\n")
    print(f"prep-kws: {made} in {time.time() - t0:.0f}s", flush=True)


def _split(x, y):
    from model.train import make_split

    return make_split(np.ascontiguousarray(x, dtype=np.float32), y)


def _present(work: Path, names: list[str]) -> list[str]:
    """The sets of `names` that prep made (Pico has no validation voice)."""
    return [nm for nm in names if (work / f"{nm}_y.npy").exists()]


def _concat(work: Path, names: list[str]):
    parts = [_load(work, nm) for nm in _present(work, names)]
    return (np.concatenate([np.asarray(p[0]) for p in parts]),
            np.concatenate([p[1] for p in parts]))


def _eval_sets(net, config, dev, sets: dict[str, tuple[np.ndarray, np.ndarray]],
               preds: dict | None = None) -> dict:
    """Summary per set; `preds` (if given) receives each set's predicted class per clip."""
    import torch

    from model.evaluation import predict_probs, summarize

    names = config.class_names()
    out = {}
    for name, (x, y) in sets.items():
        xt = torch.from_numpy(np.array(x, dtype=np.float32))
        probs = predict_probs(net, xt if xt.ndim == 3 else xt.unsqueeze(-1), dev)
        s = summarize(probs, y, names)
        pred = probs.argmax(1)
        if preds is not None:
            preds[name] = pred
        s["predicted_share"] = {nm: round(float((pred == i).mean()), 4)
                                for i, nm in enumerate(names) if (pred == i).any()}
        if "silence" in names:  # keyword spotting: how often a keyword fires, how often silence
            s["keyword_rate"] = round(float((pred < names.index("unknown")).mean()), 4)
            s["silence_rate"] = round(float((pred == names.index("silence")).mean()), 4)
        out[name] = s
    return out


def heard_engines(checkpoint: Path) -> list[str]:
    """Engines a kws checkpoint was trained on (the first kws-s4d predates the list: espeak-ng)."""
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    return list(cfg["training"].get("engines") or ["espeak"])


def descends_from_first(training: dict) -> bool:
    """Whether a kws run's weights go back, by fine-tuning, to the first kws-s4d (espeak-ng only,
    trained on all 30 unknown words). Recorded at training time; older runs are read through
    their start folder, and all of them descended from it when that folder is gone."""
    if "descends_from_first" in training:
        return bool(training["descends_from_first"])
    init = training.get("init_from")
    if not init:
        return False
    start = ROOT / init.split(" ")[0]
    if not (start / "config.json").exists():
        return True
    start_training = json.loads((start / "config.json").read_text())["training"]
    return not start_training.get("engines") or descends_from_first(start_training)


def pick_init(candidates: list[str] | None, held: str | None) -> str | None:
    """The first candidate that never heard the held-out engine (None: train from scratch)."""
    for c in candidates or []:
        if held is None or held not in heard_engines(Path(c)):
            return c
    return None


def _online_mixer(args, sets_meta: dict, engines: list[str]):
    """The training source of `--online-mix`: the prep's training distribution (its noise and
    silence settings, its validation fold) drawn afresh per batch on the training device from
    the bank's clean training utterances (a refit: and the validation voices'; their prepared
    clips join too); an epoch is as long as the prep's training set."""
    from model.data import kws_mix
    from model.data.kws_bank import load_bank, validate_on
    from model.data.online_mix import OnlineMixer

    rows = validate_on(load_bank(Path(args.bank)), sets_meta.get("validate_on") or [])
    splits = ("train", "val") if args.refit_on_val else ("train",)  # a refit: val voices too
    by_engine = {e: kws_mix.select(rows, engines=(e,), splits=splits,
                                   kinds=("keyword", "unknown")) for e in engines}
    noise = sets_meta.get("train_noise")
    top_db = sets_meta.get("silence_top_db")
    per_engine = int(sets_meta.get("n_train") or sets_meta.get(f"train_{engines[0]}"))
    return OnlineMixer(by_engine, per_engine * len(engines), device=args.device, seed=0,
                       noise=tuple(noise) if noise else kws_mix.TEST_NOISE,
                       silence_top_db=-40.0 if top_db is None else top_db,
                       n_rooms=args.rooms, workers=args.workers)


def run_kws(args) -> None:
    import torch

    from model.checkpoint import load_checkpoint
    from model.tasks import PRESETS
    from model.train import train

    n = sizes(args.smoke)
    work = Path(args.work)
    held = None if args.run == "all" else args.run.split("-", 1)[1]
    engines = [e for e in ENGINES if e != held]
    init_from = pick_init(args.init_from, held)
    if args.phone_ctc and args.online_mix:
        raise SystemExit("--phone-ctc needs prepared training clips (their texts), not --online-mix")
    sets_meta = json.loads((work / "kws_sets.json").read_text())
    data = {
        "train": (_online_mixer(args, sets_meta, engines) if args.online_mix
                  else _split(*_concat(work, [f"train_{e}" for e in engines]))),
        "val": _split(*_concat(work, [f"val_{e}" for e in engines])),
        "test": _split(*_concat(work, [f"test_{e}" for e in ENGINES] if held is None
                                else [f"heldout_{held}"])),
    }
    if args.phone_ctc:  # each clip's phones, for the auxiliary CTC loss (val: for a refit)
        from model.data.phones import ctc_targets

        for split in ("train", "val"):
            names = _present(work, [f"{split}_{e}" for e in engines])  # _concat's order
            said = np.concatenate([np.load(work / f"{nm}_texts.npy") for nm in names])
            data[split].phones = torch.from_numpy(ctc_targets(said))
    overrides = dict(epochs=args.epochs or n["kws_epochs"], n_train=len(data["train"]),
                     n_val=len(data["val"]), n_test=len(data["test"]), shift_augment=0,
                     lr=args.lr, warmup_epochs=args.warmup_epochs,
                     refit_on_val=args.refit_on_val or None, front_end=args.front_end,
                     patch_size=args.patch_size, n_mels=args.n_mels, dropout=args.dropout,
                     time_mask=args.time_mask,
                     channel_mask=args.channel_mask, d_model=args.d_model,
                     n_layers=args.n_layers, batch_size=args.batch_size,
                     ctc_weight=args.phone_ctc)
    if init_from and (args.front_end or args.patch_size or args.n_mels or args.d_model
                      or args.dropout is not None or args.n_layers):
        raise SystemExit("--front-end / --patch-size / --n-mels / --d-model / --n-layers make "
                         "a new architecture: no --init-from")
    if args.smoke and not init_from:
        overrides.update(SMOKE_MODEL)
    preset = PRESETS["kws"].with_overrides(**overrides)
    out = Path(args.out) / (args.run_name or f"kws-{args.run}")
    formants = sets_meta.get("formants")
    knobs = " ".join(f"{k}={v}" for k, v in (("N_TRAIN", len(data["train"]) // len(engines)),
                                              ("FORMANTS", formants and f"{formants[0]:g},{formants[1]:g}"),
                                              ("EPOCHS", args.epochs),
                                              ("REFIT", 1 if args.refit_on_val else None),
                                              ("LR", args.lr), ("KWS_INIT", init_from),
                                              ("FRONT_END", args.front_end),
                                              ("PATCH", args.patch_size),
                                              ("N_MELS", args.n_mels),
                                              ("DROPOUT", args.dropout),
                                              ("TIME_MASK", args.time_mask),
                                              ("CHANNEL_MASK", args.channel_mask),
                                              ("D_MODEL", args.d_model),
                                              ("N_LAYERS", args.n_layers),
                                              ("BATCH", args.batch_size),
                                              ("PHONE_CTC", args.phone_ctc),
                                              ("ONLINE_MIX", 1 if args.online_mix else None),
                                              ("SILENCE_TOP_DB", sets_meta.get("silence_top_db")),
                                              ("TRAIN_NOISE", sets_meta.get("train_noise") and
                                               ",".join(f"{v:g}" for v in sets_meta["train_noise"])))
                     if v is not None)
    command = (f"{knobs} bash scripts/gpu_train_data13.sh   # scripts/data13_train.py kws "
               f"--run {args.run}" if args.device == "cuda" else "python " + " ".join(sys.argv))
    metrics = train(preset, out, device=args.device, data=data, progress=False, command=command,
                    deadline=args.deadline, seed=0, init_from=init_from)
    cfg_path = out / "config.json"  # which engines it heard (the cards and eval read this)
    cfg = json.loads(cfg_path.read_text())
    cfg["training"]["engines"] = engines
    if init_from:  # what the start had heard, as it was then (the folder may be replaced later)
        cfg["training"]["init_engines"] = heard_engines(Path(init_from))
    cfg["training"]["descends_from_first"] = descends_from_first(cfg["training"])
    cfg["training"]["formants"] = formants  # training clips' formant shift range, if any
    cfg["training"]["silence_top_db"] = sets_meta.get("silence_top_db")  # None: -40 dBFS
    cfg["training"]["train_noise"] = sets_meta.get("train_noise")  # None: 0-30 dB for 85 %
    cfg["training"]["bank"] = sets_meta.get("bank")  # None: a one-pass bank (older preps)
    cfg["training"]["validate_on"] = sets_meta.get("validate_on")  # moved training voices
    if args.online_mix:  # training clips drawn afresh per batch (model/data/online_mix.py)
        cfg["training"]["online_mix"] = dict(rooms=args.rooms, clips_per_epoch=len(data["train"]))
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    if args.skip_extra:  # scripts/eval_data13.py measures phrases / noise / engines instead
        return
    net, config = load_checkpoint(out, device=torch.device(args.device))
    sets = {"phrases": _concat(work, [f"phrases_{e}" for e in ([held] if held else ENGINES)]),
            "noise": _load(work, "noise")}
    val_phrases = [f"valphrases_{e}" for e in engines]
    if _present(work, val_phrases):  # the training engines' validation voices saying VAL_PHRASES
        sets["val_phrases"] = _concat(work, val_phrases)
    if held is None:
        sets.update({f"test_{e}": _load(work, f"test_{e}") for e in ENGINES})
    extra = _eval_sets(net, config, torch.device(args.device), sets)
    extra["run"] = dict(name=args.run, train_engines=engines, held_out_engine=held,
                        test_set="test voices of all engines" if held is None
                        else f"every voice of {held} (never trained on)",
                        n_train=len(data["train"]), n_val=len(data["val"]))
    extra["metrics"] = metrics
    (out / "extra_metrics.json").write_text(json.dumps(extra, indent=1) + "\n")
    print(f"kws {args.run}: test {metrics['test_accuracy']:.4f} ece {metrics['test_ece']:.4f}; "
          f"phrases->keyword {extra['phrases']['keyword_rate']:.3f}"
          + (f" (validation phrases {extra['val_phrases']['keyword_rate']:.3f})"
             if "val_phrases" in extra else "") + "; "
          f"noise->silence {extra['noise']['accuracy']:.3f}", flush=True)


def run_ecg(args) -> None:
    import torch

    from model.checkpoint import load_checkpoint
    from model.data import ecg
    from model.data.rpeaks import model_band, rate_band
    from model.tasks import PRESETS
    from model.train import train

    n = sizes(args.smoke)
    t0 = time.time()
    for split in ("train", "val"):  # CPU runs at reduced scale (--n-train / --n-val)
        n = dict(n, **{f"ecg_{split}": getattr(args, f"n_{split}") or n[f"ecg_{split}"]})
    data = {split: _split(*ecg.generate_template(split, n[f"ecg_{split}"], seed=0,
                                                 workers=args.workers))
            for split in ("train", "val", "test")}
    if args.beat_aux:  # per-step R-peak targets for the training windows (an auxiliary loss)
        patch = PRESETS["ecg"].model["patch_size"]
        data["train"].aux = torch.from_numpy(
            ecg.template_beat_steps("train", n["ecg_train"], seed=0, patch=patch))
    gen_s = time.time() - t0
    print(f"ecg: generated {[len(v) for v in data.values()]} windows in {gen_s:.0f}s", flush=True)
    overrides = dict(epochs=args.epochs or n["ecg_epochs"], n_train=len(data["train"]),
                     n_val=len(data["val"]), n_test=len(data["test"]), batch_size=64, lr=args.lr,
                     warmup_epochs=args.warmup_epochs, aux_weight=args.beat_aux)
    init_from = args.init_from[0] if args.init_from else None
    if args.smoke and not init_from:
        overrides.update(SMOKE_MODEL)
    preset = PRESETS["ecg"].with_overrides(**overrides)
    out = Path(args.out) / (args.run_name or "ecg")
    command = "python " + " ".join(sys.argv)  # as run (gpu_train_data13.sh or by hand)
    metrics = train(preset, out, device=args.device, data=data, progress=False, seed=0,
                    command=command, deadline=args.deadline, init_from=init_from)
    cfg_path = out / "config.json"  # which template generator made its windows
    cfg = json.loads(cfg_path.read_text())
    cfg["training"]["template_version"] = ecg.TEMPLATE_VERSION
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    dev = torch.device(args.device)
    net, config = load_checkpoint(out, device=dev)
    with np.load(Path(args.bank) / "ecg_bank.npz") as b:
        shift_x, shift_y = b["shift_x"].astype(np.float32), b["shift_y"]
        mit_x, mit_hr = b["mitbih_x"], b["mitbih_hr"]
    if args.smoke:
        shift_x, shift_y = shift_x[:20], shift_y[:20]
    extra = _eval_sets(net, config, dev, {"shift": (shift_x, shift_y)})
    from model.evaluation import predict_probs

    probs = predict_probs(net, torch.from_numpy(mit_x).unsqueeze(-1), dev)
    names = config.class_names()
    labels = [names[i] for i in probs.argmax(1)]
    rows = [dict(window=k, start_s=10 * k, detector_bpm=round(float(hr), 1),
                 detector_band=rate_band(hr), model_label=lab, model_band=model_band(lab),
                 p=round(float(probs[k].max()), 3))
            for k, (hr, lab) in enumerate(zip(mit_hr, labels, strict=True))]
    agree = float(np.mean([r["detector_band"] == r["model_band"] for r in rows]))
    extra["mitbih208"] = dict(windows=rows, agreement=round(agree, 4),
                              agreement_excluding_95_105_bpm=round(float(np.mean(
                                  [r["detector_band"] == r["model_band"] for r in rows
                                   if not 95 <= r["detector_bpm"] <= 105] or [np.nan])), 4))
    extra["generation_s"] = round(gen_s, 1)
    extra["metrics"] = metrics
    (out / "extra_metrics.json").write_text(json.dumps(extra, indent=1) + "\n")
    print(f"ecg: test {metrics['test_accuracy']:.4f} ece {metrics['test_ece']:.4f}; shift "
          f"{extra['shift']['accuracy']:.4f}; MIT-BIH 208 band agreement {agree:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("prep-kws", "kws", "ecg"))
    ap.add_argument("--run", default="all", choices=("all", *(f"loeo-{e}" for e in ENGINES)))
    ap.add_argument("--bank", default=str(ROOT / ".cache" / "data13"))
    ap.add_argument("--work", default="/tmp/data13")
    ap.add_argument("--out", default="runs/data13")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--deadline", type=float, default=None, help="time.time() to stop training")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--init-from", nargs="+", default=None,
                    help="fine-tune a checkpoint folder: kws takes the first one that never heard "
                         "the run's held-out engine (none: from scratch); ecg the first")
    ap.add_argument("--run-name", default=None, help="output folder name under --out")
    ap.add_argument("--n-train", type=int, default=None,
                    help="ecg: training windows; prep-kws: clips per engine")
    ap.add_argument("--n-val", type=int, default=None, help="validation windows / clips")
    ap.add_argument("--validate-on", nargs="+", default=None, metavar="ENGINE:VOICE",
                    help="prep-kws: training voices that validate instead (k-fold by voice)")
    ap.add_argument("--skip-extra", action="store_true", help="kws: no phrases/noise eval")
    ap.add_argument("--sets", nargs="+", default=None,
                    choices=("train", "val", "test", "heldout", "phrases", "valphrases", "noise"),
                    help="prep-kws: make only these sets (default all)")
    ap.add_argument("--online-mix", action="store_true",
                    help="kws: mix fresh training clips per batch on the device from --bank's "
                         "clean utterances (model/data/online_mix.py), not the prepared ones")
    ap.add_argument("--rooms", type=int, default=512,
                    help="kws --online-mix: simulated room impulse responses to draw from")
    ap.add_argument("--formants", default=None,
                    help="prep-kws: LO,HI formant shift range for the training clips")
    ap.add_argument("--refit-on-val", action="store_true",
                    help="kws: the validation clips join training; the last epoch is kept")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--beat-aux", type=float, default=None, metavar="WEIGHT",
                    help="ecg: add a per-step R-peak loss of this weight (training only)")
    ap.add_argument("--phone-ctc", type=float, default=None, metavar="WEIGHT",
                    help="kws: an auxiliary CTC loss on each clip's phones (model/data/phones.py)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup-epochs", type=float, default=None)
    ap.add_argument("--front-end", choices=("linear", "logmel"), default=None,
                    help="kws from scratch: the patch encoder (model/frontend.py for logmel)")
    ap.add_argument("--patch-size", type=int, default=None, help="kws from scratch: samples "
                    "per step (logmel: 160 = 10 ms patches)")
    ap.add_argument("--n-mels", type=int, default=None, help="kws from scratch, logmel: mel "
                    "bands per patch (default 40)")
    ap.add_argument("--dropout", type=float, default=None, help="kws from scratch")
    ap.add_argument("--d-model", type=int, default=None, help="kws from scratch: width H")
    ap.add_argument("--n-layers", type=int, default=None, help="kws from scratch: S4D layers")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="kws: clips per step (default the preset's 64; scale --lr with it)")
    ap.add_argument("--train-noise", default=None, metavar="LO_DB,HI_DB,PROB",
                    help="prep-kws: training clips' SNR range and noisy share (0,30,0.85)")
    ap.add_argument("--silence-top-db", type=float, default=None,
                    help="prep-kws: loudest noise-only `silence` training clip, dBFS (-40)")
    ap.add_argument("--time-mask", type=int, default=None,
                    help="kws: SpecAugment time masks of up to this many steps (2 per clip)")
    ap.add_argument("--channel-mask", type=int, default=None,
                    help="kws logmel: SpecAugment masks of up to this many mel bands (2 per clip)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    {"prep-kws": prep_kws, "kws": run_kws, "ecg": run_ecg}[args.what](args)


if __name__ == "__main__":
    main()
