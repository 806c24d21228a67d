"""Import S4D models trained with the reference S4 code (state-spaces/s4) as checkpoints.

Two layouts, both the `S4Model` skeleton of the reference's `example.py` (encoder Linear,
n x [LayerNorm pre or post, S4 layer, dropout, residual], mean over time, decoder Linear):
- `s4-example`: the layers are the standalone `S4D` of `models/s4/s4d.py` (ZOH, B = 1,
  A = -exp(log_A_real) + i A_imag, dt = exp(log_dt), GELU, Conv1d(H, 2H, 1) + GLU).
- `s4-block`: the layers are `S4Block` (`models/s4/s4.py`) in diagonal mode: FFTConv with
  `SSMKernelDiag` (inv_dt, A_real, A_imag, B, C under their transforms, ZOH or bilinear),
  GELU, Linear(H, 2H) + GLU. The previous generation's `S4` module (keys kernel.kernel.log_dt,
  inv_A_real, A_imag with A = -re + i A_imag, D, Linear or Conv1d output) is read too.
Both map onto this project's block (norm, S4D, GELU, dropout, linear + GLU, residual) with the
same numbers; whatever does not (gates, bottlenecks, other kernels, extra channels,
bidirectional kernels, other activations) is refused with an error that names it. Nothing
is silently dropped or initialised: every source tensor is consumed, every target filled.

Where the reference parameter already is this project's parameter (log_dt, log_A_real /
A_real under exp or none, A_imag, B, C, D, the linear weights) the bits are copied. Other
transforms are evaluated once in float64 and rounded to float32.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoint import save_checkpoint
from .config import CheckpointConfig, ModelConfig, TaskConfig
from .network import S4DNetwork

FORMATS = ("s4-example", "s4-block")
TRANSFORMS = ("none", "exp", "relu", "sigmoid", "softplus")


class ImportRefused(ValueError):
    """The source weights or META cannot be converted exactly; the message says why."""


class ImportMeta(BaseModel):
    """META.json: what a state dict does not hold. Block options default to the reference's."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(ge=1)
    classes: list[str] = Field(min_length=1)
    frame_size: int = Field(ge=1)
    prenorm: bool
    name: str | None = None
    description: str = ""
    source: str = Field("", description="where the weights came from (URL, run), for CARD.md")
    input_mean: list[float] | None = None
    input_std: list[float] | None = None
    patch_size: int = Field(1, ge=1)
    disc: str = "zoh"
    dropout: float = Field(0.0, ge=0, lt=1, description="training dropout, recorded only")
    labels_from_generated_data: bool = False
    metrics: dict[str, Any] = Field(default_factory=dict)
    # optional size checks against the tensors
    d_input: int | None = None
    d_model: int | None = None
    d_state: int | None = None
    n_layers: int | None = None
    # S4Block / FFTConv / SSMKernelDiag options (s4-block only)
    mode: str = "diag"
    activation: str | None = "gelu"
    final_act: str | None = "glu"
    mult_act: str | None = None
    gate: int | None = None
    bottleneck: int | None = None
    channels: int = 1
    bidirectional: bool = False
    dt_transform: str = "exp"
    dt_fast: bool = False
    real_transform: str = "exp"
    imag_transform: str = "none"
    bandlimit: float | None = None
    is_real: bool = False


BLOCK_ONLY = (
    "mode", "activation", "final_act", "mult_act", "gate", "bottleneck", "channels",
    "bidirectional", "dt_transform", "dt_fast", "real_transform", "imag_transform", "bandlimit",
    "is_real",
)


def read_meta(path: str | Path) -> ImportMeta:
    path = Path(path)
    try:
        return ImportMeta.model_validate(json.loads(path.read_text()))
    except OSError as exc:
        raise ImportRefused(f"{path}: cannot read META ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ImportRefused(f"{path}: META is not valid JSON ({exc})") from exc
    except ValidationError as exc:
        raise ImportRefused(f"{path}: invalid META: {exc}") from exc


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(flat state dict, where in the file it was). `.safetensors`, or `.pt`/`.pth` through
    torch.load(weights_only=True): nothing else is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path)), "safetensors"
        except (SafetensorError, OSError, ValueError) as exc:
            raise ImportRefused(f"{path}: unreadable safetensors file ({exc})") from exc
    if suffix not in (".pt", ".pth"):
        raise ImportRefused(f"{path}: unsupported file type {suffix!r}; use .safetensors, .pt or .pth")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImportRefused(
            f"{path}: refused by torch.load(weights_only=True) (only tensors and plain "
            f"containers load; save model.state_dict()): {first}"
        ) from exc
    return _unwrap(obj, path)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if _is_tensor_dict(obj):
        return dict(obj), "state dict"
    if isinstance(obj, dict):  # example.py saves {"model": state_dict, "acc": .., "epoch": ..}
        for key in ("model", "state_dict"):
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key]), f"[{key!r}] of the saved dict"
        bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise ImportRefused(
            f"{path}: not a state dict: entries {bad[:5]} are not tensors, and there is no "
            "'model' or 'state_dict' entry holding one"
        )
    raise ImportRefused(f"{path}: holds a {type(obj).__name__}, not a state dict")


