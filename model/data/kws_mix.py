"""1 s keyword-spotting clips from the clean utterance bank (`kws_bank`), augmented.

Per clip (every clip has its own seed, so a set is deterministic in its arguments and does not
depend on the number of worker processes):
- speed perturbation 0.85-1.15 (resampling: tempo and pitch move together, as in Kaldi),
- optionally (`formants=(lo, hi)`, training sets) formants moved by a factor drawn
  log-uniformly from [lo, hi] with the pitch kept (`model.data.voice`): new vocal tracts,
- a simulated shoebox room (pyroomacoustics) for 30 % of clips,
- random placement in the 1 s window (a time shift; long phrases are cropped at random),
- white, pink or babble noise (other utterances of the same pool; `babble="non-keyword"`
  draws them from its unknown words and phrases only, so that no second keyword speaks under
  the labelled one) at 0-30 dB SNR for 85 % (training sets may draw another range and share:
  `noise=(lo_db, hi_db, prob)`),
- gain: peak level -26..-1 dBFS.
`silence` = noise only, -90..-40 dBFS; `unknown` = a non-keyword word of the pool.
Set kinds: "words" (balanced 12 classes), "phrases" (1 s of a sentence without keywords,
label unknown), "noise" (label silence, levels up to -20 dBFS, louder than training).
"""

from __future__ import annotations

import os
from multiprocessing import get_context

import numpy as np

from .kws import CLASSES, CLIP, SAMPLE_RATE

KEYWORD_INDEX = {w: i for i, w in enumerate(CLASSES[:10])}
UNKNOWN, SILENCE = CLASSES.index("unknown"), CLASSES.index("silence")
ROOM_PROB, NOISE_PROB = 0.3, 0.85
SPEED = (0.85, 1.15)  # speed perturbation factor range
PEAK_DB = (-26.0, -1.0)  # a speech clip's peak level, dBFS
#: (SNR low dB, high dB, share of speech clips with noise): the test sets' setting, the default
TEST_NOISE = (0.0, 30.0, NOISE_PROB)
NOISE_KINDS = ("white", "pink", "babble")  # background noise, one drawn per noisy clip
_POOL: dict = {}


def _speed(rng: np.random.Generator, wav: np.ndarray) -> np.ndarray:
    factor = rng.uniform(*SPEED)
    n = max(2, int(round(len(wav) / factor)))
    return np.interp(np.linspace(0, len(wav) - 1, n), np.arange(len(wav)), wav)


def _room(rng: np.random.Generator, wav: np.ndarray) -> np.ndarray:
    from .kws import _room as kws_room

    return kws_room(rng, wav)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1.0))
    return np.fft.irfft(spec, n)


