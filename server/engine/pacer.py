"""How long the stream loop lets frames gather before its next round.

A step costs a fixed part (kernel launches or, on a CPU, Python dispatch of ~100 small ops:
~3 ms for kws here) plus a part per session (~0.8 ms per kws session on one CPU core). Rounds
every few milliseconds keep latency low while the device has time to spare, but a busy device
paying the fixed part for batches of 3-5 sessions falls behind (16 kws streams on 2 CPU cores:
rounds of ~4 sessions every 4 ms cost more than the 20 ms the audio lasts). So the interval
follows the device's busy share: it stretches (x1.25) while the lane is busy more than `target`
of the time and shrinks back (x0.8) once it is busy less than half of that, between `least` and
`most`. A GPU, busy a few percent of the time, stays at `least`.
"""

from __future__ import annotations


class RoundPacer:
    def __init__(self, least_s: float, most_s: float, target: float = 0.6,
                 window_s: float = 0.25):
        self.least, self.most = least_s, max(most_s, least_s)
        self.target, self.window = target, window_s
        self.interval = least_s
        self._busy = 0.0  # device seconds in the current window
        self._since: float | None = None

    def observe(self, now: float, busy_s: float) -> None:
        """`busy_s` device seconds of stream steps ended at `now`; adjusts at each window end."""
        if self._since is None:
            self._since = now
        self._busy += busy_s
        span = now - self._since
        if span < self.window:
            return
        share = self._busy / span
        if share > self.target:
            self.interval = min(self.most, max(self.interval, 1e-3) * 1.25)
        elif share < self.target / 2:
            self.interval = max(self.least, self.interval * 0.8)
        self._busy, self._since = 0.0, now
