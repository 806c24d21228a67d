"""Keyword clips mixed afresh for every training batch, on the training device.

`kws_mix.make_clips` draws each augmented clip once, on the CPU; a prepared training set is then
seen again every epoch with the same noise, room, speed and placement. `OnlineMixer` draws the
same distribution (speed perturbation, a shoebox room for 30 %, placement, white / pink / babble
noise at the set's SNR range, peak gain; `silence` = noise only) from the clean utterances
for every batch, with torch on the device, so no clip is heard twice. Rooms come from a bank
of impulse responses simulated once (pyroomacoustics, the parameters of `kws._room`).

It stands in for the training `Split` of `model.train.train`: `len()`, `batch(idx)` (the
indices only fix the labels and engines: `idx % 12` is the class, `idx // 12 % E` the engine,
so an epoch's permutation stays balanced), and `x` / `y` for the input and feature statistics
(a fixed sample of mixed clips).
"""

from __future__ import annotations

import os
from multiprocessing import get_context

import numpy as np
import torch

from .kws import CLASSES, CLIP, shoebox_rir
from .kws_mix import NOISE_KINDS, PEAK_DB, ROOM_PROB, SPEED, TEST_NOISE

N_CLASSES = len(CLASSES)
UNKNOWN, SILENCE = CLASSES.index("unknown"), CLASSES.index("silence")
BABBLE_WORDS = (3, 6)  # other utterances under a babble background, inclusive
ROOM_OUT = CLIP - 160  # kws._room keeps this much of the reverberant utterance


def room_impulse_response(seed: int) -> np.ndarray:
    """One random small shoebox room's impulse response (`kws.shoebox_rir`), as much of it as
    `kws._room` keeps."""
    return shoebox_rir(np.random.default_rng([seed, 7]))[:ROOM_OUT].astype(np.float32)


def room_bank(n: int, seed: int, workers: int | None = None) -> list[np.ndarray]:
    seeds = [seed * 100_000 + i for i in range(n)]
    workers = max(1, min(workers or os.cpu_count() or 1, 16, n))
    if workers == 1:
        return [room_impulse_response(s) for s in seeds]
    with get_context("fork").Pool(workers) as pool:
        return pool.map(room_impulse_response, seeds, chunksize=8)


