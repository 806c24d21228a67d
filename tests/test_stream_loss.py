"""The keyword stream loss (model/stream_loss.py) against a float64 loop written from its
definition, on targets built the way the stream generator builds them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.data.streams import IGNORE, SILENCE, UNKNOWN
from model.stream_loss import far_from_keywords, keyword_runs, keyword_steps, stream_loss


def _targets() -> torch.Tensor:
    """Three streams of 60 steps: two keywords back to back (3 then 7, the later end takes
    over), a lone keyword after ignored steps, and a stream without keywords."""
    y = torch.full((3, 60), SILENCE, dtype=torch.long)
    y[0, 5:10] = UNKNOWN  # the first keyword's speech
    y[0, 10:18] = 3
    y[0, 18:25] = 7
    y[0, 40:44] = UNKNOWN  # a non-keyword
    y[1, 0:3] = IGNORE
    y[1, 30:39] = 5
    y[2, 20:30] = UNKNOWN
    return y


def _reference(logits: np.ndarray, y: np.ndarray, pos_w: float, neg_w: float, guard: int):
    """float64, one step at a time."""
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = [-logp[b, t, y[b, t]] for b in range(y.shape[0]) for t in range(y.shape[1])
          if y[b, t] != IGNORE]
    loss = float(np.mean(ce))
    runs = []  # (stream, label, steps)
    for b in range(y.shape[0]):
        t = 0
        while t < y.shape[1]:
            if 0 <= y[b, t] < UNKNOWN:
                u = t
                while u < y.shape[1] and y[b, u] == y[b, t]:
                    u += 1
                runs.append((b, y[b, t], range(t, u)))
                t = u
            else:
                t += 1
    if pos_w and runs:
        loss -= pos_w * np.mean([max(logp[b, t, lab] for t in steps) for b, lab, steps in runs])
    worst = []
    for b in range(y.shape[0]):
        kw_steps = [t for t in range(y.shape[1]) if 0 <= y[b, t] < UNKNOWN]
        far = [t for t in range(y.shape[1]) if y[b, t] in (UNKNOWN, SILENCE)
               and all(abs(t - k) > guard for k in kw_steps)]
        if far:
            worst.append(max(np.exp(logp[b, t, :UNKNOWN]).sum() for t in far))
    if neg_w and worst:
        loss -= neg_w * np.mean([math.log(1 - p) for p in worst])
    return loss


def test_runs_and_guard_follow_the_targets():
    y = _targets()
    is_kw = keyword_steps(y)
    run = keyword_runs(y, is_kw)
    kw_ids = [sorted(set(run[b][is_kw[b]].tolist())) for b in range(3)]
    assert [len(k) for k in kw_ids] == [2, 1, 0]  # 3 then 7: two runs
    assert not set(kw_ids[0]) & set(kw_ids[1])  # ids never cross streams
    far = far_from_keywords(y, is_kw, guard_steps=4)
    assert not far[0, 6:29].any() and far[0, 29:].all() and far[0, :6].all()
    assert not far[1, :3].any()  # ignored steps are no negatives
    assert far[2].all()


@pytest.mark.parametrize("pos_w,neg_w", [(0.0, 0.0), (1.0, 0.0), (0.0, 2.0), (1.5, 0.7)])
def test_loss_equals_the_float64_definition(pos_w, neg_w):
    torch.manual_seed(0)
    y = _targets()
    logits = 3 * torch.randn(3, 60, 12, dtype=torch.float64)
    got = stream_loss(logits, y, pos_w, neg_w, guard_steps=4)
    want = _reference(logits.numpy(), y.numpy(), pos_w, neg_w, guard=4)
    assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-9)
    if not (pos_w or neg_w):  # the per-step loss training used before
        plain = F.cross_entropy(logits.reshape(-1, 12), y.reshape(-1), ignore_index=IGNORE)
        assert float(got) == float(plain)


def test_max_terms_reach_only_the_best_and_worst_steps():
    """The gradient of the max-pooling terms alone flows to one step per keyword (its best)
    and one per stream (its worst far step)."""
    torch.manual_seed(1)
    y = _targets()
    logits = torch.randn(3, 60, 12, dtype=torch.float64, requires_grad=True)
    extra = (stream_loss(logits, y, 1.0, 1.0, guard_steps=4)
             - stream_loss(logits, y, 0.0, 0.0, guard_steps=4))
    extra.backward()
    touched = (logits.grad.abs().sum(-1) > 0).sum(1).tolist()
    assert touched == [2 + 1, 1 + 1, 0 + 1]


def test_a_confident_false_alarm_costs_more_than_a_quiet_stream():
    y = _targets()
    logits = torch.zeros(3, 60, 12)
    logits[..., SILENCE] = 8.0
    base = float(stream_loss(logits, y, 0.0, 1.0, guard_steps=4))
    logits[2, 50, 4] = 20.0  # one step of stream 2 says "keyword 4" with certainty
    assert float(stream_loss(logits, y, 0.0, 1.0, guard_steps=4)) > base + 3.0
    assert math.isfinite(float(stream_loss(logits * 100, y, 1.0, 1.0, guard_steps=4)))


def test_training_with_the_max_pooling_terms_records_them(tmp_path):
    """`train_streams kws-events --maxpool POS,NEG` trains with them and says so in the
    checkpoint's recipe (weights and command)."""
    import json

    from conftest import tiny_stream_bank

    from model.train_streams import main

    bank = tiny_stream_bank(tmp_path / "bank")
    assert main(["kws-events", "--smoke", "--bank", str(bank), "--maxpool", "1,2",
                 "--out", str(tmp_path / "run")]) == 0
    recipe = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert (recipe["maxpool_pos"], recipe["maxpool_neg"]) == (1.0, 2.0)
    assert "--maxpool 1.0,2.0" in recipe["command"]
