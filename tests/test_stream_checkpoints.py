"""The stream checkpoints (issue 15), once installed by `python -m model.install_streams`:
they load, forget (pooling ema), carry event defaults, their card states the measured stream
metrics, and the stream reports the batch path's prediction at every frame end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.streaming import StreamingNetwork

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("kws-events-s4d", "ecg-monitor-s4d")


def installed(name: str) -> Path:
    folder = ROOT / "checkpoints" / name
    if not (folder / "model.safetensors").exists():
        pytest.skip(f"checkpoints/{name} is not installed yet (scripts/gpu_train_stream15.sh)")
    return folder


@pytest.mark.parametrize("name", NAMES)
def test_stream_checkpoint_card_and_config(name):
    folder = installed(name)
    net, cfg = load_checkpoint(folder)
    assert cfg.model.pooling == "ema" and cfg.model.ema_tau_s > 0
    assert cfg.task.labels_from_generated_data and cfg.task.events.enabled
    m = json.loads((folder / "metrics.json").read_text())
    assert cfg.task.events.threshold == m["detector"]["threshold"]
    card = (folder / "CARD.md").read_text()
    assert "generated data" in card and f"{net.num_parameters():,}" in card
    t = m["test"]
    if m["kind"] == "kws":
        assert f"{100 * t['false_rejection_rate']:.1f} %" in card
        assert f"p90 {t['onset_error_p90_ms']:.0f} ms" in card
    else:
        assert f"{100 * t['detected_share']:.1f} % of {t['changes']} rhythm changes" in card
        assert f"{t['false_changes_per_hour']:.2f} false changes per hour" in card
    with torch.no_grad():
        state = StreamingNetwork(net, cfg.task.frame_size).state_bytes_per_session
    assert f"{state:,} bytes per session" in card


@pytest.mark.parametrize("name", NAMES)
def test_stream_checkpoint_streams_like_the_batch_path(name):
    folder = installed(name)
    torch.set_num_threads(2)
    net, cfg = load_checkpoint(folder)
    frame = cfg.task.frame_size
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 7 * frame, 1))
                         .astype(np.float32) * cfg.model.input_std[0] + cfg.model.input_mean[0])
    with torch.no_grad():
        batch = net.prefix_logits(x)[0]
        sn = StreamingNetwork(net, frame)
        state = sn.zero_state(1)
        p = cfg.model.patch_size
        for i in range(7):
            logits, state = sn.step(x[:, i * frame:(i + 1) * frame], state)
            assert torch.allclose(logits[0], batch[(i + 1) * frame // p - 1], atol=1e-3)