def _padded(arrays: list[np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(a) for a in arrays], dtype=torch.long)
    out = torch.zeros(len(arrays), max(int(lengths.max()), 1))
    for i, a in enumerate(arrays):
        out[i, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
    return out.to(device), lengths.to(device)


def _index_table(groups: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged lists of row ids -> [G, K] (padded with 0) and their counts [G]."""
    width = max(max((len(g) for g in groups), default=1), 1)
    table = torch.zeros(len(groups), width, dtype=torch.long)
    for i, g in enumerate(groups):
        table[i, : len(g)] = torch.tensor(g, dtype=torch.long)
    return table.to(device), torch.tensor([len(g) for g in groups], dtype=torch.long).to(device)


class OnlineMixer:
    """Fresh augmented 1 s keyword clips per batch (see the module docstring).

    `rows_by_engine`: each engine's clean training utterances (bank rows with 'wav', 'kind'
    and 'text'; keywords and unknown words), which are also its babble. `n_per_epoch`: the
    epoch's length in clips. `noise` = (SNR low dB, high dB, share of speech clips with noise);
    `silence_top_db`: the loudest noise-only clip; `room_prob`: the share of speech clips in a
    room (impulse responses: `rooms`, else `n_rooms` simulated)."""

    aux = None
    phones = None
    lengths = None

    def __init__(self, rows_by_engine: dict[str, list[dict]], n_per_epoch: int,
                 device: str | torch.device = "cpu", seed: int = 0,
                 noise: tuple[float, float, float] = TEST_NOISE, silence_top_db: float = -40.0,
                 n_rooms: int = 512, rooms: list[np.ndarray] | None = None,
                 room_prob: float = ROOM_PROB, stats_clips: int = 4000,
                 workers: int | None = None):
        self.device = torch.device(device)
        self.n = int(n_per_epoch)
        self.engines = list(rows_by_engine)
        self.noise = tuple(float(v) for v in noise)
        self.silence_top_db = float(silence_top_db)
        self.room_prob = float(room_prob)
        rows = [r for e in self.engines for r in rows_by_engine[e]]
        self.wav, self.wav_len = _padded([r["wav"] for r in rows], self.device)
        groups, babble, start = [], [], 0
        for e in self.engines:
            ids = range(start, start + len(rows_by_engine[e]))
            for c in CLASSES[:UNKNOWN + 1]:
                groups.append([i for i in ids if (rows[i]["text"] if rows[i]["kind"] == "keyword"
                                                  else "unknown") == c])
            babble.append(list(ids))
            start += len(rows_by_engine[e])
        self.by_class, self.by_class_n = _index_table(groups, self.device)
        if int(self.by_class_n.min()) == 0:
            raise ValueError("every engine needs utterances of every keyword and unknown words")
        self.babble, self.babble_n = _index_table(babble, self.device)
        rooms = rooms if rooms is not None else room_bank(n_rooms, seed, workers)
        self.rir, self.rir_len = _padded(rooms, self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        stats_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        sample = torch.arange(min(stats_clips, self.n))
        x, _, y = self.batch(sample, stats_gen)
        self.x, self.y = x.cpu(), y.cpu()  # the statistics' sample (input / feature stats)

    def __len__(self) -> int:
        return self.n

    # ---------------------------------------------------------------------------------- draws
    def _u(self, shape, gen, lo=0.0, hi=1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen, device=self.device)

    def _pick(self, table: torch.Tensor, counts: torch.Tensor, group: torch.Tensor, gen):
        k = (self._u(group.shape, gen) * counts[group]).long().clamp(max=table.shape[1] - 1)
        return table[group, k]

    def _noise(self, engine: torch.Tensor, gen) -> torch.Tensor:
        """[B, CLIP] unit-RMS backgrounds, a kind of NOISE_KINDS each."""
        b = len(engine)
        kind = (self._u((b,), gen) * len(NOISE_KINDS)).long().clamp(max=len(NOISE_KINDS) - 1)
        white = torch.randn((b, CLIP), generator=gen, device=self.device)
        spec = torch.fft.rfft(torch.randn((b, CLIP), generator=gen, device=self.device), dim=1)
        spec = spec / torch.arange(spec.shape[1], device=self.device).clamp(min=1).sqrt()
        pink = torch.fft.irfft(spec, CLIP, dim=1)
        babble = torch.zeros(b, CLIP, device=self.device)
        words = torch.randint(BABBLE_WORDS[0], BABBLE_WORDS[1] + 1, (b,), generator=gen,
                              device=self.device)
        t = torch.arange(CLIP, device=self.device)
        for slot in range(BABBLE_WORDS[1]):
            row = self._pick(self.babble, self.babble_n, engine, gen)
            n = self.wav_len[row]
            lo = -torch.div(n, 2, rounding_mode="floor") - (n % 2)  # Python's -n // 2
            hi = CLIP - torch.div(n, 2, rounding_mode="floor")
            start = lo + (self._u((b,), gen) * (hi - lo)).long()
            gain = self._u((b,), gen, 0.3, 1.0) * (slot < words)
            src = t[None] - start[:, None]
            ok = (src >= 0) & (src < n[:, None])
            vals = self.wav[row[:, None], src.clamp(0, self.wav.shape[1] - 1)]
            babble += gain[:, None] * vals * ok
        pick = kind[:, None]
        x = torch.where(pick == 0, white, torch.where(pick == 1, pink, babble))
        return x / x.pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-9)

    def _speech(self, row: torch.Tensor, gen) -> tuple[torch.Tensor, torch.Tensor]:
        """Speed-perturbed utterances, some in a room: [B, L] and their lengths."""
        b = len(row)
        n0 = self.wav_len[row]
        factor = self._u((b,), gen, *SPEED)
        n = (n0.double() / factor.double()).round().long().clamp(min=2)
        width = int(n.max())
        j = torch.arange(width, device=self.device)
        pos = j[None].double() * ((n0 - 1).double() / (n - 1).double())[:, None]
        left = pos.floor().long().clamp(max=self.wav.shape[1] - 1)
        frac = (pos - left.double()).float()
        right = (left + 1).clamp(max=(n0 - 1)[:, None])
        a = self.wav[row[:, None], left]
        speech = (a + frac * (self.wav[row[:, None], right] - a)) * (j[None] < n[:, None])
        room = self._u((b,), gen) < self.room_prob
        if bool(room.any()):
            which = room.nonzero().squeeze(1)
            rir = (self._u((len(which),), gen) * len(self.rir_len)).long().clamp(
                max=len(self.rir_len) - 1)
            size = 1 << int(width + self.rir.shape[1] - 1).bit_length()
            wet = torch.fft.irfft(torch.fft.rfft(speech[which], size, dim=1)
                                  * torch.fft.rfft(self.rir[rir], size, dim=1), size, dim=1)
            m = (n[which] + self.rir_len[rir] - 1).clamp(max=ROOM_OUT)
            wet = wet[:, :ROOM_OUT] * (torch.arange(ROOM_OUT, device=self.device)[None]
                                       < m[:, None])
            wet = wet / wet.abs().amax(1, keepdim=True).clamp(min=1e-9)
            out = torch.zeros(b, max(width, ROOM_OUT), device=self.device)
            out[:, :width] = speech
            out[which] = wet if wet.shape[1] == out.shape[1] else torch.nn.functional.pad(
                wet, (0, out.shape[1] - wet.shape[1]))
            speech, n = out, n.clone()
            n[which] = m
        return speech, n

    def batch(self, idx: torch.Tensor, gen: torch.Generator | None = None):
        """(x [B, CLIP, 1], None, y [B]) on the mixer's device, freshly drawn."""
        gen = gen or self.gen
        idx = torch.as_tensor(idx, device=self.device).long()
        b = len(idx)
        label = idx % N_CLASSES
        engine = torch.div(idx, N_CLASSES, rounding_mode="floor") % len(self.engines)
        noise = self._noise(engine, gen)
        speaking = label != SILENCE
        group = engine * (UNKNOWN + 1) + label.clamp(max=UNKNOWN)
        row = self._pick(self.by_class, self.by_class_n, group, gen)
        speech, n = self._speech(row, gen)
        # a long utterance: a random 1 s of it; then a random place in the window
        crop = (self._u((b,), gen) * (n - CLIP + 1).clamp(min=1)).long()
        n = n.clamp(max=CLIP)
        place = (self._u((b,), gen) * (CLIP - n + 1)).long()
        t = torch.arange(CLIP, device=self.device)
        src = t[None] - place[:, None]
        ok = (src >= 0) & (src < n[:, None])
        src = (src + crop[:, None]).clamp(0, speech.shape[1] - 1)
        clip = torch.gather(speech, 1, src) * ok
        rms = (clip.pow(2).sum(1) / n.float()).sqrt()
        lo_db, hi_db, share = self.noise
        noisy = self._u((b,), gen) < share
        snr_db = self._u((b,), gen, lo_db, hi_db)
        clip = clip + (noisy * rms * 10 ** (-snr_db / 20))[:, None] * noise
        gain_db = self._u((b,), gen, *PEAK_DB)
        clip = clip * (10 ** (gain_db / 20) / clip.abs().amax(1).clamp(min=1e-9))[:, None]
        # silence: noise only, 20 % of it near-digital (dither)
        dither = self._u((b,), gen) < 0.2
        level_db = torch.where(dither, self._u((b,), gen, -90.0, -70.0),
                               self._u((b,), gen, -75.0, self.silence_top_db))
        hiss = torch.where(dither[:, None], torch.randn((b, CLIP), generator=gen,
                                                          device=self.device), noise)
        quiet = hiss * (10 ** (level_db / 20))[:, None]
        x = torch.where(speaking[:, None], clip, quiet).clamp(-1.0, 1.0)
        return x.unsqueeze(-1), None, label

    def concat(self, fixed) -> MixedAndFixed:
        """This mixer's clips plus a fixed split's (a refit: validation clips join training)."""
        return MixedAndFixed(self, fixed)


class MixedAndFixed:
    """Indices below len(mixer) draw fresh clips, the rest are the fixed split's clips."""

    aux = None
    phones = None
    lengths = None

    def __init__(self, mixer: OnlineMixer, fixed):
        if fixed.lengths is not None or fixed.x.shape[1] != CLIP:
            raise ValueError("the fixed split must hold 1 s clips")
        self.mixer, self.fixed = mixer, fixed
        self.x, self.y = mixer.x, mixer.y

    def __len__(self) -> int:
        return len(self.mixer) + len(self.fixed)

    def batch(self, idx: torch.Tensor, gen=None):
        idx = torch.as_tensor(idx).long()
        mixed = idx < len(self.mixer)
        x = torch.empty(len(idx), CLIP, 1, device=self.mixer.device)
        y = torch.empty(len(idx), dtype=torch.long, device=self.mixer.device)
        if bool(mixed.any()):
            xm, _, ym = self.mixer.batch(idx[mixed])
            x[mixed.to(x.device)], y[mixed.to(y.device)] = xm, ym
        if bool((~mixed).any()):
            xf, _, yf = self.fixed.batch(idx[~mixed] - len(self.mixer))
            x[(~mixed).to(x.device)], y[(~mixed).to(y.device)] = xf.to(x.device), yf.to(y.device)
        return x, None, y


__all__ = ["OnlineMixer", "MixedAndFixed", "room_bank", "room_impulse_response"]
