"""The stream planner: pure functions from per-session sample counts to step groups.

No I/O, no device, no asyncio: given how many samples each session holds and which sessions
asked for a flush (`reset` / `end`), say what the device runs this round. Unit-tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def bucket(n: int, step: int = 16) -> int:
    """Padded batch size: a power of two up to `step`, then a multiple of `step` up to 16 x
    `step`, then of an eighth of the power of two below n. Shapes repeat (CUDA graphs captured
    at start-up cover every size) while padding wastes few rows: at most step - 1 up to 256,
    then under 12.5 %. With pure powers of two, 34 sessions ran as 64 and a server at its limit
    fell off a cliff (measured)."""
    if n <= step:
        return 1 << max(0, (n - 1).bit_length())
    grain = max(step, (1 << ((n - 1).bit_length() - 1)) // 8)
    return -(-n // grain) * grain


def buckets_upto(n: int, step: int = 16) -> list[int]:
    """Every size `bucket` returns for batches of 1..n."""
    out, b = [], 1
    while True:
        b = bucket(b, step)
        out.append(b)
        if b >= n:
            return out
        b += 1


@dataclass
class Round:
    """One round of device work for one model."""

    full: np.ndarray  # slots with >= one full frame: each runs one frame
    partial: dict[int, np.ndarray] = field(default_factory=dict)  # length -> flushing slots
    finished: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # flushing slots whose buffer ends this round: their remainder (< one patch) is dropped,
    # as the batch forward ignores it, and the flush is answered

    @property
    def empty(self) -> bool:
        return not len(self.full) and not self.partial and not len(self.finished)


def split_batch(slots: np.ndarray, limit: int | None) -> list[np.ndarray]:
    """`slots` as steps of at most `limit` sessions, balanced (2,560 at a limit of 2,048: two
    of 1,280). A round larger than the largest captured graph would otherwise run eagerly
    (several times slower, and a compiled step would recompile for it) just when the engine
    has fallen behind and needs its fastest step. No slots: no steps."""
    if not len(slots):
        return []
    if limit is None or len(slots) <= limit:
        return [slots]
    return np.array_split(slots, -(-len(slots) // limit))


def plan_round(slots: np.ndarray, avail: np.ndarray, flushing: np.ndarray, *,
               frame: int, patch: int) -> Round:
    """`slots` / `avail`: active sessions and their buffered samples; `flushing`: slots with a
    pending flush. Full frames first; a flushing session below one frame runs its usable part
    (a multiple of the patch) as a partial frame in the same round, so busy streams never
    starve an `end`."""
    slots = np.asarray(slots, np.int64)
    avail = np.asarray(avail, np.int64)
    full = slots[avail >= frame]
    if not len(flushing):
        return Round(full=full)
    is_flush = np.isin(slots, flushing)
    fl_slots, fl_avail = slots[is_flush], avail[is_flush]
    below = fl_avail < frame
    fl_slots, fl_avail = fl_slots[below], fl_avail[below]
    usable = fl_avail - fl_avail % patch
    partial = {int(n): fl_slots[usable == n] for n in np.unique(usable[usable > 0])}
    return Round(full=full, partial=partial, finished=fl_slots)
