"""Training loop for the demo tasks (nanoGPT style: one readable function does the work).

    out/                       the run folder
      config.json              best checkpoint so far (by validation accuracy); servable
      model.safetensors
      last/                    the latest epoch, to resume from
        config.json, model.safetensors
        training_state.safetensors   optimizer moments, RNG state (tensors, no pickle)
        training_state.json          epoch, scheduler, optimizer groups, best, history, recipe
      metrics.json             test accuracy (overall, per class), confusion matrix, history
      confusion.png            the test confusion matrix

AdamW with three parameter groups (`S4DNetwork.parameter_groups`): matrices with weight
decay, vectors without, and the SSM parameters (log dt, A) at their own lr (1e-3) without
weight decay. The lr follows a linear warmup then a cosine decay to zero, stepped per batch.
The test split is evaluated once, with the best-on-validation weights, and never selects
anything.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .checkpoint import load_checkpoint, save_checkpoint
from .config import CheckpointConfig, ModelConfig, TaskConfig
from .network import S4DNetwork
from .tasks import TaskPreset

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


# ----------------------------------------------------------------------------- data
@dataclass
class Split:
    x: torch.Tensor  # [n, L_max, C] float32, right-padded
    lengths: torch.Tensor | None  # [n] or None when every sequence has length L_max
    y: torch.Tensor  # [n] int64
    #: optional per-step targets [n, steps] in [0, 1] for an auxiliary loss (training split only)
    aux: torch.Tensor | None = None
    #: optional label sequences [n, L] int64 (ids >= 1, right-padded with 0 = CTC's blank) for
    #: an auxiliary CTC loss, e.g. each clip's phones (training split only)
    phones: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor):
        if self.lengths is None:
            return self.x[idx], None, self.y[idx]
        lengths = self.lengths[idx]
        return self.x[idx, : int(lengths.max())], lengths, self.y[idx]


def make_split(seqs, y) -> Split:
    """From an array [n, L] / [n, L, C] or a list of [L_i, C] arrays."""
    if isinstance(seqs, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(seqs, dtype=np.float32))
        return Split(x if x.ndim == 3 else x.unsqueeze(-1), None, torch.as_tensor(y).long())
    lengths = torch.tensor([len(s) for s in seqs])
    x = torch.zeros(len(seqs), int(lengths.max()), seqs[0].shape[1])
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
    return Split(x, lengths, torch.as_tensor(y).long())


def concat_splits(a: Split, b: Split) -> Split:
    """Both splits' sequences in one (right-padded to the longer of the two)."""
    length = max(a.x.shape[1], b.x.shape[1])

    def padded(s: Split) -> torch.Tensor:
        return torch.nn.functional.pad(s.x, (0, 0, 0, length - s.x.shape[1]))

    def lengths_of(s: Split) -> torch.Tensor:
        return s.lengths if s.lengths is not None else torch.full((len(s),), s.x.shape[1])

    same = a.lengths is None and b.lengths is None and a.x.shape[1] == b.x.shape[1]
    lengths = None if same else torch.cat([lengths_of(a), lengths_of(b)])
    phones = None
    if a.phones is not None and b.phones is not None:
        width = max(a.phones.shape[1], b.phones.shape[1])
        phones = torch.cat([torch.nn.functional.pad(s.phones, (0, width - s.phones.shape[1]))
                            for s in (a, b)])
    return Split(torch.cat([padded(a), padded(b)]), lengths, torch.cat([a.y, b.y]),
                 phones=phones)


def load_data(preset: TaskPreset) -> dict[str, Split]:
    from .data import load_split

    sizes = {"train": preset.n_train, "val": preset.n_val, "test": preset.n_test}
    data = {
        split: make_split(*load_split(preset.task, split, n=n, seed=preset.data_seed))
        for split, n in sizes.items()
    }
    if preset.train_subset:
        train, k = data["train"], preset.train_subset
        data["train"] = Split(
            train.x[:k], None if train.lengths is None else train.lengths[:k], train.y[:k]
        )
    return data