class _Source:
    """The source tensors, consumed key by key so leftovers can be reported."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = dict(tensors)
        for key, value in self.tensors.items():
            if not torch.is_floating_point(value):
                raise ImportRefused(f"{key}: dtype {value.dtype}, expected a real float tensor")

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str, shape: tuple[int, ...], hint: str = "") -> torch.Tensor:
        if key not in self.tensors:
            raise ImportRefused(f"missing key {key!r}{hint}")
        value = self.tensors.pop(key)
        if tuple(value.shape) != tuple(shape):
            raise ImportRefused(
                f"{key}: shape {tuple(value.shape)}, expected {tuple(shape)}{hint}"
            )
        return value

    def shape(self, key: str, hint: str = "") -> tuple[int, ...]:
        if key not in self.tensors:
            raise ImportRefused(f"missing key {key!r}{hint}")
        return tuple(self.tensors[key].shape)

    def finish(self) -> None:
        if self.tensors:
            raise ImportRefused(
                f"unknown keys (nothing here maps them): {sorted(self.tensors)[:8]}"
                + (f" and {len(self.tensors) - 8} more" if len(self.tensors) > 8 else "")
            )


def _layer_count(src: _Source, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in src.tensors if (m := pattern.match(k))}
    if not found:
        raise ImportRefused(f"no layer keys {prefix}<i>.* in the state dict")
    n = max(found) + 1
    missing = sorted(set(range(n)) - found)
    if missing:
        raise ImportRefused(f"layers {missing} missing: keys {prefix}<i>.* for i < {n}")
    return n


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def _positive(raw: torch.Tensor, transform: str) -> torch.Tensor:
    """The reference's param_transform (a positive quantity from its raw parameter), float64."""
    raw = raw.to(torch.float64)
    if transform == "none":
        return raw
    if transform == "exp":
        return torch.exp(raw)
    if transform == "relu":
        return F.relu(raw) + 1e-4
    if transform == "sigmoid":
        return torch.sigmoid(raw)
    if transform == "softplus":
        return F.softplus(raw)
    raise ImportRefused(f"unknown transform {transform!r}; expected one of {TRANSFORMS}")


class _Plan:
    """Shared skeleton: sizes, META checks, encoder / norms / decoder."""

    def __init__(self, src: _Source, meta: ImportMeta, layer_prefix: str, fmt: str):
        self.src, self.meta, self.fmt = src, meta, fmt
        h, in_features = src.shape("encoder.weight")
        p = meta.patch_size
        if in_features % p:
            raise ImportRefused(
                f"encoder.weight has {in_features} input features, not a multiple of META "
                f"patch_size={p}"
            )
        self.h, self.d_input = h, in_features // p
        self.n_layers = _layer_count(src, layer_prefix)
        n_classes = src.shape("decoder.weight")[0]
        if n_classes != len(meta.classes):
            raise ImportRefused(
                f"decoder.weight has {n_classes} outputs but META classes has {len(meta.classes)} names"
            )
        self.n_classes = n_classes

    def check_sizes(self, d_state: int) -> None:
        found = {"d_input": self.d_input, "d_model": self.h, "d_state": d_state,
                 "n_layers": self.n_layers}
        for key, value in found.items():
            given = getattr(self.meta, key)
            if given is not None and given != value:
                raise ImportRefused(f"META {key}={given} but the tensors give {key}={value}")

    def skeleton(self, out: dict[str, torch.Tensor]) -> None:
        h, src = self.h, self.src
        out["encoder.weight"] = _f32(src.take("encoder.weight", (h, self.d_input * self.meta.patch_size)))
        out["encoder.bias"] = _f32(src.take("encoder.bias", (h,)))
        out["decoder.weight"] = _f32(src.take("decoder.weight", (self.n_classes, h)))
        out["decoder.bias"] = _f32(src.take("decoder.bias", (self.n_classes,)))
        for i in range(self.n_layers):
            out[f"blocks.{i}.norm.weight"] = _f32(src.take(f"norms.{i}.weight", (h,)))
            out[f"blocks.{i}.norm.bias"] = _f32(src.take(f"norms.{i}.bias", (h,)))

    def model_config(self, d_state: int, **overrides) -> ModelConfig:
        m = self.meta
        return ModelConfig(
            d_input=self.d_input, d_model=self.h, d_state=d_state, n_layers=self.n_layers,
            d_output=self.n_classes, patch_size=m.patch_size, norm="layer", prenorm=m.prenorm,
            dropout=m.dropout, pooling="mean", bidirectional=False,
            input_mean=m.input_mean, input_std=m.input_std, **overrides,
        )


