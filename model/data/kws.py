"""Keyword-spotting clips (1 s, 16 kHz) synthesized offline with espeak-ng.

Words are spoken by espeak-ng voices (8 English dialects x ~100 voice variants) at random
speed and pitch, then augmented so a model has to generalise beyond one clean synthesizer:
random placement in the 1 s window, small simulated rooms (pyroomacoustics) for a fraction
of clips, white / pink / babble noise at 0-30 dB SNR and random gain. "silence" is noise
only, at a level well below speech. Voices are split by a hash of their identity
(dialect+variant), so a voice never appears in two splits and the split of a voice never
changes when voices are added. Every clip has its own seed, so output is deterministic.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from multiprocessing import get_context

import numpy as np
from scipy.signal import fftconvolve, resample_poly

from . import espeak

CLASSES = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "unknown", "silence",
)  # fmt: skip
KEYWORDS = CLASSES[:10]
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "backward", "forward", "follow", "learn", "visual", "hello", "window", "water",
    "yellow", "number",
)  # fmt: skip
SAMPLE_RATE = 16000
CLIP = SAMPLE_RATE
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
ROOM_PROB = 0.3
NOISE_PROB = 0.85
CHUNK = 400  # clips per fresh worker process


def voice_split(voice: str) -> str:
    """Stable split of a voice identity: ~10% test, ~10% val, rest train."""
    bucket = int(hashlib.sha1(voice.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


@lru_cache(maxsize=3)
def voices(split: str) -> tuple[str, ...]:
    """Voice identities (dialect+variant) belonging to one split."""
    if split not in SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}")
    return tuple(v for v in espeak.all_voices() if voice_split(v) == split)


def _speak(rng: np.random.Generator, word: str, voice: str) -> np.ndarray:
    """One rendition at 16 kHz, trimmed of leading/trailing silence, peak-normalised."""
    wav, sr = espeak.synthesize(
        word, voice, rate=rng.integers(110, 231), pitch=rng.integers(15, 86),
        pitch_range=rng.integers(20, 91), seed=int(rng.integers(2**31)),
    )  # fmt: skip
    wav = resample_poly(wav, 320, 441) if sr == 22050 else resample_poly(wav, SAMPLE_RATE, sr)
    peak = np.abs(wav).max(initial=0.0)
    if peak < 1e-4:
        return np.zeros(0, np.float32)
    active = np.flatnonzero(np.abs(wav) > 0.02 * peak)
    wav = wav[max(active[0] - 160, 0) : active[-1] + 160] / peak
    if len(wav) > CLIP - 800:  # very slow renditions: keep the start, fade the cut
        wav = wav[: CLIP - 800] * np.concatenate([np.ones(CLIP - 1120), np.linspace(1, 0, 320)])
    return wav.astype(np.float32)


def shoebox_rir(rng: np.random.Generator) -> np.ndarray:
    """The impulse response (float64, 16 kHz) of a random small shoebox room: every room of
    the keyword data (clips, streams, the training mixer) is drawn here."""
    import pyroomacoustics as pra

    dims = rng.uniform([3.0, 2.5, 2.4], [8.0, 6.0, 3.5])
    room = pra.ShoeBox(
        dims, fs=SAMPLE_RATE, materials=pra.Material(float(rng.uniform(0.15, 0.7))),
        max_order=int(rng.integers(3, 12)),
    )  # fmt: skip
    room.add_source(rng.uniform(0.5, dims - 0.5))
    room.add_microphone(rng.uniform(0.5, dims - 0.5))
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=np.float64)


def _room(rng: np.random.Generator, wav: np.ndarray) -> np.ndarray:
    """Convolve with the impulse response of a random small shoebox room."""
    out = fftconvolve(wav, shoebox_rir(rng))[: CLIP - 160]
    return (out / max(np.abs(out).max(), 1e-9)).astype(np.float32)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise by spectral shaping of white noise."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1.0))
    return np.fft.irfft(spec, n)


def _babble(rng: np.random.Generator, split: str) -> np.ndarray:
    """Several overlapping words from other voices of the same split (keeps splits clean)."""
    out = np.zeros(CLIP)
    pool = voices(split)
    words = KEYWORDS + UNKNOWN_WORDS
    for _ in range(int(rng.integers(3, 7))):
        w = _speak(rng, words[rng.integers(len(words))], pool[rng.integers(len(pool))])
        if len(w):
            start = int(rng.integers(-len(w) // 2, CLIP - len(w) // 2))
            lo, hi = max(start, 0), min(start + len(w), CLIP)
            out[lo:hi] += rng.uniform(0.3, 1.0) * w[lo - start : hi - start]
    return out


def _noise(rng: np.random.Generator, split: str, kind: str) -> np.ndarray:
    """Unit-RMS noise of the given kind."""
    if kind == "white":
        x = rng.standard_normal(CLIP)
    elif kind == "pink":
        x = _pink(rng, CLIP)
    else:
        x = _babble(rng, split)
    return x / max(np.sqrt(np.mean(x**2)), 1e-9)


def _word_clip(rng: np.random.Generator, split: str, word: str, voice: str) -> np.ndarray:
    wav = _speak(rng, word, voice)
    while len(wav) == 0:  # a voice produced nothing audible: another rendition
        wav = _speak(rng, word, voice)
    if rng.random() < ROOM_PROB:
        wav = _room(rng, wav)
    start = int(rng.integers(0, CLIP - len(wav) + 1))
    clip = np.zeros(CLIP)
    clip[start : start + len(wav)] = wav
    if rng.random() < NOISE_PROB:
        kind = ("white", "pink", "babble")[rng.integers(3)]
        speech_rms = np.sqrt(np.mean(wav.astype(np.float64) ** 2))
        snr_db = rng.uniform(0, 30)
        clip += _noise(rng, split, kind) * speech_rms * 10 ** (-snr_db / 20)
    peak_db = rng.uniform(-26, -1)
    return clip * (10 ** (peak_db / 20) / max(np.abs(clip).max(), 1e-9))


def _silence_clip(rng: np.random.Generator, split: str) -> np.ndarray:
    kind = ("white", "pink", "babble", "floor")[rng.integers(4)]
    if kind == "floor":  # near-digital silence (dithered)
        return rng.standard_normal(CLIP) * 10 ** (rng.uniform(-90, -70) / 20)
    top = -45 if kind == "babble" else -40
    return _noise(rng, split, kind) * 10 ** (rng.uniform(-75, top) / 20)


def labels_for(n: int, seed: int, code: int) -> np.ndarray:
    """Balanced labels in a seeded random order."""
    y = np.arange(n) % len(CLASSES)
    return np.random.default_rng([code, seed, 1 << 30]).permutation(y).astype(np.int64)


def _chunk(args: tuple[str, int, int, int, int]) -> tuple[np.ndarray, list[str]]:
    """Clips start..stop-1 of one request; runs in a fresh process (see `generate`)."""
    split, n, seed, start, stop = args
    code = SPLIT_CODE[split]
    y = labels_for(n, seed, code)
    pool = voices(split)
    x = np.zeros((stop - start, CLIP), np.float32)
    used: list[str] = []
    for row, i in enumerate(range(start, stop)):
        rng = np.random.default_rng([code, seed, i])
        name = CLASSES[y[i]]
        if name == "silence":
            x[row] = _silence_clip(rng, split)
            used.append("")
            continue
        word = UNKNOWN_WORDS[rng.integers(len(UNKNOWN_WORDS))] if name == "unknown" else name
        voice = pool[rng.integers(len(pool))]
        x[row] = np.clip(_word_clip(rng, split, word, voice), -1.0, 1.0)
        used.append(voice)
    return x, used


def generate_with_voices(
    split: str, n: int, seed: int, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Like `generate`, also returning the voice of each clip ("" for silence).

    espeak-ng output depends on what the process synthesized before, so every fixed-size
    chunk of clips is made in a fresh spawned process: output is bit-exact for given
    arguments and independent of `workers`.
    """
    y = labels_for(n, seed, SPLIT_CODE[split])
    jobs = [(split, n, seed, s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs), 16))
    if not jobs:
        return np.zeros((0, CLIP), np.float32), y, []
    with get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        parts = pool.map(_chunk, jobs, chunksize=1)
    return np.concatenate([p[0] for p in parts]), y, [v for p in parts for v in p[1]]


def generate(split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return x float32 [n, 16000] in [-1, 1] and y int64 [n]; deterministic in (split, n, seed)."""
    x, y, _ = generate_with_voices(split, n, seed)
    return x, y


def load(split: str, n: int, seed: int, cache_dir: str = ".cache/data") -> tuple[np.ndarray, np.ndarray]:
    """`generate` with an on-disk .npz cache."""
    from .cache import cached

    return cached("kws", split, n, seed, lambda: generate(split, n, seed), cache_dir, version="1")
