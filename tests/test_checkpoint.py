"""Checkpoints round-trip bit-exactly and fail loudly when damaged."""

import json

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import CheckpointConfig, ModelConfig, TaskConfig
from model.network import S4DNetwork


def make(tmp_path, **kw):
    cfg = ModelConfig(d_input=1, d_model=8, d_state=8, n_layers=2, d_output=3, **kw)
    task = TaskConfig(name="t", sample_rate=100, class_names=["a", "b", "c"], frame_size=10)
    net = S4DNetwork(cfg, seed=0)
    return save_checkpoint(tmp_path / "ck", net, CheckpointConfig(model=cfg, task=task)), net


def test_round_trip_is_bit_exact(tmp_path):
    path, net = make(tmp_path, trainable_B=True, init="inv")
    loaded, config = load_checkpoint(path)
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(2, 30, 1)
    with torch.inference_mode():
        assert torch.equal(net.eval()(x), loaded(x))
    assert config.task.class_names == ["a", "b", "c"]
    assert CheckpointConfig.model_validate_json(config.model_dump_json()) == config


def test_missing_files_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    path, _ = make(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)


def test_corrupted_weights(tmp_path):
    path, _ = make(tmp_path)
    (path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_bad_json_and_invalid_config(tmp_path):
    path, _ = make(tmp_path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({"model": {"d_state": 7}}))
    with pytest.raises(CheckpointError, match="invalid config"):
        load_checkpoint(path)


def test_shape_mismatch_and_unknown_keys(tmp_path):
    path, _ = make(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["d_model"] = 16
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path)
    cfg["model"]["d_model"] = 8
    cfg["model"]["n_layers"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown keys"):
        load_checkpoint(path)


def test_config_consistency_is_checked():
    with pytest.raises(ValueError):
        CheckpointConfig(model=ModelConfig(d_output=3), task=TaskConfig(class_names=["a"]))
    with pytest.raises(ValueError):
        CheckpointConfig(model=ModelConfig(patch_size=3), task=TaskConfig(frame_size=10))
