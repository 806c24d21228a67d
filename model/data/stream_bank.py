"""Source material for long training/evaluation streams (model/data/streams.py), made here
once and carried to a GPU box that has neither espeak-ng's wheel nor scipy / neurokit2:

- word renditions (clean, trimmed, 16 kHz int16) from `kws._speak`, by split (voices never
  cross splits), keywords and non-keywords;
- room impulse responses from pyroomacoustics (small shoebox rooms, as `kws._room`);
- ECG windows (10 s, 250 Hz) from `ecg.generate`, the public window generator, by split.

`python -m model.data.stream_bank OUT_DIR` writes words.npz, rirs.npz, ecg.npz (float16 /
int16, compressed). Everything is seeded; the same command gives the same files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

#: renditions per word and split (keywords, non-keywords); small: the bank is carried (MiB)
WORDS_PER_SPLIT = {"train": (60, 10), "val": (12, 3), "test": (20, 4)}
#: ECG windows per split
ECG_PER_SPLIT = {"train": 500, "val": 150, "test": 300}
ECG_SEED = 1  # not the seed of ecg-s4d's training data
N_RIRS = 120
SPLITS = ("train", "val", "test")


def build_words(out: Path) -> None:
    from . import kws

    code = {"train": 0, "val": 1, "test": 2}
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        n_kw, n_unk = WORDS_PER_SPLIT[split]
        pool = kws.voices(split)
        rng = np.random.default_rng([7, code[split]])
        waves, labels, words = [], [], []
        plan = [(w, i) for i, w in enumerate(kws.KEYWORDS) for _ in range(n_kw)]
        plan += [(w, 10) for w in kws.UNKNOWN_WORDS for _ in range(n_unk)]
        for word, label in plan:
            wav = np.zeros(0, np.float32)
            while len(wav) == 0:
                wav = kws._speak(rng, word, pool[rng.integers(len(pool))])
            waves.append(np.round(np.clip(wav, -1, 1) * 32767).astype(np.int16))
            labels.append(label)
            words.append(word)
        lengths = np.array([len(w) for w in waves], np.int64)
        arrays[f"{split}_audio"] = np.concatenate(waves)
        arrays[f"{split}_lengths"] = lengths
        arrays[f"{split}_labels"] = np.array(labels, np.int64)
        arrays[f"{split}_words"] = np.array(words)
    np.savez_compressed(out / "words.npz", **arrays)


def build_rirs(out: Path) -> None:
    import pyroomacoustics as pra

    rng = np.random.default_rng(11)
    rirs = np.zeros((N_RIRS, 4000), np.float32)  # 250 ms at 16 kHz
    for i in range(N_RIRS):
        dims = rng.uniform([3.0, 2.5, 2.4], [8.0, 6.0, 3.5])
        room = pra.ShoeBox(dims, fs=16000, materials=pra.Material(float(rng.uniform(0.15, 0.7))),
                           max_order=int(rng.integers(3, 12)))
        room.add_source(rng.uniform(0.5, dims - 0.5))
        room.add_microphone(rng.uniform(0.5, dims - 0.5))
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], np.float64)[:4000]
        rirs[i, : len(rir)] = rir / max(np.abs(rir).max(), 1e-9)
    np.savez_compressed(out / "rirs.npz", rirs=rirs.astype(np.float16))


def build_ecg(out: Path, workers: int = 2) -> None:
    from . import ecg

    arrays = {}
    for split in SPLITS:
        x, y = ecg.generate(split, ECG_PER_SPLIT[split], ECG_SEED, workers=workers)
        arrays[f"{split}_x"] = x.astype(np.float16)
        arrays[f"{split}_y"] = y
    np.savez_compressed(out / "ecg.npz", **arrays)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else ".cache/stream15")
    out.mkdir(parents=True, exist_ok=True)
    parts = argv[1].split(",") if len(argv) > 1 else ["words", "rirs", "ecg"]
    for part in parts:
        t = time.time()
        {"words": build_words, "rirs": build_rirs, "ecg": build_ecg}[part](out)
        print(f"{part}: {time.time() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