def _convert_example(src: _Source, meta: ImportMeta):
    given = sorted(k for k in meta.model_fields_set if k in BLOCK_ONLY)
    if given:
        raise ImportRefused(f"META {given}: options of --format s4-block, not of s4-example")
    if meta.disc != "zoh":
        raise ImportRefused(
            f"META disc={meta.disc!r}: the standalone S4D layer (models/s4/s4d.py) is always ZOH"
        )
    plan = _Plan(src, meta, "s4_layers.", "s4-example")
    h = plan.h
    c_shape = src.shape("s4_layers.0.kernel.C")
    if len(c_shape) != 3 or c_shape[2] != 2:
        raise ImportRefused(f"s4_layers.0.kernel.C: shape {c_shape}, expected (H, N/2, 2) "
                            "(view_as_real of a complex tensor)")
    m = c_shape[1]
    plan.check_sizes(2 * m)
    out: dict[str, torch.Tensor] = {}
    plan.skeleton(out)
    for i in range(plan.n_layers):
        p, q = f"s4_layers.{i}.", f"blocks.{i}."
        out[q + "s4d.kernel.log_dt"] = _f32(src.take(p + "kernel.log_dt", (h,)))
        out[q + "s4d.kernel.a_real_raw"] = _f32(src.take(p + "kernel.log_A_real", (h, m)))
        out[q + "s4d.kernel.a_imag"] = _f32(src.take(p + "kernel.A_imag", (h, m)))
        out[q + "s4d.kernel.c"] = _f32(src.take(p + "kernel.C", (h, m, 2))).unsqueeze(0)
        out[q + "s4d.kernel.b"] = torch.stack(
            [torch.ones(h, m), torch.zeros(h, m)], -1)  # the standalone S4D has B = 1
        out[q + "s4d.kernel.d"] = _f32(src.take(p + "D", (h,)))
        out[q + "output_linear.weight"] = _f32(
            src.take(p + "output_linear.0.weight", (2 * h, h, 1), " (Conv1d(H, 2H, 1) + GLU)")
        ).squeeze(-1)
        out[q + "output_linear.bias"] = _f32(src.take(p + "output_linear.0.bias", (2 * h,)))
    src.finish()
    cfg = plan.model_config(2 * m, init="lin", discretization="zoh", real_transform="exp",
                            trainable_B=False)
    notes = ["every tensor copied bit for bit (C reshaped, Conv1d kernel size 1 squeezed)"]
    return cfg, out, notes


def _refuse_block_options(meta: ImportMeta) -> None:
    def no(key: str, why: str) -> None:
        raise ImportRefused(f"META {key}={getattr(meta, key)!r}: {why}")

    if meta.mode not in ("diag", "s4d"):
        no("mode", "only the diagonal kernel (mode 'diag' / 's4d') is S4D; DPLR/NPLR S4 is not")
    if meta.activation != "gelu":
        no("activation", "this project's block applies GELU after the S4D core; only 'gelu' maps")
    if meta.final_act != "glu":
        no("final_act", "this project's block ends in Linear(H, 2H) + GLU; only 'glu' maps")
    if meta.mult_act not in (None, "id", "identity", "linear"):
        no("mult_act", "no activation between the core and the output linear maps")
    if meta.gate is not None:
        no("gate", "gated (GSS) blocks have no counterpart in this project's block")
    if meta.bottleneck is not None:
        no("bottleneck", "bottleneck input linears have no counterpart in this project's block")
    if meta.channels != 1:
        no("channels", "one SSM output per channel is this project's layer (channels=1)")
    if meta.bidirectional:
        no("bidirectional", "the importer takes causal models only (they stream exactly)")
    if meta.bandlimit is not None:
        no("bandlimit", "the bandlimit mask is not converted; retrain or fold it into C")
    if meta.is_real:
        no("is_real", "real-valued (EMA) kernels are not converted")
    if meta.disc not in ("zoh", "bilinear"):
        no("disc", "only 'zoh' and 'bilinear' discretizations exist in this project")
    for key in ("dt_transform", "real_transform", "imag_transform"):
        if getattr(meta, key) not in TRANSFORMS:
            no(key, f"expected one of {TRANSFORMS}")


