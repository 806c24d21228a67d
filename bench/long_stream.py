"""Cost per second of a long stream: does a 1-hour stream cost the same per second as a
1-second one? (issue 15: the state stays O(N) whatever the length).

Runs the server's own per-frame work (a backend's slab gather -> step -> scatter, with CUDA
graphs on a GPU, as server/engine does) for one stream of `--seconds` of audio, frame by
frame, and reports the wall time per second of audio over the first second and over every
minute, the state bytes and the process memory before and after.

    python -m bench.long_stream --checkpoint checkpoints/kws-s4d --seconds 3600 [--device cuda]
        [--sessions 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run(checkpoint: str, seconds: float, device: str, sessions: int, bucket_s: float = 60.0,
        seed: int = 0, max_wall_s: float | None = None) -> dict:
    """`max_wall_s`: stop early (at a bucket's end) when the wall time would pass it; the
    report then says how much of the stream ran (`stream_seconds`, `stopped_early`)."""
    import torch

    from server.backends.torch_backend import TorchBackend

    be = TorchBackend.load(Path(checkpoint), device)
    meta = be.metadata
    frame, rate = meta.frame_size, meta.sample_rate
    slab = be.new_slab(sessions)
    slots = list(range(sessions))
    rng = np.random.default_rng(seed)
    block = (0.1 * rng.standard_normal((64, sessions, frame, meta.input_channels))).astype(np.float32)
    n_frames = int(round(seconds * rate / frame))
    per_bucket = max(1, int(round(bucket_s * rate / frame)))
    first_second = max(1, int(round(rate / frame)))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step(i: int) -> None:
        state = slab.gather(slots)
        logits, new = be.step(block[i % 64], state)
        slab.scatter(slots, new)

    for i in range(3 * first_second):  # warm-up (graph capture, allocator), not timed
        step(i)
    slab = be.new_slab(sessions)  # the measured stream starts from a fresh state
    rss0 = rss_mb()
    mem0 = torch.cuda.memory_allocated() if device.startswith("cuda") else None
    buckets: list[float] = []
    first = None
    sync()
    t_bucket = t_start = time.perf_counter()
    done = n_frames
    for i in range(n_frames):
        step(i)
        if i + 1 == first_second:
            sync()
            first = (time.perf_counter() - t_start) / (first_second * frame / rate)
        if (i + 1) % per_bucket == 0:
            sync()
            now = time.perf_counter()
            buckets.append((now - t_bucket) / (per_bucket * frame / rate))
            t_bucket = now
            if max_wall_s and (now - t_start) * (len(buckets) + 1) / len(buckets) > max_wall_s:
                done = i + 1
                break
    sync()
    total = time.perf_counter() - t_start
    n_frames, stopped = done, done < int(round(seconds * rate / frame))
    mem1 = torch.cuda.memory_allocated() if device.startswith("cuda") else None
    state_bytes = sum(int(np.prod(t.shape[1:])) * t.element_size() for t in slab.gather([0]).values())
    return {
        "checkpoint": checkpoint, "device": device,
        "hardware": torch.cuda.get_device_name(0) if device.startswith("cuda") else
        f"CPU, {torch.get_num_threads()} threads",
        "sessions": sessions, "stream_seconds": n_frames * frame / rate, "frame_size": frame,
        "frames": n_frames, "wall_s": round(total, 2), "stopped_early": stopped,
        "requested_seconds": seconds,
        "cost_per_audio_second_first_second_ms": round(1000 * first, 4),
        "cost_per_audio_second_by_bucket_ms": [round(1000 * b, 4) for b in buckets],
        "bucket_s": bucket_s,
        "cost_per_audio_second_overall_ms": round(1000 * total / (n_frames * frame / rate), 4),
        "last_over_first_bucket": round(buckets[-1] / buckets[0], 3) if len(buckets) > 1 else None,
        "state_bytes_per_session": state_bytes,
        "rss_mb_before_after": [round(rss0, 1), round(rss_mb(), 1)],
        "cuda_allocated_before_after": [mem0, mem1],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/kws-s4d")
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--bucket-s", type=float, default=60.0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--max-wall-s", type=float, help="stop early at a bucket's end past this")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    r = run(args.checkpoint, args.seconds, args.device, args.sessions, args.bucket_s,
            max_wall_s=args.max_wall_s)
    text = json.dumps(r, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
