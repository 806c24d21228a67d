"""Precision modes against float64, per shipped checkpoint, on its test split (issue 10 item 3).

    python -m bench.precision [--device cpu|cuda] [--limit N] [--data DIR] [--out FILE.json]
    python -m bench.precision --write-data DIR [--limit N]  # test splits for the GPU machine
    python -m bench.precision --report FILE.json   # write the cards' and RESULTS.md's tables

For each checkpoint and mode (fp32 | tf32 | bf16) both serving paths run in float32 (weights
as shipped) and are compared with the float64 batch forward of the same weights on the same
clips: the batch path (`S4DNetwork` under `matmul_precision`, what REST /predict runs) and the
streaming path (`StreamingNetwork(precision=)`, the task's frame size, state carried, the last
frame partial where the clip is not a whole number of frames). Reported: max |dp| over every
clip and class (softmax probabilities), the fraction of clips whose argmax equals float64's,
and accuracy against the labels (float64's and the mode's).

The test split is `model.data.load_split(task, "test", n_test, seed=data_seed)` with the
numbers in the checkpoint's config.json (as CARD.md describes). The keyword and ECG
generators need espeak-ng / neurokit2, which the GPU machine lacks: `--write-data` stores the
full splits (keyword audio as float16, 38 MB; both paths and the reference read the same
stored clips, so the comparison is unaffected) and `--data` reads them back.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint, load_config
from model.precision import PRECISIONS, matmul_precision
from model.streaming import StreamingNetwork

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"


def shipped() -> list[Path]:
    return sorted(p.parent for p in CHECKPOINTS.glob("*/config.json"))


# ---- test splits ------------------------------------------------------------------------------
# Continuous-stream models are trained on long streams; their precision check runs on the clip
# test split of the clip model they were built from (same classes, same input).
CLIP_MODEL = {"kws-events": "kws-s4d", "ecg-monitor": "ecg-s4d"}


def split_args(config) -> tuple[str, int | None, int]:
    """(clip task, n_test, data seed) of the split a checkpoint is checked on."""
    base = CLIP_MODEL.get(config.task.name)
    if base is not None:
        return split_args(load_config(CHECKPOINTS / base))
    tr = config.training or {}
    return config.task.name, tr.get("n_test"), int(tr.get("data_seed") or 0)


def padded(seqs, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, L, C] float32 right-padded with zeros, lengths [B]."""
    seqs = [np.asarray(s, np.float32).reshape(len(s), channels) for s in seqs]
    lengths = np.array([len(s) for s in seqs], np.int64)
    x = np.zeros((len(seqs), lengths.max(), channels), np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, lengths


def load_test(config, data_dir: Path | None, limit: int | None):
    """(x [B, L, C] float32, lengths [B], labels [B], source description)."""
    task, n, seed = split_args(config)
    c = config.task.input_channels
    if data_dir is not None:
        with np.load(data_dir / f"{task}_test.npz") as d:
            x, lengths, y = d["x"].astype(np.float32), d["lengths"], d["y"]
            source = (f"the first {len(y)} clips of load_split({task!r}, 'test', {n}, "
                      f"seed={seed}), stored as {d['x'].dtype} in {data_dir.name}/{task}_test.npz")
    else:
        from model.data import load_split

        n_load = n if limit is None or task == "fsdd" else min(limit, n or limit)
        seqs, y = load_split(task, "test", n_load, seed)
        x, lengths = padded(list(seqs), c)
        source = f"load_split({task!r}, 'test', {n_load}, seed={seed})"
    if limit is not None:
        x, lengths, y = x[:limit], lengths[:limit], y[:limit]
        x = x[:, : lengths.max()]
    return x, lengths, np.asarray(y), source


def write_data(out: Path, limit: int | None = None) -> None:
    """Each clip task's test split once (first `limit` clips: the GPU call carries <= 64 MiB)."""
    from model.data import load_split

    out.mkdir(parents=True, exist_ok=True)
    done = set()
    for ckpt in shipped():
        config = load_config(ckpt)
        task, n, seed = split_args(config)
        if task in done:
            continue
        done.add(task)
        t0 = time.perf_counter()
        if limit is not None and task != "fsdd":
            n = min(limit, n or limit)
        seqs, y = load_split(task, "test", n, seed)
        x, lengths = padded(list(seqs), config.task.input_channels)
        store = x.astype(np.float16) if task == "kws" else x  # 1200 s of audio: 38 MB, not 77
        np.savez(out / f"{task}_test.npz", x=store, lengths=lengths, y=np.asarray(y))
        print(f"{task}: {len(lengths)} clips, {store.nbytes / 1e6:.1f} MB, "
              f"{time.perf_counter() - t0:.0f} s -> {out / f'{task}_test.npz'}")


# ---- the two paths ----------------------------------------------------------------------------
def last_logits(logits: torch.Tensor, lengths: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, K] from per-step logits [B, S, K] (pooling none: the last valid step)."""
    if logits.ndim == 2:
        return logits
    idx = (lengths // patch - 1).clamp(min=0)
    return logits[torch.arange(len(idx), device=logits.device), idx]


def batch_logits(net, x, lengths, mode, device, chunk: int):
    out = []
    with torch.inference_mode(), matmul_precision(mode, device):
        for s in range(0, len(x), chunk):
            xb = torch.from_numpy(x[s : s + chunk]).to(device=device, dtype=net.input_mean.dtype)
            nb = torch.from_numpy(lengths[s : s + chunk]).to(device)
            out.append(last_logits(net(xb, nb).double(), nb, net.cfg.patch_size))
    return torch.cat(out)


def stream_logits(stream: StreamingNetwork, x, lengths, device, chunk: int):
    """Each clip streamed in frames of the task's frame size (clips of one length together)."""
    patch, frame = stream.cfg.patch_size, stream.frame_size
    out = torch.zeros(len(x), stream.cfg.d_output, dtype=torch.float64)
    usable = lengths // patch * patch
    with torch.inference_mode():
        for n in np.unique(usable):
            rows_all = np.flatnonzero(usable == n)
            for s in range(0, len(rows_all), chunk):
                rows = rows_all[s : s + chunk]
                xb = torch.from_numpy(x[rows, :n]).to(device)
                state = stream.zero_state(len(rows))
                for a in range(0, n, frame):
                    logits, state = stream.step(xb[:, a : a + frame], state)
                if logits.ndim == 3:
                    logits = logits[:, -1]
                out[rows] = logits.double().cpu()
    return out


def compare(logits, ref, labels) -> dict:
    p, q = torch.softmax(logits.double().cpu(), -1), torch.softmax(ref.double().cpu(), -1)
    y = torch.as_tensor(labels)
    return {
        "max_abs_dp": float((p - q).abs().max()),
        "argmax_agreement": float((p.argmax(-1) == q.argmax(-1)).double().mean()),
        "accuracy": float((p.argmax(-1) == y).double().mean()),
    }


def run(args) -> dict:
    device = torch.device(args.device)
    rows = []
    for ckpt in shipped():
        if args.checkpoints and ckpt.name not in args.checkpoints:
            continue
        net32, config = load_checkpoint(ckpt, device=str(device), dtype=torch.float32)
        net64, _ = load_checkpoint(ckpt, device=str(device), dtype=torch.float64)
        net32.eval(), net64.eval()
        x, lengths, y, source = load_test(config, args.data, args.limit)
        t0 = time.perf_counter()
        ref = batch_logits(net64, x.astype(np.float64), lengths, "fp32", device, args.chunk)
        ref_acc = float((ref.argmax(-1).cpu() == torch.as_tensor(y)).double().mean())
        for mode in args.modes:
            stream = StreamingNetwork(net32, int(config.task.frame_size), device=device,
                                      precision=mode).eval()
            for path, logits in (
                ("batch", batch_logits(net32, x, lengths, mode, device, args.chunk)),
                ("stream", stream_logits(stream, x, lengths, device, args.chunk)),
            ):
                row = {"checkpoint": ckpt.name, "mode": mode, "path": path, "n": len(y),
                       "float64_accuracy": ref_acc, **compare(logits, ref, y), "data": source}
                rows.append(row)
                if not args.quiet:
                    print(f"{ckpt.name:9} {mode:5} {path:6} n={row['n']:5} max|dp| "
                          f"{row['max_abs_dp']:.2e} argmax {row['argmax_agreement']:.2%} "
                          f"acc {row['accuracy']:.2%} (float64 {ref_acc:.2%})", flush=True)
        if not args.quiet:
            print(f"  {ckpt.name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return {
        "benchmark": "precision",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()} threads ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "limit": args.limit,
        "command": "python -m bench.precision " + " ".join(args.argv),
        "rows": rows,
    }