def input_stats(task: str, train: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the train split's valid samples (fsdd: `channel_stats()`)."""
    if task == "fsdd":
        from .data.fsdd import channel_stats

        mean, std = channel_stats()
        return [float(v) for v in mean], [float(v) for v in std]
    x = train.x.double()
    if train.lengths is None:
        flat = x.reshape(-1, x.shape[-1])
    else:
        mask = torch.arange(x.shape[1]).unsqueeze(0) < train.lengths.unsqueeze(1)
        flat = x[mask]
    return flat.mean(0).tolist(), flat.std(0).clamp(min=1e-6).tolist()


def feature_stats(model: ModelConfig, train: Split, max_items: int = 4000) -> dict:
    """Per-band mean / std of the log-mel front end's output over (up to max_items of) the
    train split: the front end's standardisation (valid steps only)."""
    net = S4DNetwork(model.model_copy(update=dict(feature_mean=None, feature_std=None)), seed=0)
    with torch.no_grad():
        feats = net.frontend.log_mel(net.patches(train.x[:max_items].float())).double()
    if train.lengths is not None:
        steps = torch.div(train.lengths[:max_items], model.patch_size, rounding_mode="floor")
        feats = feats[torch.arange(feats.shape[1]).unsqueeze(0) < steps.unsqueeze(1)]
    flat = feats.reshape(-1, feats.shape[-1])
    return dict(feature_mean=flat.mean(0).tolist(),
                feature_std=flat.std(0).clamp(min=1e-3).tolist())


def augment(x: torch.Tensor, lengths, preset: TaskPreset, net: S4DNetwork, gen):
    """Train-time augmentation -> (x, lengths): time shift (fixed-length data), time stretch
    (variable-length data, changes the lengths), formant warp of cepstral features,
    per-sequence channel gain and offset, additive
    noise (the last three in units of the input std), SpecAugment-style time/channel masks."""
    mean, std = net.input_mean.cpu(), net.input_std.cpu()
    if preset.shift_augment and lengths is None:
        x = random_shift(x, preset.shift_augment, gen)
    if preset.stretch_augment > 1 and lengths is not None:
        x, lengths = time_stretch(x, lengths, preset.stretch_augment, gen)
    if preset.cepstral_warp > 1:  # a new vocal tract per sequence (model.data.voice)
        from .data.voice import cepstral_warp

        log_a = (2 * torch.rand(x.shape[0], generator=gen) - 1) * math.log(preset.cepstral_warp)
        x = torch.einsum("bij,blj->bli", cepstral_warp(log_a.exp(), x.shape[2]), x)
    if preset.scale_augment:
        gain = 1 + preset.scale_augment * torch.randn(x.shape[0], 1, x.shape[2], generator=gen)
        x = mean + (x - mean) * gain
    if preset.offset_augment:
        x = x + preset.offset_augment * std * torch.randn(x.shape[0], 1, x.shape[2], generator=gen)
    if preset.noise_augment:
        x = x + preset.noise_augment * std * torch.randn(x.shape, generator=gen)
    if (preset.time_mask or preset.channel_mask) and net.frontend is None:  # logmel: its own
        x = spec_mask(x, lengths, preset.time_mask, preset.channel_mask, mean, gen)
    return x, lengths


def time_stretch(x: torch.Tensor, lengths: torch.Tensor, factor: float, gen: torch.Generator):
    """Resample each sequence by linear interpolation to length round(L * r), with r
    log-uniform in [1/factor, factor]; right-padded with zeros like the input."""
    b, _, c = x.shape
    log_r = (2 * torch.rand(b, generator=gen) - 1) * math.log(factor)
    new_len = (lengths.double() * log_r.exp().double()).round().long().clamp(min=2)
    new_len = torch.minimum(new_len, lengths.clamp(min=2) * 2)
    j = torch.arange(int(new_len.max())).double().unsqueeze(0)  # [1, L']
    pos = j * (lengths - 1).clamp(min=0).double().unsqueeze(1) / (new_len - 1).double().unsqueeze(1)
    pos = torch.minimum(pos, (lengths - 1).clamp(min=0).double().unsqueeze(1))
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (lengths - 1).clamp(min=0).unsqueeze(1))
    frac = (pos - lo.double()).float().unsqueeze(-1)
    gather = lambda idx: x.gather(1, idx.unsqueeze(-1).expand(-1, -1, c))  # noqa: E731
    out = gather(lo) * (1 - frac) + gather(hi) * frac
    valid = j < new_len.unsqueeze(1)
    return out * valid.unsqueeze(-1), new_len


