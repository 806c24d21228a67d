"""The keyword stream loss: per-step cross-entropy plus two max-pooling terms aimed at what
the event detector sees (Sun et al., "Max-pooling loss training of LSTM networks for
small-footprint keyword spotting", 2016).

An event fires when one step's keyword probability crosses a threshold, so a keyword is
found iff its *best* step is high, and a false alarm happens iff the *worst* step of
non-keyword audio is. Per-step cross-entropy averages over all steps, most of them easy.
- positive term: for each keyword (a run of steps whose target is that keyword), -log p of
  the keyword at the run's best step;
- negative term: for each stream, -log(1 - P(any keyword)) at its worst step among steps at
  least `guard_steps` away from any keyword's target run or its speech.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.streams import IGNORE, UNKNOWN


def keyword_steps(y: torch.Tensor) -> torch.Tensor:
    """[B, S] bool: the steps whose target is a keyword."""
    return (y >= 0) & (y < UNKNOWN)


def keyword_runs(y: torch.Tensor, is_kw: torch.Tensor) -> torch.Tensor:
    """y [B, S] targets, their `keyword_steps` -> run id per step [B, S]: consecutive steps
    with the same keyword target share an id; ids never cross streams."""
    lab = torch.where(is_kw, y, torch.full_like(y, -1))
    change = torch.ones_like(y, dtype=torch.bool)
    change[:, 1:] = lab[:, 1:] != lab[:, :-1]
    return torch.cumsum(change.reshape(-1).long(), 0).reshape(y.shape) - 1


def far_from_keywords(y: torch.Tensor, is_kw: torch.Tensor, guard_steps: int) -> torch.Tensor:
    """[B, S] bool: non-keyword target steps at least `guard_steps` from any keyword step
    (the keyword's own speech, whose target is "unknown", lies within the guard)."""
    near = F.max_pool1d(is_kw.float().unsqueeze(1), 2 * guard_steps + 1, stride=1,
                        padding=guard_steps).squeeze(1) > 0
    return (y != IGNORE) & ~is_kw & ~near


def stream_loss(logits: torch.Tensor, y: torch.Tensor, pos_weight: float = 0.0,
                neg_weight: float = 0.0, guard_steps: int = 100) -> torch.Tensor:
    """logits [B, S, C], y [B, S] -> scalar loss (the per-step cross-entropy alone when both
    weights are 0)."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                           ignore_index=IGNORE)
    if not (pos_weight or neg_weight):
        return loss
    logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
    is_kw = keyword_steps(y)
    if pos_weight:
        run = keyword_runs(y, is_kw)
        if is_kw.any():
            lp = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)[is_kw]
            ids = run[is_kw]
            best = torch.full((int(run.max()) + 1,), -torch.inf, device=lp.device,
                              dtype=lp.dtype).scatter_reduce(0, ids, lp, "amax")
            loss = loss - pos_weight * best[torch.unique(ids)].mean()
    if neg_weight:
        neg = far_from_keywords(y, is_kw, guard_steps)
        rows = neg.any(1)
        if rows.any():
            lp_any = torch.logsumexp(logp[..., :UNKNOWN], -1)  # log P(some keyword)
            worst = lp_any.masked_fill(~neg, -torch.inf).amax(1)[rows]
            # -log(1 - P) from log P, stable near P = 1
            loss = loss - neg_weight * torch.log(-torch.expm1(worst.clamp(max=-1e-7))).mean()
    return loss
