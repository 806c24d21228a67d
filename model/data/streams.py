"""Long streams with per-step targets, composed on the fly (CPU or GPU) from a small bank of
source material (model/data/stream_bank.py): keyword streams of 10-60 s and ECG streams whose
rhythm changes every few minutes.

Keyword streams: words at random times (gaps 0.25-3 s) between background noise (white,
pink, babble of non-keywords from the same split, or a near-silent floor) at 0-30 dB SNR,
each word a bank rendition at a random speed (0.9-1.1, by resampling) and gain, 30 % of
streams through a simulated room. A word is a keyword with probability `keyword_prob`
(0: a stream of non-keyword audio only). Per step (after `patch` samples) the target is
the keyword from its end for `present_s` seconds (a later keyword's end takes over),
"unknown" while a word is spoken and for `present_s` after a non-keyword, else "silence".

ECG streams: 10 s windows of one rhythm in a row (a segment), rhythm changes between
segments (always to another rhythm); consecutive windows are joined with a 0.4 s crossfade
everywhere, so a join says nothing about a change. Targets per step: the segment's rhythm;
the first `settle_s` seconds after a change (and of the stream) are ignored (-100).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

KWS_RATE = 16000
ECG_RATE = 250
UNKNOWN, SILENCE = 10, 11  # kws class indices (model/data/kws.py CLASSES)
IGNORE = -100


@dataclass
class Word:
    """One word of a composed stream, in samples: [start, end) and its class (0-9, 10)."""

    start: int
    end: int
    label: int


class WordBank:
    """The word renditions of one split as a padded [n, L] tensor."""

    def __init__(self, audio: np.ndarray, lengths: np.ndarray, labels: np.ndarray, device="cpu"):
        n, longest = len(lengths), int(lengths.max())
        pad = np.zeros((n, longest), np.float32)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        for i in range(n):
            pad[i, : lengths[i]] = audio[bounds[i] : bounds[i + 1]] / 32767.0
        self._set(torch.from_numpy(pad).to(device),
                  torch.from_numpy(lengths.astype(np.int64)).to(device),
                  torch.from_numpy(labels.astype(np.int64)).to(device))

    def _set(self, audio: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> None:
        self.audio, self.lengths, self.labels = audio, lengths, labels
        self.keyword_idx = torch.nonzero(labels < UNKNOWN).flatten()
        self.other_idx = torch.nonzero(labels == UNKNOWN).flatten()

    @classmethod
    def load(cls, directory: str | Path, split: str, device="cpu",
             extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> WordBank:
        """The split's renditions; `extra` (audio, lengths, labels) appends more words, e.g.
        other engines' training words (`stream_bank.engine_words`)."""
        with np.load(Path(directory) / "words.npz") as d:
            parts = (d[f"{split}_audio"], d[f"{split}_lengths"], d[f"{split}_labels"])
        if extra is not None:
            parts = tuple(np.concatenate([a, b]) for a, b in zip(parts, extra, strict=True))
        return cls(*parts, device)

    def with_voices(self, copies: int, lo: float, hi: float, gen: torch.Generator,
                    chunk: int = 256) -> WordBank:
        """This bank plus `copies` renditions of every word with formants moved by a factor
        in [lo, hi] (`model.data.voice`): more vocal tracts than the bank's voices."""
        from .voice import random_alpha, shift_formants

        dev = self.audio.device
        pieces = [self.audio]
        for _ in range(copies):
            for i in range(0, len(self.audio), chunk):
                rows = self.audio[i : i + chunk]
                alpha = random_alpha(gen, len(rows), lo, hi, device=dev)
                warped = shift_formants(rows, alpha)
                mask = torch.arange(rows.shape[1], device=dev) < self.lengths[i : i + chunk, None]
                pieces.append((warped * mask).clamp(-1.0, 1.0))
        out = WordBank.__new__(WordBank)
        out._set(torch.cat(pieces), self.lengths.repeat(copies + 1),
                 self.labels.repeat(copies + 1))
        return out


def load_rirs(directory: str | Path, device="cpu") -> torch.Tensor:
    with np.load(Path(directory) / "rirs.npz") as d:
        return torch.from_numpy(d["rirs"].astype(np.float32)).to(device)


def _rand(gen, *shape, lo=0.0, hi=1.0, device="cpu"):
    return lo + (hi - lo) * torch.rand(*shape, generator=gen, device=device)


