"""One config object per checkpoint, round-tripping through JSON (config.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """Hyperparameters of an S4D network (the paper's options, plus serving-relevant ones)."""

    model_config = ConfigDict(extra="forbid")

    d_input: int = Field(1, ge=1)
    d_model: int = Field(128, ge=1)
    d_state: int = Field(64, ge=2, description="N; N/2 complex modes per channel")
    n_layers: int = Field(4, ge=1)
    d_output: int = Field(10, ge=1)
    patch_size: int = Field(1, ge=1, description="samples folded into one step by the encoder")
    front_end: Literal["linear", "logmel"] = Field(
        "linear", description="patch encoder: a linear map of the raw samples, or log-mel "
        "energies of the patch (model/frontend.py) then a linear map"
    )
    n_mels: int = Field(40, ge=1, description="front_end 'logmel': mel bands per patch")
    feature_mean: list[float] | None = Field(None, description="logmel: training-set band means")
    feature_std: list[float] | None = Field(None, description="logmel: training-set band stds")
    init: Literal["legs", "inv", "lin", "real", "random"] = "legs"
    discretization: Literal["zoh", "bilinear"] = "zoh"
    real_transform: Literal["exp", "relu", "none"] = "exp"
    trainable_B: bool = False
    dt_min: float = Field(1e-3, gt=0)
    dt_max: float = Field(1e-1, gt=0)
    norm: Literal["layer", "none"] = "layer"
    prenorm: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    pooling: Literal["mean", "last", "ema", "none"] = "mean"
    ema_tau_s: float | None = Field(
        None, gt=0, description="pooling 'ema': time constant in seconds of the moving average"
    )
    sample_rate: int | None = Field(
        None, ge=1, description="samples per second; needed by pooling 'ema' (= task.sample_rate)"
    )
    bidirectional: bool = False
    lr_ssm: float = Field(1e-3, gt=0)
    input_mean: list[float] | None = None
    input_std: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.d_state % 2:
            raise ValueError("d_state must be even (conjugate pairs: N/2 complex modes)")
        if self.dt_min > self.dt_max:
            raise ValueError("dt_min must not exceed dt_max")
        self._check_stats("input", self.d_input)
        if self.front_end == "logmel":
            if self.d_input != 1 or self.sample_rate is None or self.patch_size < 16:
                raise ValueError("front_end 'logmel' needs one input channel, sample_rate and "
                                 "patch_size >= 16")
            self._check_stats("feature", self.n_mels)
        if self.pooling == "ema" and (self.ema_tau_s is None or self.sample_rate is None):
            raise ValueError("pooling 'ema' needs ema_tau_s (seconds) and sample_rate")
        return self

    def _check_stats(self, prefix: str, n: int) -> None:
        """<prefix>_mean / <prefix>_std: n values each when given, stds positive."""
        for name in (f"{prefix}_mean", f"{prefix}_std"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} needs {n} values, got {len(value)}")
        std = getattr(self, f"{prefix}_std")
        if std is not None and any(v <= 0 for v in std):
            raise ValueError(f"{prefix}_std must be positive")

    @property
    def ema_log_decay(self) -> float:
        """log a, with a = exp(-patch_size / (tau * sample_rate)) the per-step decay of
        pooling 'ema': p_t = a p_(t-1) + (1 - a) h_t."""
        if self.ema_tau_s is None or self.sample_rate is None:
            raise ValueError("ema_log_decay needs ema_tau_s and sample_rate")
        return -self.patch_size / (self.ema_tau_s * self.sample_rate)

    @property
    def n_modes(self) -> int:
        return self.d_state // 2


#: class names that are "nothing happening" unless a checkpoint says otherwise (kws: unknown,
#: silence; ecg: normal): they never raise events
DEFAULT_BACKGROUND = ("unknown", "silence", "normal", "background", "noise", "_background_noise_")


class EventsConfig(BaseModel):
    """Event detection over a stream's per-frame probabilities (model/events.py): a label
    turns on once p >= threshold (its own, where label_thresholds names it) has held for
    min_on_ms (0: at the first such frame) and off below that threshold - hysteresis; an
    onset raises an event unless the label's previous event
    is less than holdoff_ms before it. The event's offset is the onset frame's, moved
    onset_lag_ms earlier. With changes_only, a label raises no event while it is the label of
    the last event (a rhythm monitor reports changes of rhythm)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    threshold: float = Field(0.8, gt=0, le=1)
    hysteresis: float = Field(0.2, ge=0, lt=1)
    holdoff_ms: float = Field(500.0, ge=0, le=3_600_000)
    min_on_ms: float = Field(0.0, ge=0, le=10_000, description="how long p >= threshold must "
                             "hold before the label turns on (a blip shorter than this raises "
                             "nothing); the event still reports the onset")
    onset_lag_ms: float = Field(0.0, ge=0, le=10_000, description="events report their onset "
                                "this much before the frame where the label turned on (never "
                                "before the segment's start): the model's typical lag behind "
                                "what it detects, measured on validation streams (0: the "
                                "frame itself)")
    changes_only: bool = Field(False, description="raise an event only when its label differs "
                               "from the last event's (since the start or a reset): a monitor "
                               "reports changes, and the same rhythm again after a dip is none; "
                               "False: every turn-on past the hold-off (keywords said twice)")
    background: list[str] | None = Field(
        None, description="labels that never raise events; None: the class names among "
        + ", ".join(DEFAULT_BACKGROUND)
    )
    label_thresholds: dict[str, float] | None = Field(
        None, description="per-label thresholds in place of `threshold` (each label turns off "
        "below its own threshold - hysteresis); labels not named use `threshold`")

    @model_validator(mode="after")
    def _check(self) -> EventsConfig:
        for name, t in [("threshold", self.threshold)] + [
                (f"label_thresholds.{k}", v) for k, v in (self.label_thresholds or {}).items()]:
            if not 0 < t <= 1:
                raise ValueError(f"{name}={t} must be in (0, 1]")
            if self.hysteresis >= t:
                raise ValueError(
                    f"hysteresis={self.hysteresis} must be below {name}={t} "
                    "(a label turns off below threshold - hysteresis)"
                )
        return self

    @property
    def off_threshold(self) -> float:
        return self.threshold - self.hysteresis

    def background_labels(self, class_names: list[str]) -> list[str]:
        if self.background is not None:
            return list(self.background)
        return [c for c in class_names if c in DEFAULT_BACKGROUND]


class TaskConfig(BaseModel):
    """What the model's inputs and outputs mean, for serving."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    sample_rate: int = Field(16000, ge=1)
    input_channels: int = Field(1, ge=1)
    class_names: list[str] = Field(default_factory=list)
    frame_size: int = Field(320, ge=1, description="default streaming frame, in samples")
    labels_from_generated_data: bool = False
    input_units: str = Field(
        "", description="what one input sample means, e.g. 'mV' or 'full scale (-1..1)'"
    )
    events: EventsConfig = Field(default_factory=EventsConfig)


class CheckpointConfig(BaseModel):
    """Everything config.json holds: network, task, and the record of how it was trained."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    model: ModelConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> CheckpointConfig:
        if self.task.input_channels != self.model.d_input:
            raise ValueError(
                f"task.input_channels={self.task.input_channels} != model.d_input={self.model.d_input}"
            )
        if self.task.class_names and len(self.task.class_names) != self.model.d_output:
            raise ValueError(
                f"{len(self.task.class_names)} class names for d_output={self.model.d_output}"
            )
        if self.task.frame_size % self.model.patch_size:
            raise ValueError("task.frame_size must be a multiple of model.patch_size")
        unknown = set(self.task.events.background or []) - set(self.class_names())
        if unknown:
            raise ValueError(f"task.events.background names unknown classes {sorted(unknown)}")
        if self.model.sample_rate is not None and self.model.sample_rate != self.task.sample_rate:
            raise ValueError(
                f"model.sample_rate={self.model.sample_rate} != task.sample_rate={self.task.sample_rate}"
            )
        return self

    def class_names(self) -> list[str]:
        return self.task.class_names or [str(i) for i in range(self.model.d_output)]
