"""The served step's wall time while another thread of the process wants the GIL.

In the engine process the device lane thread runs the model's step while the event loop (the
main thread) plans rounds and answers front-ends. Every torch call releases the GIL and must
win it back; when the loop is in pure Python it keeps the GIL until it blocks or the
interpreter's switch interval (5 ms by default) runs out. So a step made of many torch calls
can take several switch intervals under load though the GPU needs far less. This measures it
without sockets: `Backend.step_slots` on real slab rows, alone and beside a thread that runs
Python for `--busy-ms` then sleeps `--idle-ms` (an event loop that busy), per path:

- `slab`: the served path on CUDA, gather / step / scatter as one graph replay
  (`SlabGraphedStep`): five torch calls;
- `generic`: the gather / step / scatter of `Backend.step_slots` around the graphed step
  (`GraphedStep`, the served path before): ~35 torch calls.

    python -m bench.step_contention --device cuda --model kws-s4d --batches 256,1024,2048
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from server.backends.base import Backend
from server.backends.torch_backend import TorchBackend
from server.engine.planner import bucket


def hog(stop: threading.Event, busy_s: float, idle_s: float) -> None:
    """Pure Python for busy_s (holds the GIL but for forced switches), then sleep idle_s."""
    x = 0
    while not stop.is_set():
        end = time.perf_counter() + busy_s
        while time.perf_counter() < end:
            x += 1
        time.sleep(idle_s)


def time_steps(step, slots, frames, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step(slots, frames)
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--model", default="kws-s4d")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="256,1024,2048")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--busy-ms", type=float, default=3.0)
    p.add_argument("--idle-ms", type=float, default=2.0)
    p.add_argument("--switch-ms", default="5,0.5", help="sys.setswitchinterval values, ms")
    p.add_argument("--paths", default="slab,generic")
    p.add_argument("--out", default=None, help="write the rows as JSON here too")
    args = p.parse_args()

    be = TorchBackend.load(Path(args.checkpoints) / args.model, args.device)
    batches = [int(b) for b in args.batches.split(",")]
    storage = be.new_slab(max(batches) + 8)
    sizes = sorted({bucket(b) for b in batches})
    be.prepare_streaming(storage, sizes)
    rng = np.random.default_rng(0)
    m = be.metadata
    paths = {"slab": lambda slots, frames: be.step_slots(storage, slots, frames),
             "generic": lambda slots, frames: Backend.step_slots(be, storage, slots, frames)}
    rows = []
    for b in batches:
        slots = rng.permutation(storage.capacity)[:b].tolist()
        frames = (rng.standard_normal((bucket(b), m.frame_size, m.input_channels)) * 0.1
                  ).astype(np.float32)
        for name in args.paths.split(","):
            step = paths[name]
            for switch in (float(s) for s in args.switch_ms.split(",")):
                sys.setswitchinterval(switch / 1000)
                for contended in (False, True):
                    stop = threading.Event()
                    th = None
                    if contended:
                        th = threading.Thread(target=hog, daemon=True,
                                              args=(stop, args.busy_ms / 1e3, args.idle_ms / 1e3))
                        th.start()
                    time_steps(step, slots, frames, 5)  # warm
                    ms = time_steps(step, slots, frames, args.steps)
                    stop.set()
                    if th is not None:
                        th.join()
                    q = np.percentile(ms, [50, 90, 99])
                    rows.append(dict(model=args.model, batch=b, path=name, switch_ms=switch,
                                     contended=contended, p50_ms=round(float(q[0]), 3),
                                     p90_ms=round(float(q[1]), 3), p99_ms=round(float(q[2]), 3),
                                     max_ms=round(max(ms), 3)))
                    print(json.dumps(rows[-1]), flush=True)
    sys.setswitchinterval(0.005)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"\n{dev}; busy thread {args.busy_ms} ms Python / {args.idle_ms} ms sleep\n")
    print("| batch | path | switch ms | alone p50 / p99 ms | contended p50 / p99 / max ms |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        if r["contended"]:
            alone = next(a for a in rows if not a["contended"] and all(
                a[k] == r[k] for k in ("batch", "path", "switch_ms")))
            print(f"| {r['batch']} | {r['path']} | {r['switch_ms']} | {alone['p50_ms']} / "
                  f"{alone['p99_ms']} | {r['p50_ms']} / {r['p99_ms']} / {r['max_ms']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=dev, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