def _block_structure_errors(src: _Source, i: int) -> None:
    """Modules the reference block can have that this project's block cannot."""
    p = f"s4_layers.{i}."
    probes = {
        "input_gate": "gate (GSS gating)", "output_gate": "gate (GSS gating)",
        "input_linear": "bottleneck", "layer.kernel.P": "mode (DPLR/NPLR kernel, not diagonal)",
        "layer.kernel.l_kernel": "mode (DPLR/NPLR kernel, not diagonal)",
        "kernel.kernel.P": "mode (DPLR/NPLR kernel, not diagonal)",
        "kernel.kernel.inv_w_real": "mode (DPLR/NPLR kernel, not diagonal)",
    }
    for name, option in probes.items():
        hit = [k for k in src.tensors if k == p + name or k.startswith(p + name + ".")]
        if hit:
            raise ImportRefused(f"{hit[0]}: a block with {option}; not supported by this project")


# The two generations of the reference's diagonal block (key names relative to s4_layers.<i>.):
# v4 `S4Block` -> FFTConv -> SSMKernelDiag, and v3 `S4` -> SSKernel -> SSKernelDiag.
DIALECTS = {
    "v4": dict(kernel="layer.kernel.", dt="inv_dt", a_real="A_real", d="layer.D", imag_sign=-1.0,
               b_lead=(1,), linear=("(2H, H)",)),
    "v3": dict(kernel="kernel.kernel.", dt="log_dt", a_real="inv_A_real", d="D", imag_sign=1.0,
               b_lead=(), linear=("(2H, H)", "(2H, H, 1)")),
}


def _dialect(src: _Source, meta: ImportMeta) -> str:
    for name, d in DIALECTS.items():
        if src.has("s4_layers.0." + d["kernel"] + "C"):
            if name == "v3" and (meta.dt_transform != "exp" or meta.dt_fast):
                raise ImportRefused(
                    "META dt_transform/dt_fast: the v3 kernel (kernel.kernel.log_dt) always has "
                    "dt = exp(log_dt)")
            if name == "v3" and meta.imag_transform != "none":
                raise ImportRefused(
                    "META imag_transform: the v3 kernel has no imaginary-part transform")
            return name
    raise ImportRefused(
        "missing key 's4_layers.0.layer.kernel.C' (S4Block, diagonal kernel) or "
        "'s4_layers.0.kernel.kernel.C' (v3 S4 module): not an S4Block state dict")