def spec_mask(x, lengths, max_time: int, max_channels: int, fill: torch.Tensor, gen):
    """Per sequence, one time span of width U{0..max_time} (inside the valid steps) and one
    band of U{0..max_channels} adjacent channels are set to `fill` (the input mean)."""
    b, length, c = x.shape
    keep = torch.ones(b, length, c, dtype=torch.bool)
    if max_time:
        valid = lengths if lengths is not None else torch.full((b,), length)
        width = torch.minimum(torch.randint(0, max_time + 1, (b,), generator=gen), valid // 2)
        start = (torch.rand(b, generator=gen) * (valid - width + 1)).long()
        t = torch.arange(length).unsqueeze(0)
        span = (t >= start.unsqueeze(1)) & (t < (start + width).unsqueeze(1))
        keep &= ~span.unsqueeze(-1)
    if max_channels:
        width = torch.randint(0, max_channels + 1, (b,), generator=gen)
        start = (torch.rand(b, generator=gen) * (c - width + 1)).long()
        ch = torch.arange(c).unsqueeze(0)
        band = (ch >= start.unsqueeze(1)) & (ch < (start + width).unsqueeze(1))
        keep &= ~band.unsqueeze(1)
    return torch.where(keep, x, fill.to(x.dtype))


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Circular time shift by a random amount in [-max_shift, max_shift] per sequence."""
    b, length, _ = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=gen)
    idx = (torch.arange(length).unsqueeze(0) - shift) % length
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


# ----------------------------------------------------------------------------- config
def build_config(preset: TaskPreset, init: str, n_classes: int, stats) -> CheckpointConfig:
    from .data import TASKS

    info = TASKS[preset.task]
    extra = {}
    if preset.model.get("front_end") == "logmel" and not preset.model.get("sample_rate"):
        extra["sample_rate"] = preset.sample_rate or info.sample_rate  # the mel scale's Hz
    model = ModelConfig(
        d_input=info.input_channels, d_output=n_classes, init=init, lr_ssm=preset.lr_ssm,
        input_mean=stats[0], input_std=stats[1], pooling="mean", bidirectional=False,
        **preset.model, **extra,
    )  # fmt: skip
    description = info.description + (f" ({preset.rate_note})" if preset.rate_note else "")
    task = TaskConfig(
        name=preset.task, description=description,
        sample_rate=preset.sample_rate or info.sample_rate, input_channels=info.input_channels,
        class_names=list(info.class_names), frame_size=preset.frame_size,
        labels_from_generated_data=preset.task in ("kws", "ecg"), input_units=info.input_units,
    )  # fmt: skip
    return CheckpointConfig(model=model, task=task)


def make_aux_head(width: int, seed: int, outputs: int = 1) -> torch.nn.Linear:
    """A linear per-step head for an auxiliary loss: training only, never saved, so the
    checkpoint (and streaming) is the plain network's."""
    head = torch.nn.Linear(width, outputs)
    gen = torch.Generator().manual_seed(seed * 7919 + 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * width**-0.5)
        head.bias.zero_()
    return head


def aux_loss(head: torch.nn.Linear, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the head's per-step logits on features `h` [B, steps, H] against
    per-step targets [B, steps] in [0, 1] (`train` checks the step counts agree)."""
    return F.binary_cross_entropy_with_logits(head(h).squeeze(-1).float(), target.float())


def ctc_loss(head: torch.nn.Linear, h: torch.Tensor, targets: torch.Tensor,
             lengths: torch.Tensor | None, patch_size: int) -> torch.Tensor:
    """CTC (blank 0) of the head's per-step outputs on features `h` [B, steps, H] against
    label sequences [B, L] right-padded with 0; an empty sequence asks for blanks only.
    Alignments that cannot fit (more labels than steps) count zero, not infinity."""
    logp = head(h).float().log_softmax(-1).transpose(0, 1)  # [steps, B, C]
    steps = torch.full((h.shape[0],), h.shape[1], dtype=torch.long, device=h.device)
    if lengths is not None:
        steps = torch.div(lengths, patch_size, rounding_mode="floor").clamp(max=h.shape[1])
    return F.ctc_loss(logp, targets, steps, (targets > 0).sum(1), blank=0,
                      zero_infinity=True)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- state I/O
def save_training_state(directory: Path, optimizer, scheduler, meta: dict) -> None:
    """Optimizer moments + RNG as safetensors, everything else as JSON: no pickle anywhere."""
    sd = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = dict(meta, optimizer_param_groups=sd["param_groups"], scheduler=sched)
    save_file(tensors, str(directory / STATE_TENSORS))
    (directory / STATE_JSON).write_text(json.dumps(meta, indent=1) + "\n")


def load_training_state(directory: Path, optimizer, scheduler) -> dict:
    meta = json.loads((directory / STATE_JSON).read_text())
    tensors = load_file(str(directory / STATE_TENSORS))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    sched = dict(meta["scheduler"], lr_lambdas=[None] * len(optimizer.param_groups))
    scheduler.load_state_dict(sched)
    torch.set_rng_state(tensors["rng.torch"])
    return meta


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(net: S4DNetwork, split: Split, device, batch_size: int = 128):
    """(mean loss, accuracy, predictions) over a split."""
    net.eval()
    losses, preds = [], []
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        x, lengths, y = split.batch(idx)
        lengths = None if lengths is None else lengths.to(device)
        logits = net(x.to(device), lengths)
        losses.append(F.cross_entropy(logits, y.to(device), reduction="sum").item())
        preds.append(logits.argmax(-1).cpu())
    pred = torch.cat(preds)
    return sum(losses) / len(split), (pred == split.y).float().mean().item(), pred


def confusion(y: torch.Tensor, pred: torch.Tensor, n: int) -> np.ndarray:
    return np.bincount(y.numpy() * n + pred.numpy(), minlength=n * n).reshape(n, n)


def plot_confusion(cm: np.ndarray, names: list[str], title: str, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # a bare GPU box: the matrix is in metrics.json anyway
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 0.8 + 0.5 * len(names)))
    rate = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rate[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


# ----------------------------------------------------------------------------- training
def train(
    preset: TaskPreset,
    out: str | Path,
    init: str = "legs",
    seed: int = 0,
    device: str = "cpu",
    resume: str | Path | None = None,
    data: dict[str, Split] | None = None,
    progress: bool = True,
    command: str | None = None,
    log=print,
    stop_after: int | None = None,
    deadline: float | None = None,
    init_from: str | Path | None = None,
) -> dict:
    """Train, keep the best checkpoint in `out`, evaluate it on the test split; return metrics.

    `stop_after=k` ends this invocation after k epochs (a time-boxed run; `resume` continues it)
    and returns {} without the test evaluation. `deadline` (a `time.time()` value) fits the run
    to a time box: after the first epoch, the epoch count (and the cosine's end with it) is cut
    to what fits by then at that epoch's pace, and training also stops after the last epoch
    expected to finish in time; the best checkpoint is still evaluated on the test split (the
    metrics record `epochs_completed`). `init_from` (a checkpoint folder) fine-tunes: the network
    starts from its weights and keeps its architecture and input normalisation (the encoder's
    weights were learned against that scaling); the optimizer and schedule start fresh.
    """
    out = Path(out)
    dev = torch.device(device)
    torch.manual_seed(seed)
    data = data if data is not None else load_data(preset)
    train_set, val_set, test_set = data["train"], data["val"], data["test"]
    if preset.refit_on_val:  # the recipe was chosen on validation before; now it trains too
        # a training source that mixes clips itself (model.data.online_mix) joins them its way
        join = getattr(train_set, "concat", None)
        train_set = join(val_set) if join else concat_splits(train_set, val_set)
    from .data import TASKS

    n_classes = (
        len(TASKS[preset.task].class_names) if preset.task in TASKS else int(train_set.y.max()) + 1
    )

    # model, optimizer, schedule (restored from `resume/last` when resuming)
    if resume is not None:
        if Path(resume).resolve() != out.resolve():  # continue into a new folder: copy the run
            shutil.copytree(resume, out, dirs_exist_ok=True)
        resume = out
        net, config = load_checkpoint(out / "last", device=dev)
        net.train()
    elif init_from is not None:
        net, config = load_checkpoint(init_from, device=dev)
        if config.model.d_output != n_classes:
            raise ValueError(f"{init_from} has {config.model.d_output} outputs, task {n_classes}")
        config = config.model_copy(update={"training": {}, "metrics": {}})
        net.train()
    else:
        config = build_config(preset, init, n_classes, input_stats(preset.task, train_set))
        if config.model.front_end == "logmel":
            config = config.model_copy(update={"model": config.model.model_copy(
                update=feature_stats(config.model, train_set))})
        net = S4DNetwork(config.model, seed=seed).to(dev)
    if net.frontend is not None and (preset.time_mask or preset.channel_mask):
        net.frontend.masks = (preset.time_mask, preset.channel_mask)  # SpecAugment on log-mels
    groups = net.parameter_groups(preset.lr, preset.weight_decay)

    def training_head(outputs: int = 1) -> torch.nn.Linear:
        """A training-only head on the per-step features, optimised with the network."""
        head = make_aux_head(config.model.d_model, seed, outputs).to(dev)
        groups.append({"params": list(head.parameters()), "lr": preset.lr, "weight_decay": 0.0})
        return head

    aux_head = None
    if preset.aux_weight:
        if train_set.aux is None:
            raise ValueError("aux_weight > 0 needs per-step targets on the training split (Split.aux)")
        steps = train_set.x.shape[1] // config.model.patch_size
        if train_set.aux.shape[1] != steps:  # e.g. targets made for another patch size
            raise ValueError(f"Split.aux has {train_set.aux.shape[1]} steps per sequence, the "
                             f"network takes {steps} (patch {config.model.patch_size})")
        if preset.shift_augment or preset.stretch_augment > 1:  # would move x, not the targets
            raise ValueError("aux_weight cannot be combined with time shift / stretch augmentation")
        aux_head = training_head()
    ctc_head = None
    if preset.ctc_weight:
        if train_set.phones is None or len(train_set.phones) != len(train_set):
            raise ValueError("ctc_weight > 0 needs label sequences on the training split "
                             "(Split.phones), one per sequence")
        n_labels = int(train_set.phones.max()) + 1  # with the blank, 0
        ctc_head = training_head(n_labels)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(train_set) / preset.batch_size)
    total_steps = preset.epochs * steps_per_epoch
    warmup = max(1, round(preset.warmup_epochs * steps_per_epoch))
    horizon = [total_steps]  # the cosine's end; a deadline may pull it in (see below)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, horizon[0])
    )
    start_epoch, best_acc, history, wall = 0, -1.0, [], 0.0
    if resume is not None:
        meta = load_training_state(out / "last", optimizer, scheduler)
        start_epoch, best_acc, history, wall = (
            meta["epoch"],
            meta["best_val_accuracy"],
            meta["history"],
            meta["wall_s"],
        )
        log(f"resumed from {resume}/last at epoch {start_epoch} (best val acc {best_acc:.4f})")
    # a fine-tune keeps its checkpoint's architecture: record that, not the preset's default
    model = {k: getattr(config.model, k) for k in preset.model} if init_from else preset.model
    recipe = dict(asdict(preset), model=model, init=config.model.init, seed=seed, device=str(dev),
                  optimizer="AdamW(betas=0.9,0.98)", schedule=f"linear warmup {warmup} steps + cosine to 0",
                  steps=total_steps, command=command,
                  init_from=None if init_from is None else str(init_from))  # fmt: skip
    log(f"{preset.task}: {net.num_parameters():,} parameters, train/val/test "
        f"{len(train_set)}/{len(val_set)}/{len(test_set)}, {steps_per_epoch} steps/epoch")  # fmt: skip

    end_epoch = preset.epochs if stop_after is None else min(preset.epochs, start_epoch + stop_after)
    last_epoch_s = 0.0
    for epoch in range(start_epoch, end_epoch):
        if epoch >= end_epoch:  # pulled in by the deadline fit below
            break
        if deadline is not None and epoch > start_epoch and time.time() + last_epoch_s > deadline:
            log(f"deadline: stopping after epoch {epoch} of {preset.epochs}")
            break
        t0 = time.time()
        net.train()
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(train_set), generator=gen)
        bar = _bar(steps_per_epoch, f"epoch {epoch + 1}/{preset.epochs}", progress)
        seen, loss_sum, correct = 0, 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * preset.batch_size : (step + 1) * preset.batch_size]
            x, lengths, y = train_set.batch(idx)
            x, lengths = augment(x, lengths, preset, net, gen)
            x, y = x.to(dev), y.to(dev)
            lengths = None if lengths is None else lengths.to(dev)
            h = net.features(x, lengths)  # forward() is head(features): the heads share h
            logits = net.head(h, lengths)
            loss = F.cross_entropy(logits, y)
            if aux_head is not None:
                loss = loss + preset.aux_weight * aux_loss(aux_head, h, train_set.aux[idx].to(dev))
            if ctc_head is not None:
                loss = loss + preset.ctc_weight * ctc_loss(
                    ctc_head, h, train_set.phones[idx].to(dev), lengths, config.model.patch_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if preset.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), preset.grad_clip)
            optimizer.step()
            scheduler.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(-1) == y).sum().item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            sps=f"{seen / (time.time() - t0):.0f}")  # fmt: skip
        bar.close()
        val_loss, val_acc, _ = evaluate(net, val_set, dev)
        wall += time.time() - t0
        row = dict(epoch=epoch + 1, train_loss=loss_sum / seen, train_accuracy=correct / seen,
                   val_loss=val_loss, val_accuracy=val_acc, lr=optimizer.param_groups[0]["lr"],
                   samples_per_s=seen / (time.time() - t0), wall_s=wall)  # fmt: skip
        history.append(row)
        if deadline is not None and epoch == start_epoch:
            pace = time.time() - t0  # this epoch, including validation
            fit = epoch + 1 + int(max(0.0, deadline - time.time()) // max(pace, 1e-3))
            if fit < end_epoch:
                end_epoch = fit
                horizon[0] = fit * steps_per_epoch
                recipe["epochs_fitted_to_deadline"] = fit
                log(f"deadline: {fit} epochs fit ({pace:.1f} s per epoch); cosine ends there")
        improved = val_acc > best_acc or preset.refit_on_val  # refit: the last epoch is kept
        log(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}{' (best)' if improved else ''} | {wall:.0f}s")  # fmt: skip
        if improved:
            best_acc = val_acc
            # refit: the validation split is training data, so its score says nothing
            config = config.model_copy(update={"training": recipe, "metrics": {
                "val_accuracy": None if preset.refit_on_val else val_acc,
                "best_epoch": epoch + 1}})  # fmt: skip
            save_checkpoint(out, net, config)
        save_checkpoint(out / "last", net, config)
        meta = dict(
            epoch=epoch + 1, best_val_accuracy=best_acc, history=history, wall_s=wall, recipe=recipe
        )
        save_training_state(out / "last", optimizer, scheduler, meta)
        last_epoch_s = time.time() - t0

    if end_epoch < preset.epochs and deadline is None:
        log(f"stopped after epoch {end_epoch}; continue with --resume {out}")
        return {}
    return finish(out, test_set, dev, history, wall, log)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30, dynamic_ncols=True)  # fmt: skip


def finish(out: Path, test_set: Split, dev, history: list, wall: float, log=print) -> dict:
    """Evaluate the best checkpoint on the test split; write metrics into config, JSON, PNG."""
    from .evaluation import expected_calibration_error, predict_probs
    from .streaming import StreamingNetwork

    net, config = load_checkpoint(out, device=dev)
    test_loss, test_acc, pred = evaluate(net, test_set, dev)
    probs = predict_probs(net, test_set.x, dev, test_set.lengths)
    ece = expected_calibration_error(probs, test_set.y.numpy())
    names = config.class_names()
    cm = confusion(test_set.y, pred, len(names))
    per_class = {n: round(float(cm[i, i] / max(cm[i].sum(), 1)), 4) for i, n in enumerate(names)}
    with torch.no_grad():
        state_bytes = StreamingNetwork(
            net.cpu().float(), config.task.frame_size
        ).state_bytes_per_session
    metrics = dict(
        test_accuracy=round(test_acc, 4), test_loss=round(test_loss, 4), n_test=len(test_set),
        per_class_test_accuracy=per_class, val_accuracy=config.metrics.get("val_accuracy"),
        test_ece=round(ece, 4), best_epoch=config.metrics.get("best_epoch"),
        epochs_completed=len(history), parameters=net.num_parameters(),
        state_bytes_per_session=state_bytes, train_wall_s=round(wall, 1), hardware=hardware(dev),
    )  # fmt: skip
    config = config.model_copy(update={"metrics": metrics})
    save_checkpoint(out, net.to(dev), config)
    (out / "metrics.json").write_text(
        json.dumps(dict(metrics, confusion=cm.tolist(), history=history), indent=1) + "\n"
    )
    plot_confusion(cm, names, f"{config.task.name} test: accuracy {test_acc:.3f} (n={len(test_set)})",
                   out / "confusion.png")  # fmt: skip
    log(f"test accuracy {test_acc:.4f} (n={len(test_set)}); per class: {per_class}")
    return metrics
