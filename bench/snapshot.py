"""Snapshot cost of one streaming session, and its trip through a session store.

    python -m bench.snapshot [--checkpoint checkpoints/kws-s4d] [--reps 300]
                             [--store redis://127.0.0.1:6379/0] [--store-reps 1000]
                             [--sessions 1000] [--interval-s 1.0]

Session: the checkpoint on the torch CPU backend, streamed for 0.5 s plus a partial frame, so
the snapshot holds every layer's state, the pooling and a buffered partial frame.
Timed per repetition (p50 / p99 / mean, ms): ``capture`` (slab row -> host arrays), ``encode``
(Snapshot -> bytes), ``decode`` (bytes -> Snapshot, hash and checksum checked), ``restore``
(host arrays -> a slot of a fresh slab); ``snapshot`` = capture + encode, ``restore_total`` =
decode + restore. Then the restored session streams the rest of the clip and its final
probabilities are compared with the batch prediction (``max_abs_diff``).

With ``--store``: ``put`` + ``get`` of those bytes, sequential round trips (p50 / p99 over
``--store-reps``), the bandwidth of ``--sessions`` sessions snapshotted every ``--interval-s``
(sessions x bytes / interval), and the wall time of one such wave, as ``--sessions``
concurrent ``put`` calls and as one ``put_many`` (pipelined), to show whether the store keeps up. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from server.backends.torch_backend import TorchBackend
from server.snapshot import Snapshot, capture_state, checkpoint_hash, decode, encode, restore_state

ROOT = Path(__file__).resolve().parent.parent


def stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4)}


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def stream(backend, slab, slot: int, samples: np.ndarray, flush: bool) -> tuple[int, np.ndarray]:
    """Step whole frames (and at ``flush`` the patch-aligned rest); returns (consumed, logits)."""
    t, p = backend.frame_size, backend.metadata.patch_size
    pos, logits = 0, None
    while len(samples) - pos >= t or (flush and len(samples) - pos >= p):
        n = min(t, (len(samples) - pos) // p * p)
        logits, new = backend.step(samples[None, pos : pos + n], slab.gather([slot]))
        slab.scatter([slot], new)
        pos += n
    return pos, logits


def bench_snapshot(checkpoint: Path, reps: int) -> tuple[dict, bytes]:
    backend = TorchBackend.load(checkpoint, "cpu")
    meta = backend.metadata
    digest = checkpoint_hash(checkpoint)
    rng = np.random.default_rng(0)
    clip = (0.05 * rng.standard_normal((meta.sample_rate, meta.input_channels))).astype(np.float32)
    half = meta.sample_rate // 2 + meta.frame_size // 3
    slab = backend.new_slab(8)
    consumed, logits = stream(backend, slab, 3, clip[:half], flush=False)
    buffered = clip[consumed:half]

    def take() -> bytes:
        return encode(Snapshot(
            model=meta.name, model_hash=digest, session_id="bench", state=capture_state(slab, 3),
            received=half, consumed=consumed, segment_consumed=consumed, buffered=buffered,
            channels=meta.input_channels, emit_every=meta.frame_size, encoding="pcm_s16le",
            last_probs=softmax(logits[0]).astype(np.float32), created_unix=time.time()))

    fresh = backend.new_slab(8)
    times: dict[str, list[float]] = {k: [] for k in ("capture", "encode", "decode", "restore")}
    data = take()
    for _ in range(reps):
        t0 = time.perf_counter()
        state = capture_state(slab, 3)
        t1 = time.perf_counter()
        data = encode(Snapshot(
            model=meta.name, model_hash=digest, session_id="bench", state=state,
            received=half, consumed=consumed, segment_consumed=consumed, buffered=buffered,
            channels=meta.input_channels, emit_every=meta.frame_size, encoding="pcm_s16le",
            last_probs=softmax(logits[0]).astype(np.float32), created_unix=time.time()))
        t2 = time.perf_counter()
        snap = decode(data, expect_model=meta.name, expect_hash=digest)
        t3 = time.perf_counter()
        restore_state(fresh, 5, snap.state)
        t4 = time.perf_counter()
        for k, a, b in (("capture", t0, t1), ("encode", t1, t2), ("decode", t2, t3),
                        ("restore", t3, t4)):
            times[k].append(b - a)

    # continue the restored session in the fresh slab and compare with the batch path
    rest = np.concatenate([snap.buffered, clip[half:]])
    _, last = stream(backend, fresh, 5, rest, flush=True)
    want = softmax(backend.predict(clip[None], np.array([len(clip)], np.int64))[0])
    diff = float(np.abs(softmax(last[0]) - want).max())

    out = {k: stats(v) for k, v in times.items()}
    out["snapshot"] = stats([a + b for a, b in zip(times["capture"], times["encode"])])
    out["restore_total"] = stats([a + b for a, b in zip(times["decode"], times["restore"])])
    return {"checkpoint": str(checkpoint), "model": meta.name, "reps": reps,
            "snapshot_bytes": len(data), "state_bytes": meta.state_bytes_per_session,
            "buffered_samples": int(len(buffered)), "timings": out,
            "restored_final_vs_batch_max_abs_diff": diff}, data


async def bench_store(url: str, data: bytes, reps: int, sessions: int, interval_s: float) -> dict:
    from server.session_store import open_store

    store = open_store(url, prefix="bench:", timeout_s=2.0)
    try:
        token = await store.acquire("one", "bench", 60)
        put, get, both = [], [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            await store.put("one", data, 60, token)
            t1 = time.perf_counter()
            got = await store.get("one")
            t2 = time.perf_counter()
            assert got == data
            put.append(t1 - t0)
            get.append(t2 - t1)
            both.append(t2 - t0)
        tokens = await asyncio.gather(*(store.acquire(f"s{i}", "bench", 60) for i in range(sessions)))
        t0 = time.perf_counter()
        await asyncio.gather(*(store.put(f"s{i}", data, 60, tok) for i, tok in enumerate(tokens)))
        wave = time.perf_counter() - t0
        items = [(f"s{i}", data, tok) for i, tok in enumerate(tokens)]
        t0 = time.perf_counter()
        assert all(r is None for r in await store.put_many(items, 60))
        wave_many = time.perf_counter() - t0
        await asyncio.gather(*(store.delete(f"s{i}", tok) for i, tok in enumerate(tokens)))
        await store.delete("one", token)
    finally:
        await store.close()
    return {"url": url, "reps": reps, "put": stats(put), "get": stats(get),
            "put_plus_get": stats(both),
            "bandwidth": {"sessions": sessions, "interval_s": interval_s,
                          "bytes_per_s": int(sessions * len(data) / interval_s),
                          "MB_per_s": round(sessions * len(data) / interval_s / 1e6, 2),
                          "wave_wall_s": round(wave, 4),
                          "wave_fraction_of_interval": round(wave / interval_s, 4),
                          "wave_put_many_wall_s": round(wave_many, 4),
                          "wave_put_many_fraction_of_interval": round(wave_many / interval_s, 4)}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "kws-s4d")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--store", default=None, help="memory:// or redis://HOST:PORT/DB")
    ap.add_argument("--store-reps", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--interval-s", type=float, default=1.0)
    args = ap.parse_args(argv)
    with torch.inference_mode():
        result, data = bench_snapshot(args.checkpoint, args.reps)
    result["host"] = {"cpu": platform.processor() or platform.machine(),
                      "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.store:
        result["store"] = asyncio.run(bench_store(args.store, data, args.store_reps,
                                                  args.sessions, args.interval_s))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