def _convert_block(src: _Source, meta: ImportMeta):
    _refuse_block_options(meta)
    plan = _Plan(src, meta, "s4_layers.", "s4-block")
    h = plan.h
    for i in range(plan.n_layers):
        _block_structure_errors(src, i)
    dialect = _dialect(src, meta)
    dia = DIALECTS[dialect]
    k0 = "s4_layers.0." + dia["kernel"]
    c_shape = src.shape(k0 + "C")
    if len(c_shape) != 4 or c_shape[-1] != 2:
        raise ImportRefused(f"{k0}C: shape {c_shape}, expected (channels, H, N/2, 2)")
    if c_shape[0] != 1:
        d_rows = src.shape("s4_layers.0." + dia["d"])[0]
        option = "bidirectional" if c_shape[0] == 2 * d_rows else "channels"
        raise ImportRefused(
            f"{k0}C: {c_shape[0]} kernel channels ({option} in the reference); not supported "
            "(one causal kernel per channel)")
    m = c_shape[2]
    plan.check_sizes(2 * m)
    out: dict[str, torch.Tensor] = {}
    plan.skeleton(out)
    dt_shape = src.shape(k0 + dia["dt"])
    allowed = ((h,),) if dialect == "v3" else ((h, 1), (h, m))
    if dt_shape not in allowed:
        raise ImportRefused(f"{k0}{dia['dt']}: shape {dt_shape}, expected one of {allowed}")
    tied = dt_shape != (h, m)
    bitwise_dt = tied and meta.dt_transform == "exp" and not meta.dt_fast
    bitwise_real = tied and meta.real_transform in ("exp", "none")
    for i in range(plan.n_layers):
        p, q = f"s4_layers.{i}.", f"blocks.{i}."
        k = p + dia["kernel"]
        inv_dt = src.take(k + dia["dt"], dt_shape).reshape(h, -1)
        s = src.shape(k + dia["a_real"])[0]
        if s < 1 or h % s:
            raise ImportRefused(f"{k}{dia['a_real']}: {s} SSM copies (n_ssm) must divide H={h}")
        a_real = src.take(k + dia["a_real"], (s, m))
        a_imag = src.take(k + "A_imag", (s, m), " (is_real kernels are not supported)")
        b = src.take(k + "B", (*dia["b_lead"], s, m, 2)).reshape(s, m, 2)
        c = src.take(k + "C", (1, h, m, 2))
        d = src.take(p + dia["d"], (1, h), " (channels=1, no GLU/hyper activation inside)")
        w_key = p + "output_linear.0.weight"
        w = src.shape(w_key, " (final_act/postact 'glu': H -> 2H + GLU)")
        if w not in ((2 * h, h), (2 * h, h, 1)) or (w == (2 * h, h, 1) and dialect == "v4"):
            raise ImportRefused(
                f"{w_key}: shape {w}, expected {' or '.join(dia['linear'])} with H={h}: the "
                "output linear must map H -> 2H followed by GLU (final_act/postact 'glu')")
        out[q + "output_linear.weight"] = _f32(src.take(w_key, w)).reshape(2 * h, h)
        out[q + "output_linear.bias"] = _f32(src.take(p + "output_linear.0.bias", (2 * h,)))
        tile = torch.arange(h) % s  # the reference repeats 't n -> (v t) n'
        raw = inv_dt.to(torch.float64)
        dt = _positive(torch.sinh(raw) if meta.dt_fast else raw, meta.dt_transform)  # [H, 1|M]
        if tied:
            scale = torch.ones(h, 1, dtype=torch.float64)
            out[q + "s4d.kernel.log_dt"] = _f32(inv_dt[:, 0] if bitwise_dt else torch.log(dt[:, 0]))
        else:  # dt per mode: fold it into A and B, dt = 1 (same dA, dB for ZOH and bilinear)
            scale = dt
            out[q + "s4d.kernel.log_dt"] = torch.zeros(h)
        if bitwise_real:
            out[q + "s4d.kernel.a_real_raw"] = _f32(a_real[tile])
        else:
            positive = _positive(a_real, meta.real_transform)[tile] * scale
            out[q + "s4d.kernel.a_real_raw"] = _f32(positive)
        # v4: A = -re - i transform(A_imag); v3: A = -re + i A_imag (exact sign flips)
        imag = _positive(a_imag, meta.imag_transform) if dialect == "v4" else a_imag.double()
        out[q + "s4d.kernel.a_imag"] = _f32(dia["imag_sign"] * imag[tile] * scale)
        if tied:
            out[q + "s4d.kernel.b"] = _f32(b[tile])
        else:
            b_c = torch.view_as_complex(b.to(torch.float64).contiguous())[tile] * scale
            out[q + "s4d.kernel.b"] = _f32(torch.view_as_real(b_c))
        out[q + "s4d.kernel.c"] = _f32(c)
        out[q + "s4d.kernel.d"] = _f32(d[0])
    src.finish()
    real_transform = meta.real_transform if bitwise_real else "none"
    cfg = plan.model_config(2 * m, init="legs", discretization=meta.disc,
                            real_transform=real_transform, trainable_B=True)
    notes = [f"reference layout {dialect} ({'S4Block/SSMKernelDiag' if dialect == 'v4' else 'S4/SSKernelDiag'})"]
    notes.append("C, D, B, A_imag and the linear/norm weights copied bit for bit"
                 if tied else "C, D and the linear/norm weights copied bit for bit")
    notes.append("log_dt copied" if bitwise_dt else
                 ("dt = transform(inv_dt) evaluated in float64, log rounded to float32" if tied
                  else "per-mode dt folded into A and B in float64 (dt = 1), rounded to float32"))
    notes.append(f"A real part copied under transform {meta.real_transform!r}" if bitwise_real
                 else f"A real part evaluated from transform {meta.real_transform!r} in float64")
    return cfg, out, notes