# ---- cards and RESULTS.md ---------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    lines = ["| mode | path | clips | max \\|dp\\| vs float64 | argmax = float64 | accuracy |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['path']} | {r['n']} | {r['max_abs_dp']:.1e} | "
                     f"{r['argmax_agreement']:.2%} | {r['accuracy']:.2%} |")
    return "\n".join(lines)


def put_section(path: Path, heading: str, body: str, key: str = "precision") -> None:
    """Replace the section of `path` marked with `key` (or append it once)."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = path.read_text()
    block = f"{begin}\n{heading}\n\n{body}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def report(result: dict, results_md: Path, checkpoints: Path = CHECKPOINTS) -> None:
    """Write the measured tables into every measured checkpoint's CARD.md and RESULTS.md."""
    where = f"{result['device']}, torch {result['torch']}, {result['date']}, `{result['command']}`"
    by_ckpt: dict[str, list[dict]] = {}
    for r in result["rows"]:
        by_ckpt.setdefault(r["checkpoint"], []).append(r)
    parts = []
    for name, rows in by_ckpt.items():
        subset = "" if result["limit"] is None else f" (first {result['limit']} clips only)"
        body = (f"Measured on {where}; clips{subset}: {rows[0]['data']} (the task generator's "
                f"test split, `model.data.load_split`: for the keyword models the espeak-ng "
                f"generator, not the bank of the accuracy sections; agreement with float64 is "
                f"what this table measures). Float64 accuracy "
                f"{rows[0]['float64_accuracy']:.2%}. The streaming state stays float32 in every "
                f"mode.\n\n{table(rows)}")
        card = checkpoints / name / "CARD.md"
        if card.is_file():
            put_section(card, "## Precision modes (fp32 | tf32 | bf16)", body)
        parts.append(f"### {name}\n\n{table(rows)}")
    worst = {m: min((r["argmax_agreement"] for r in result["rows"] if r["mode"] == m), default=None)
             for m in PRECISIONS}
    summary = ", ".join(f"{m}: {w:.2%}" for m, w in worst.items() if w is not None)
    put_section(results_md, "## Precision modes vs float64 (issue 10 item 3)",
                f"{where}. Both paths per checkpoint; lowest argmax agreement per mode: "
                f"{summary} (target for tf32 / bf16: >= 99.5 %).\n\n" + "\n\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    import sys

    ap = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default=",".join(PRECISIONS), type=lambda s: s.split(","))
    ap.add_argument("--checkpoints", default="", type=lambda s: [v for v in s.split(",") if v])
    ap.add_argument("--limit", type=int, default=None, help="first N clips per split (CPU runs)")
    ap.add_argument("--data", type=Path, default=None, help="test splits from --write-data")
    ap.add_argument("--chunk", type=int, default=256, help="clips per forward")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    ap.add_argument("--write-data", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None, help="JSON of a run -> cards, RESULTS.md")
    ap.add_argument("--results-md", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.write_data:
        write_data(args.write_data, args.limit)
        return 0
    if args.report:
        report(json.loads(args.report.read_text()), args.results_md)
        return 0
    result = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