def _babble(rng: np.random.Generator, pool: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(CLIP)
    for _ in range(int(rng.integers(3, 7))):
        w = pool[rng.integers(len(pool))]
        start = int(rng.integers(-len(w) // 2, CLIP - len(w) // 2))
        lo, hi = max(start, 0), min(start + len(w), CLIP)
        if hi > lo:
            out[lo:hi] += rng.uniform(0.3, 1.0) * w[lo - start : hi - start]
    return out


def _noise(rng: np.random.Generator, pool: list[np.ndarray], drawn: dict | None = None):
    """Unit-RMS background of a kind drawn from NOISE_KINDS (`drawn["noise"]`: its index)."""
    k = int(rng.integers(len(NOISE_KINDS)))
    if drawn is not None:
        drawn["noise"] = k
    kind = NOISE_KINDS[k]
    x = (rng.standard_normal(CLIP) if kind == "white" else _pink(rng, CLIP) if kind == "pink"
         else _babble(rng, pool))
    return x / max(np.sqrt(np.mean(x**2)), 1e-9)


def _shift_formants(rng: np.random.Generator, wav: np.ndarray, lo: float, hi: float):
    import torch

    from .voice import shift_formants

    alpha = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return shift_formants(torch.from_numpy(wav)[None], torch.tensor([alpha]))[0].numpy()


def _speech_clip(rng: np.random.Generator, wav: np.ndarray, pool: list[np.ndarray],
                 formants: tuple[float, float] | None = None,
                 voice_rng: np.random.Generator | None = None,
                 drawn: dict | None = None,
                 noise: tuple[float, float, float] = TEST_NOISE) -> np.ndarray:
    """One augmented clip; `drawn` (if given) records the room, the SNR and the noise kind it
    drew. `noise`: SNR range in dB and the share of clips that get noise (the same draws for
    any values)."""
    drawn = {} if drawn is None else drawn
    wav = wav.astype(np.float64)
    if formants is not None:  # its own random stream: the other draws stay as without it
        wav = _shift_formants(voice_rng, wav, *formants)
    wav = _speed(rng, wav)
    drawn["room"] = bool(rng.random() < ROOM_PROB)
    if drawn["room"]:
        wav = _room(rng, wav)
    if len(wav) > CLIP:  # a phrase: a random 1 s of it
        start = int(rng.integers(0, len(wav) - CLIP + 1))
        wav = wav[start : start + CLIP]
    clip = np.zeros(CLIP)
    start = int(rng.integers(0, CLIP - len(wav) + 1))
    clip[start : start + len(wav)] = wav
    drawn["snr_db"] = drawn["noise"] = None
    lo_db, hi_db, noise_prob = noise
    if rng.random() < noise_prob:
        rms = np.sqrt(np.mean(wav**2))
        background = _noise(rng, pool, drawn)
        drawn["snr_db"] = float(rng.uniform(lo_db, hi_db))
        clip += background * rms * 10 ** (-drawn["snr_db"] / 20)
    return clip * (10 ** (rng.uniform(*PEAK_DB) / 20) / max(np.abs(clip).max(), 1e-9))


def _silence_clip(rng: np.random.Generator, pool: list[np.ndarray], top_db: float,
                  drawn: dict | None = None) -> np.ndarray:
    """Noise only, RMS level in dBFS drawn up to `top_db`; `drawn` (if given) records the
    level and the noise kind (None: near-digital silence)."""
    drawn = {} if drawn is None else drawn
    drawn["noise"] = None
    if rng.random() < 0.2:  # near-digital silence (dither)
        x = rng.standard_normal(CLIP)
        drawn["level_db"] = float(rng.uniform(-90, -70))
    else:
        x = _noise(rng, pool, drawn)
        drawn["level_db"] = float(rng.uniform(-75, top_db))
    return x * 10 ** (drawn["level_db"] / 20)


def _make(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    kind, code, seed, start, stop, formants, silence_top_db, noise, babble = args
    if silence_top_db is None:
        silence_top_db = -20.0 if kind == "noise" else -40.0
    rows = _POOL["rows"]
    by_text = _POOL["by_text"]
    waves = [r["wav"] for r in rows if babble == "any" or r["kind"] != "keyword"]
    x = np.zeros((stop - start, CLIP), np.float32)
    y = np.zeros(stop - start, np.int64)
    cond = np.full((stop - start, 4), np.nan, np.float32)  # SNR, room, noise kind, level
    source = np.full(stop - start, -1, np.int64)  # each clip's row of `rows` (-1: silence)
    for k, i in enumerate(range(start, stop)):
        rng = np.random.default_rng([code, seed, i])
        if kind == "noise":
            label = SILENCE
        elif kind == "phrases":
            label = UNKNOWN
        else:
            label = i % len(CLASSES)
        if label == SILENCE:
            drawn = {}
            clip = _silence_clip(rng, waves, silence_top_db, drawn)
            cond[k, 2:] = (np.nan if drawn["noise"] is None else drawn["noise"], drawn["level_db"])
        else:
            if kind == "phrases":
                cands = by_text["__phrase__"]
            elif label == UNKNOWN:
                cands = by_text["__unknown__"]
            else:
                cands = by_text[CLASSES[label]]
            drawn: dict = {}
            source[k] = cands[rng.integers(len(cands))]
            row = rows[source[k]]
            clip = _speech_clip(rng, row["wav"], waves,
                                formants, np.random.default_rng([code, seed, i, 1 << 20]), drawn,
                                noise)
            cond[k, :3] = (np.nan if drawn["snr_db"] is None else drawn["snr_db"],
                           drawn["room"], np.nan if drawn["noise"] is None else drawn["noise"])
        x[k] = np.clip(clip, -1.0, 1.0)
        y[k] = label
    return x, y, cond, source


def _init_worker(rows: list[dict]) -> None:
    """A pool process: one torch thread (the formant shift runs in torch), then the rows."""
    import torch

    torch.set_num_threads(1)
    _init(rows)


def _init(rows: list[dict]) -> None:
    by_text: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        key = r["text"] if r["kind"] == "keyword" else f"__{r['kind']}__"
        by_text.setdefault(key, []).append(i)
    _POOL.update(rows=rows, by_text=by_text)


def make_clips(rows: list[dict], n: int, seed: int, kind: str = "words", code: int = 0,
               workers: int | None = None, chunk: int = 250,
               formants: tuple[float, float] | None = None,
               silence_top_db: float | None = None, conditions: bool = False,
               noise: tuple[float, float, float] | None = None, texts: bool = False,
               babble: str = "any", sources: bool = False) -> tuple:
    """n augmented clips float32 [n, 16000] in [-1, 1] and labels from the bank `rows`
    (already filtered to the engines / splits / kinds wanted); classes are balanced and
    then shuffled with the seed. `formants=(lo, hi)`: every speech clip's formants move by a
    factor in [lo, hi] (training sets; None leaves the set exactly as before).
    `noise=(lo_db, hi_db, prob)`: speech clips get noise with probability prob at an SNR
    drawn from [lo_db, hi_db] (None: 0-30 dB for 85 %, the test setting).
    `silence_top_db`: the loudest `silence` (noise-only) level in dBFS; None: -40 for words,
    -20 for the "noise" test set (louder than training). `conditions`: also return what each
    clip drew, float32 [n, 4]: SNR in dB (nan: no noise added), room (1) or not (0), the
    noise's index in NOISE_KINDS (nan: none) and, for `silence` clips only (SNR and room nan),
    their RMS level in dBFS (their kind nan: near-digital silence). `texts`: also return what
    each clip says, a str array [n] (the word or phrase; "" for silence), after the conditions
    if both are asked for. `sources`:
    also return each clip's utterance, int64 [n] indices into `rows` (-1 for silence), last.
    `babble`: "any" (default) mixes babble from every utterance of `rows`, "non-keyword" from
    its unknown words and phrases only (every other draw stays the same)."""
    if babble not in ("any", "non-keyword"):
        raise ValueError(f"babble must be 'any' or 'non-keyword', not {babble!r}")
    noise = noise or TEST_NOISE
    jobs = [(kind, code, seed, s, min(s + chunk, n), formants, silence_top_db, noise, babble)
            for s in range(0, n, chunk)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs), 16))
    if workers == 1:
        _init(rows)
        parts = [_make(j) for j in jobs]
    else:
        with get_context("fork").Pool(workers, initializer=_init_worker, initargs=(rows,)) as pool:
            parts = pool.map(_make, jobs, chunksize=1)
    x = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, CLIP), np.float32)
    y = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    cond = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, 4), np.float32)
    source = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int64)
    order = np.random.default_rng([code, seed, 1 << 30]).permutation(n)
    out = (x[order], y[order])
    if conditions:
        out += (cond[order],)
    if texts:  # what each clip says, read off its source row
        out += (np.array([rows[i]["text"] if i >= 0 else "" for i in source[order]], dtype=str),)
    if sources:
        out += (source[order],)
    return out


def select(rows: list[dict], engines=None, splits=None, kinds=None) -> list[dict]:
    """Bank rows of the given engines / splits / kinds (None = all)."""
    return [r for r in rows if (engines is None or r["engine"] in engines)
            and (splits is None or r["split"] in splits) and (kinds is None or r["kind"] in kinds)]


__all__ = ["make_clips", "select", "SAMPLE_RATE"]