def _render(bank: WordBank, idx: torch.Tensor, starts: torch.Tensor, speed: torch.Tensor,
            gain: torch.Tensor, keep: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Words idx [B, K] placed at starts [B, K], resampled by `speed` (linear interpolation),
    scaled by gain, summed into [B, length]; returns (audio, end sample of every word)."""
    b, k = idx.shape
    dev = bank.audio.device
    src_len = bank.lengths[idx]  # [B, K]
    out_len = torch.floor((src_len - 1).double() / speed.double()).long() + 1
    longest = int(out_len.max())
    j = torch.arange(longest, device=dev)
    pos = j.view(1, 1, -1) * speed.unsqueeze(-1)  # source position of output sample j
    lo = pos.floor().long()
    frac = (pos - lo).float()
    lo = torch.minimum(lo, (src_len - 1).unsqueeze(-1))
    hi = torch.minimum(lo + 1, (src_len - 1).unsqueeze(-1))
    rows = bank.audio[idx]  # [B, K, Lmax]
    w = rows.gather(2, lo) * (1 - frac) + rows.gather(2, hi) * frac
    valid = (j.view(1, 1, -1) < out_len.unsqueeze(-1)) & keep.unsqueeze(-1)
    dest = starts.unsqueeze(-1) + j.view(1, 1, -1)
    valid &= dest < length
    w = w * gain.unsqueeze(-1) * valid
    flat = (dest.clamp(max=length - 1) + torch.arange(b, device=dev).view(b, 1, 1) * length)
    audio = torch.zeros(b * length, device=dev)
    audio.index_add_(0, flat[valid], w[valid])
    return audio.view(b, length), starts + out_len


def _pink(gen, b: int, n: int, device) -> torch.Tensor:
    spec = torch.fft.rfft(torch.randn(b, n, generator=gen, device=device))
    spec = spec / torch.sqrt(torch.arange(spec.shape[1], device=device).clamp(min=1))
    return torch.fft.irfft(spec, n)


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-9)


#: the background kinds of keyword streams, in the order `kws_streams` draws them
NOISE_KINDS = ("white", "pink", "babble", "quiet")  # quiet: a near-silent floor


def kws_streams(bank: WordBank, rirs: torch.Tensor | None, batch: int, seconds: float,
                gen: torch.Generator, keyword_prob: float = 0.5, present_s: float = 1.0,
                patch: int = 16, room_prob: float = 0.3, conditions: bool = False):
    """(audio [B, L] float32, targets [B, L // patch] int64, words: list of lists of Word);
    with `conditions`, also each stream's draw (`StreamConditions`), for metrics by condition.
    The random draws are the same either way."""
    dev = bank.audio.device
    room = torch.zeros(batch, dtype=torch.bool, device=dev)
    length = int(round(seconds * KWS_RATE))
    k = int(math.ceil(seconds / 0.5)) + 1  # enough slots: a word + gap takes >= 0.5 s
    is_kw = _rand(gen, batch, k, device=dev) < keyword_prob
    pick_kw = bank.keyword_idx[torch.randint(len(bank.keyword_idx), (batch, k), generator=gen,
                                             device=dev)]
    pick_other = bank.other_idx[torch.randint(len(bank.other_idx), (batch, k), generator=gen,
                                              device=dev)]
    idx = torch.where(is_kw, pick_kw, pick_other)
    speed = _rand(gen, batch, k, lo=0.9, hi=1.1, device=dev)
    gaps = (_rand(gen, batch, k, lo=0.25, hi=3.0, device=dev) * KWS_RATE).long()
    lens = torch.floor((bank.lengths[idx] - 1).double() / speed.double()).long() + 1
    starts = torch.cumsum(gaps + lens, 1) - lens
    keep = starts + lens <= length
    gain = 10 ** (_rand(gen, batch, k, lo=-6.0, hi=0.0, device=dev) / 20)
    speech, ends = _render(bank, idx, starts, speed, gain, keep, length)
    if rirs is not None and room_prob > 0:
        room = _rand(gen, batch, device=dev) < room_prob
        if room.any():
            r = rirs[torch.randint(len(rirs), (int(room.sum()),), generator=gen, device=dev)]
            n = length + r.shape[1]
            wet = torch.fft.irfft(torch.fft.rfft(speech[room], n) * torch.fft.rfft(r, n), n)
            wet = wet[:, :length]
            peak = speech[room].abs().amax(1, keepdim=True)
            speech[room] = wet * peak / wet.abs().amax(1, keepdim=True).clamp(min=1e-9)
    # speech level: RMS over the samples where a word is spoken
    active = speech.abs() > 1e-4
    speech_rms = (speech.pow(2).sum(1) / active.sum(1).clamp(min=1)).sqrt()
    speech_rms = torch.where(keep.any(1), speech_rms, torch.full_like(speech_rms, 0.1))
    kind = torch.randint(4, (batch,), generator=gen, device=dev)  # white, pink, babble, floor
    noise = torch.zeros(batch, length, device=dev)
    white = kind == 0
    if white.any():
        noise[white] = torch.randn(int(white.sum()), length, generator=gen, device=dev)
    pink = kind == 1
    if pink.any():
        noise[pink] = _pink(gen, int(pink.sum()), length, dev)
    babble = kind == 2
    if babble.any():
        nb = int(babble.sum())
        kb = int(math.ceil(seconds / 0.25))
        bidx = bank.other_idx[torch.randint(len(bank.other_idx), (nb, kb), generator=gen,
                                            device=dev)]
        bstarts = (_rand(gen, nb, kb, lo=-0.5, hi=seconds, device=dev) * KWS_RATE).long()
        bstarts = bstarts.clamp(min=0)
        bb, _ = _render(bank, bidx, bstarts, _rand(gen, nb, kb, lo=0.9, hi=1.1, device=dev),
                        _rand(gen, nb, kb, lo=0.3, hi=1.0, device=dev),
                        torch.ones(nb, kb, dtype=torch.bool, device=dev), length)
        noise[babble] = bb
    noise = _unit_rms(noise + 1e-6 * torch.randn(batch, length, generator=gen, device=dev))
    snr_db = _rand(gen, batch, lo=0.0, hi=30.0, device=dev)
    level = speech_rms * 10 ** (-snr_db / 20)
    floor = kind == 3
    level = torch.where(floor, 10 ** (_rand(gen, batch, lo=-90.0, hi=-60.0, device=dev) / 20),
                        level)
    babble_level = torch.where(babble, speech_rms * 10 ** (-_rand(gen, batch, lo=6.0, hi=30.0,
                                                                    device=dev) / 20), level)
    x = speech + noise * babble_level.unsqueeze(1)
    peak_db = _rand(gen, batch, lo=-26.0, hi=-1.0, device=dev)
    x = x * (10 ** (peak_db / 20) / x.abs().amax(1).clamp(min=1e-9)).unsqueeze(1)
    x = x.clamp(-1.0, 1.0)
    labels = bank.labels[idx]
    words = [[Word(int(s), int(e), int(lab)) for s, e, lab, kp in zip(
        starts[i].tolist(), ends[i].tolist(), labels[i].tolist(), keep[i].tolist(), strict=True)
        if kp] for i in range(batch)]
    targets = kws_targets(starts, ends, labels, keep, length, patch, present_s)
    if conditions:
        snr = torch.where(babble, 20 * torch.log10(speech_rms / babble_level), snr_db)
        cond = StreamConditions(noise=kind.cpu().tolist(), room=room.cpu().tolist(),
                                snr_db=torch.where(floor, torch.nan, snr).cpu().tolist())
        return x, targets, words, cond
    return x, targets, words


@dataclass
class StreamConditions:
    """How each keyword stream of a batch was drawn: background kind (index into NOISE_KINDS),
    speech-to-background ratio in dB (NaN for "quiet", a floor 60-90 dB below full scale),
    through a room or not."""

    noise: list[int]
    snr_db: list[float]
    room: list[bool]


def kws_targets(starts, ends, labels, keep, length: int, patch: int, present_s: float):
    """[B, steps]: per step (time = samples consumed after the step) the class index."""
    dev = starts.device
    steps = length // patch
    t = ((torch.arange(steps, device=dev) + 1) * patch).view(1, 1, -1)  # [1, 1, S]
    s, e = starts.unsqueeze(-1), ends.unsqueeze(-1)
    hold = int(round(present_s * KWS_RATE))
    keepx = keep.unsqueeze(-1)
    speaking = ((t > s) & (t <= e) & keepx).any(1)
    after = (t > e) & (t <= e + hold) & keepx  # [B, K, S]
    kw = after & (labels < UNKNOWN).unsqueeze(-1)
    other_after = (after & (labels == UNKNOWN).unsqueeze(-1)).any(1)
    out = torch.full((starts.shape[0], steps), SILENCE, dtype=torch.long, device=dev)
    out[speaking | other_after] = UNKNOWN
    k = starts.shape[1]
    slot = (kw.long() * (torch.arange(k, device=dev) + 1).view(1, -1, 1)).amax(1)  # latest
    has = slot > 0
    kw_label = labels.gather(1, (slot - 1).clamp(min=0))
    out[has] = kw_label[has]
    return out


# ----------------------------------------------------------------------------- ECG
class EcgBank:
    """10 s windows of one split, grouped by rhythm."""

    def __init__(self, x: np.ndarray, y: np.ndarray, device="cpu"):
        self.x = torch.from_numpy(x.astype(np.float32)).to(device)
        self.y = torch.from_numpy(y.astype(np.int64)).to(device)
        self.by_class = [torch.nonzero(self.y == c).flatten() for c in range(int(y.max()) + 1)]
        self.window = x.shape[1]

    @classmethod
    def load(cls, directory: str | Path, split: str, device="cpu") -> EcgBank:
        with np.load(Path(directory) / "ecg.npz") as d:
            return cls(d[f"{split}_x"], d[f"{split}_y"], device)


@dataclass
class Segment:
    """One rhythm segment of an ECG stream, in samples."""

    start: int
    end: int
    label: int


def ecg_streams(bank: EcgBank, batch: int, seconds: float, gen: torch.Generator,
                segment_s: tuple[float, float] = (60.0, 300.0), patch: int = 5,
                settle_s: float = 2.0, fade_s: float = 0.4):
    """(ecg [B, L], targets [B, L // patch], segments: list of lists of Segment)."""
    dev = bank.x.device
    win = bank.window
    hop = win - int(round(fade_s * ECG_RATE))
    n_win = int(math.ceil((seconds * ECG_RATE - win) / hop)) + 1
    length = int(round(seconds * ECG_RATE))
    n_cls = len(bank.by_class)
    labels = torch.zeros(batch, n_win, dtype=torch.long)
    segments: list[list[Segment]] = []
    cpu = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=gen,
                                                          device=dev).item()))
    for b in range(batch):
        segs, w, prev = [], 0, -1
        while w < n_win:
            dur = segment_s[0] + (segment_s[1] - segment_s[0]) * torch.rand(1, generator=cpu).item()
            n = max(1, int(round(dur * ECG_RATE / hop)))
            choices = [c for c in range(n_cls) if c != prev and len(bank.by_class[c])]
            c = choices[int(torch.randint(len(choices), (1,), generator=cpu))]
            labels[b, w : w + n] = c
            segs.append(Segment(w * hop, min((w + n) * hop, length), c))
            w, prev = w + n, c
        segs[-1].end = length
        segments.append([s for s in segs if s.start < length])
    pick = torch.zeros(batch, n_win, dtype=torch.long)
    for c, members in enumerate(bank.by_class):
        mask = labels == c
        if mask.any():
            pick[mask] = members.cpu()[torch.randint(len(members), (int(mask.sum()),),
                                                     generator=cpu)]
    windows = bank.x[pick.to(dev)]  # [B, W, win]
    gain = 0.8 + 0.45 * torch.rand(batch, n_win, 1, generator=cpu).to(dev)
    windows = windows * gain
    fade = hop and win - hop
    ramp = torch.ones(win, device=dev)
    if fade:
        up = 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, fade, device=dev))
        ramp[:fade], ramp[-fade:] = up, up.flip(0)
    total = (n_win - 1) * hop + win
    out = torch.zeros(batch, total, device=dev)
    norm = torch.zeros(total, device=dev)
    for w in range(n_win):
        r = ramp.clone()
        if w == 0:
            r[:fade] = 1
        if w == n_win - 1:
            r[-fade:] = 1
        out[:, w * hop : w * hop + win] += windows[:, w] * r
        norm[w * hop : w * hop + win] += r
    out = (out / norm.clamp(min=1e-6))[:, :length]
    steps = length // patch
    t = (torch.arange(steps) + 1) * patch
    targets = torch.full((batch, steps), IGNORE, dtype=torch.long)
    settle = int(round(settle_s * ECG_RATE))
    for b, segs in enumerate(segments):
        for s in segs:
            inside = (t > s.start + settle) & (t <= s.end)
            targets[b, inside] = s.label
    return out, targets.to(dev), segments
