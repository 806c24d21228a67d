"""Thin ctypes driver for the espeak-ng shared library shipped in the `espeakng-loader` wheel.

The wheel bundles `libespeak-ng.so` and `espeak-ng-data` (no binary, no apt), which keeps
keyword-spotting data generation offline and installable from PyPI alone.
"""

from __future__ import annotations

import ctypes
import os
import threading
from functools import lru_cache

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
# English dialects in espeak-ng-data/lang/gmw (en-Shaw is a spelling system, not an accent).
ACCENTS = (
    "en",
    "en-us",
    "en-us-nyc",
    "en-029",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-gb-x-rp",
)


class _Engine:
    """Process-wide espeak-ng instance; the C library keeps global state, hence the lock."""

    def __init__(self) -> None:
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0
        )
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int
    ) -> np.ndarray:
        with self.lock:
            self._chunks = []
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng voice not found: {voice}")
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self.lib.espeak_SetParameter(_RANGE, int(pitch_range), 0)
            raw = text.encode()
            if self.lib.espeak_Synth(raw, len(raw) + 1, 0, _POS_CHARACTER, 0, 0, None, None):
                raise RuntimeError(f"espeak_Synth failed for {text!r}")
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0


_ENGINE: _Engine | None = None


def engine() -> _Engine:
    """The engine for this process (re-created after fork, since C state is per process)."""
    global _ENGINE
    if _ENGINE is None or _ENGINE.pid != os.getpid():
        _ENGINE = _Engine()
    return _ENGINE


@lru_cache(maxsize=1)
def variants() -> tuple[str, ...]:
    """Voice variants (`voices/!v`), plus "" for the plain dialect voice."""
    import espeakng_loader

    root = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    names = sorted(v for v in os.listdir(root) if " " not in v and not v.startswith("."))
    return ("", *names)


def all_voices() -> tuple[str, ...]:
    """Every voice identity: accent + variant, e.g. `en-gb-scotland+f2`."""
    return tuple(f"{a}+{v}" if v else a for a in ACCENTS for v in variants())


def synthesize(
    text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Speak `text`; returns (float32 mono in [-1, 1], sample rate).

    Caveat: espeak-ng keeps synthesis state (pitch/flutter phases, buffers) in C globals
    that survive espeak_Terminate, so a rendition depends on what the process spoke
    before. Callers that need bit-exact output run a fixed call sequence in a fresh
    process (see `kws.generate`).
    """
    eng = engine()
    return eng.say(text, voice, rate, pitch, pitch_range, seed), eng.sample_rate