def convert(fmt: str, tensors: dict[str, torch.Tensor], meta: ImportMeta):
    """(ModelConfig, this project's state dict, notes) from a reference state dict."""
    if fmt not in FORMATS:
        raise ImportRefused(f"unknown format {fmt!r}; expected one of {FORMATS}")
    src = _Source(tensors)
    cfg, out, notes = (_convert_example if fmt == "s4-example" else _convert_block)(src, meta)
    return cfg, out, notes


def build_network(cfg: ModelConfig, converted: dict[str, torch.Tensor]) -> S4DNetwork:
    network = S4DNetwork(cfg, seed=None)
    state = network.state_dict()
    state.update(converted)  # input_mean / input_std come from META through the config
    missing = sorted(set(network.state_dict()) - set(converted) - {"input_mean", "input_std"})
    if missing:  # a mapping bug, not a user error
        raise RuntimeError(f"importer left target keys unfilled: {missing}")
    network.load_state_dict(state, strict=True)
    return network.eval()


def import_model(fmt: str, weights: str | Path, meta_path: str | Path, out: str | Path,
                 force: bool = False) -> Path:
    """Convert `weights` (reference layout `fmt`) + META.json into the checkpoint folder `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ImportRefused(f"{out}: exists and is not empty (pass --force to overwrite)")
    meta = read_meta(meta_path)
    tensors, where = read_state_dict(weights)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})
    cfg, converted, notes = convert(fmt, tensors, meta)
    if dtypes != ["float32"]:
        notes.append(f"source dtypes {dtypes} rounded to float32")
    try:
        task = TaskConfig(
            name=meta.name or out.name, description=meta.description,
            sample_rate=meta.sample_rate, input_channels=cfg.d_input, class_names=meta.classes,
            frame_size=meta.frame_size, labels_from_generated_data=meta.labels_from_generated_data,
        )
        record = {"imported_from": {"format": fmt, "weights": Path(weights).name, "entry": where,
                                    "source": meta.source, "notes": notes}}
        config = CheckpointConfig(model=cfg, task=task, training=record, metrics=meta.metrics)
    except ValidationError as exc:
        raise ImportRefused(f"META does not fit the tensors: {exc}") from exc
    network = build_network(cfg, converted)
    save_checkpoint(out, network, config)
    (out / "CARD.md").write_text(model_card(config, fmt, Path(weights).name, where, notes))
    return out


def model_card(config: CheckpointConfig, fmt: str, weights: str, where: str, notes: list[str]) -> str:
    m, t = config.model, config.task
    layer = ("standalone S4D layer (models/s4/s4d.py)" if fmt == "s4-example"
             else "S4Block in diagonal mode (models/s4/s4.py)")
    lines = [
        f"# {t.name}", "",
        t.description or "An S4D model imported from the reference S4 code.", "",
        "## Where the weights came from",
        f"- Trained elsewhere with the reference S4 repository (state-spaces/s4): example.py's "
        f"S4Model around the {layer}; imported by `s4d import --format {fmt}`.",
        f"- File: `{weights}` ({where})." + (f" Source: {config.training['imported_from']['source']}."
                                             if config.training["imported_from"]["source"] else ""),
        *[f"- {n}." for n in notes],
        "- Data, split and accuracy are whatever the original training used: this project did not "
        "train or evaluate this model." + (" Reported metrics: "
                                           + ", ".join(f"{k} {v}" for k, v in config.metrics.items())
                                           if config.metrics else ""),
        "", "## Model",
        f"- S4D, {m.discretization} discretisation, H={m.d_model}, N={m.d_state} "
        f"({m.n_modes} complex modes), {m.n_layers} layers, {'pre' if m.prenorm else 'post'}-norm "
        "LayerNorm, GELU + GLU, mean pooling, causal.",
        f"- Input: {m.d_input} channel(s) at {t.sample_rate} Hz, patch size {m.patch_size}, "
        f"streaming frame {t.frame_size} samples.",
        f"- Classes ({m.d_output}): {', '.join(config.class_names())}.",
        "", "## How to retrain",
        "- With the reference code, then import again; or with `s4d train` from scratch "
        "(the imported weights are not a training recipe).", "",
    ]
    return "\n".join(lines)


__all__ = ["FORMATS", "ImportMeta", "ImportRefused", "convert", "import_model", "read_meta",
           "read_state_dict", "build_network"]
