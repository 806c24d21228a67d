"""Session snapshots (server/snapshot.py): bytes round trip, refusals, and exact continuation.

The exactness tests stream half a signal through a real backend's slab, snapshot the session to
bytes, restore it into a freshly loaded backend (torch, and ONNX Runtime both ways), stream the
rest and compare the final probabilities with the batch prediction of the whole signal.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from server import snapshot as snap_mod
from server.snapshot import (
    FORMAT_VERSION,
    Snapshot,
    SnapshotError,
    capture_state,
    checkpoint_hash,
    decode,
    encode,
    read_metadata,
    restore_state,
)
from tests.conftest import TINY_MODELS

HASH = "ab" * 32


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def make_snapshot(**over) -> Snapshot:
    rng = np.random.default_rng(0)
    fields = dict(
        model="tiny", model_hash=HASH, session_id="s-1",
        state={"x_re": rng.standard_normal((2, 16, 4), np.float32),
               "x_im": rng.standard_normal((2, 16, 4), np.float32),
               "pool": rng.standard_normal(16, np.float32),
               "count": np.array([704.0], np.float32)},
        received=750, consumed=704, segment_consumed=640,
        buffered=rng.standard_normal((46, 2), np.float32), channels=2, emit_every=64,
        encoding="pcm_s16le", last_probs=np.array([0.25, 0.5, 0.25], np.float32),
        created_unix=1.7e9, taken_unix=1.7e9 + 12.5,
    )
    fields.update(over)
    return Snapshot(**fields)


def assert_same(a: Snapshot, b: Snapshot) -> None:
    for k in ("model", "model_hash", "session_id", "received", "consumed", "segment_consumed",
              "channels", "emit_every", "encoding", "created_unix", "taken_unix",
              "format_version", "owner_key"):
        assert getattr(a, k) == getattr(b, k), k
    assert a.state.keys() == b.state.keys()
    for k in a.state:
        assert a.state[k].dtype == b.state[k].dtype
        np.testing.assert_array_equal(a.state[k], b.state[k])
    np.testing.assert_array_equal(a.buffered, b.buffered)
    if a.last_probs is None:
        assert b.last_probs is None
    else:
        np.testing.assert_array_equal(a.last_probs, b.last_probs)


# ---- bytes --------------------------------------------------------------------------------------
def test_round_trip_is_bit_exact():
    s = make_snapshot()
    data = encode(s)
    assert_same(s, decode(data, expect_model="tiny", expect_hash=HASH))
    meta = read_metadata(data)
    assert meta["format"] == "s4d-session-snapshot"
    assert meta["format_version"] == str(FORMAT_VERSION)
    assert meta["received"] == "750" and meta["encoding"] == "pcm_s16le"


def test_owner_key_travels_with_the_snapshot():
    """The API key NAME that owns the session is in the header (never a secret), "" without
    keys; `owner_allows` is the one rule every replica applies on resume."""
    from server.snapshot import owner_allows

    data = encode(make_snapshot(owner_key="alice"))
    assert read_metadata(data)["owner_key"] == "alice"
    back = decode(data)
    assert back.owner_key == "alice"
    assert owner_allows(back.owner_key, "alice") and not owner_allows(back.owner_key, "bob")
    assert not owner_allows(back.owner_key, None)
    anyone = decode(encode(make_snapshot()))
    assert anyone.owner_key == "" and owner_allows(anyone.owner_key, "bob")
    with pytest.raises(ValueError, match="not an API key name"):
        make_snapshot(owner_key="s4d secret with spaces")
    with pytest.raises(SnapshotError) as e:  # an edited header is no way around it either
        decode(_with_metadata(data, owner_key="a" * 65))
    assert e.value.code == "snapshot_corrupt"
    with pytest.raises(SnapshotError) as e:
        decode(_with_metadata(data, owner_key=None))
    assert e.value.code == "snapshot_corrupt"


def test_version_1_snapshots_without_an_owner_are_refused():
    """Version 1 had no owner_key: resuming one would hand the session to any key."""
    assert FORMAT_VERSION == 2
    data = _with_metadata(encode(make_snapshot(owner_key="alice")), format_version="1",
                          owner_key=None)
    with pytest.raises(SnapshotError) as e:
        decode(data, expect_model="tiny", expect_hash=HASH)
    assert e.value.code == "snapshot_version" and e.value.http_status == 409
    assert "version 1" in e.value.message and "reads 2 only" in e.value.message


def test_round_trip_without_probs_and_empty_buffer():
    s = make_snapshot(received=704, buffered=np.zeros((0, 2), np.float32), last_probs=None)
    back = decode(encode(s))
    assert back.last_probs is None and back.buffered.shape == (0, 2)
    assert_same(s, back)


def test_other_weights_or_model_are_refused():
    data = encode(make_snapshot())
    with pytest.raises(SnapshotError) as e:
        decode(data, expect_model="tiny", expect_hash="cd" * 32)
    assert e.value.code == "snapshot_model_mismatch" and e.value.http_status == 409
    assert "other weights" in e.value.message
    with pytest.raises(SnapshotError) as e:
        decode(data, expect_model="kws-s4d", expect_hash=HASH)
    assert e.value.code == "snapshot_model_mismatch"


def _with_metadata(data: bytes, **changes) -> bytes:
    """The same tensors under an edited header (what another writer could have produced)."""
    meta = dict(read_metadata(data))
    meta.update(changes)
    tensors = snap_mod.st_load(data)
    return st_save(tensors, metadata={k: v for k, v in meta.items() if v is not None})


def test_other_format_version_is_refused():
    data = _with_metadata(encode(make_snapshot()), format_version=str(FORMAT_VERSION + 1))
    with pytest.raises(SnapshotError) as e:
        decode(data, expect_model="tiny", expect_hash=HASH)
    assert e.value.code == "snapshot_version"
    assert f"reads {FORMAT_VERSION}" in e.value.message


@pytest.mark.parametrize("cut", [0, 1, 7, 8, 20, 200, -4000, -1])
def test_truncated_bytes_are_corrupt(cut):
    data = encode(make_snapshot())
    with pytest.raises(SnapshotError) as e:
        decode(data[:cut])
    assert e.value.code == "snapshot_corrupt"


@pytest.mark.parametrize("garbage", [
    b"", b"hello world, not a snapshot", bytes(range(256)) * 40,
    struct.pack("<Q", 2) + b"{}",  # a valid safetensors file with no metadata
    st_save({"a": np.zeros(3, np.float32)}, metadata={"format": "something-else"}),
])
def test_garbage_is_corrupt(garbage):
    with pytest.raises(SnapshotError) as e:
        decode(garbage)
    assert e.value.code == "snapshot_corrupt"


def test_stray_tensors_are_corrupt():
    s = make_snapshot()
    tensors = {f"state.{k}": v for k, v in s.state.items()}
    tensors.update(buffered=s.buffered, extra=np.zeros(2, np.float32))
    meta = dict(read_metadata(encode(s)))
    meta["checksum"] = snap_mod._checksum(tensors)
    with pytest.raises(SnapshotError, match="unexpected tensors"):
        decode(st_save(tensors, metadata=meta))


def test_flipped_data_byte_fails_the_checksum():
    data = bytearray(encode(make_snapshot()))
    data[-100] ^= 0x40  # inside the tensor data, header intact
    with pytest.raises(SnapshotError) as e:
        decode(bytes(data))
    assert e.value.code == "snapshot_corrupt" and "checksum" in e.value.message


def test_edited_fields_breaking_the_invariants_are_corrupt():
    data = encode(make_snapshot())
    for changes in ({"received": "9999"}, {"encoding": "mp3"}, {"consumed": "x"},
                    {"session_id": None}):
        with pytest.raises(SnapshotError) as e:
            decode(_with_metadata(data, **changes))
        assert e.value.code == "snapshot_corrupt", changes


def test_offsets_past_64_bits_are_corrupt():
    """The engine keeps offsets in int64 arrays: a restore of consumed = 2**63 failed there
    with a 500 OverflowError and left its state slot allocated (a leak per request)."""
    data = encode(make_snapshot())
    for changes in ({"consumed": str(2**63), "received": str(2**63 + 46)},
                    {"emit_every": str(2**70)}):
        with pytest.raises(SnapshotError) as e:
            decode(_with_metadata(data, **changes))
        assert e.value.code == "snapshot_corrupt" and "64 bits" in e.value.message, changes


def test_session_ids_no_store_holds_are_corrupt():
    """Installed by the restore route, a session whose id the store refuses (empty, over 256
    characters) made its store calls raise ValueError: a 500, the session left installed."""
    data = encode(make_snapshot())
    for sid in ("", "x" * 257, "x" * 100_000):
        with pytest.raises(SnapshotError) as e:
            decode(_with_metadata(data, session_id=sid))
        assert e.value.code == "snapshot_corrupt" and "session_id" in e.value.message
    assert decode(_with_metadata(data, session_id="x" * 256)).session_id == "x" * 256


def test_inconsistent_snapshot_cannot_be_built():
    with pytest.raises(ValueError, match="inside a step"):
        make_snapshot(received=700)
    with pytest.raises(ValueError, match="channels"):
        make_snapshot(channels=1)
    with pytest.raises(ValueError, match="float32"):
        make_snapshot(buffered=np.zeros((46, 2), np.float64))


def test_checkpoint_hash_is_the_export_digest_and_tracks_weights(tmp_path, make_checkpoint):
    from model.export import checkpoint_digest

    m, t = TINY_MODELS["tiny"]
    a = make_checkpoint(tmp_path, "a", m, t, seed=1)
    b = make_checkpoint(tmp_path, "b", m, t, seed=2)
    h = checkpoint_hash(a)
    assert h == checkpoint_digest(a) and len(h) == 64
    assert checkpoint_hash(b) != h
    assert checkpoint_hash(str(a)) == h  # cached, same answer
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    changed = checkpoint_hash(a)  # a changed file is hashed again
    assert changed != h and changed == checkpoint_digest(a)


# ---- exact continuation on real backends ---------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, make_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("snapshot-ckpts")
    for i, name in enumerate(("tiny", "tiny2", "tinynone")):
        m, t = TINY_MODELS[name]
        make_checkpoint(root, name, m, t, seed=10 + i)
    return root


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("S4D_ONNX_CACHE", str(tmp_path_factory.mktemp("snapshot-onnx-cache")))
    yield
    mp.undo()


def load(kind: str, path: Path):
    from server.backends.base import get_backend

    return get_backend(kind).load(path, "cpu")


class StreamSim:
    """The engine's bookkeeping for one session, reduced to what a snapshot holds."""

    def __init__(self, backend, slab, slot: int, channels: int):
        self.backend, self.slab, self.slot = backend, slab, slot
        self.buffer = np.zeros((0, channels), np.float32)
        self.received = self.consumed = 0
        self.last_probs = None

    def feed(self, samples: np.ndarray) -> None:
        self.buffer = np.concatenate([self.buffer, samples.astype(np.float32)])
        self.received += len(samples)
        t = self.backend.frame_size
        while len(self.buffer) >= t:
            self._step(t)

    def flush(self) -> None:
        n = len(self.buffer) // self.backend.metadata.patch_size * self.backend.metadata.patch_size
        if n:
            self._step(n)

    def _step(self, n: int) -> None:
        state = self.slab.gather([self.slot])
        logits, new = self.backend.step(self.buffer[None, :n], state)
        self.slab.scatter([self.slot], new)
        self.buffer, self.consumed = self.buffer[n:], self.consumed + n
        last = logits[0, -1] if logits.ndim == 3 else logits[0]
        self.last_probs = softmax(last).astype(np.float32)

    def snapshot(self, model: str, model_hash: str) -> Snapshot:
        return Snapshot(
            model=model, model_hash=model_hash, session_id="sess", state=capture_state(
                self.slab, self.slot), received=self.received, consumed=self.consumed,
            segment_consumed=self.consumed, buffered=self.buffer.copy(),
            channels=self.buffer.shape[1], emit_every=self.backend.frame_size, encoding="f32le",
            last_probs=self.last_probs, created_unix=time.time())

    @classmethod
    def restore(cls, backend, slab, slot: int, s: Snapshot) -> StreamSim:
        sim = cls(backend, slab, slot, s.channels)
        restore_state(slab, slot, s.state)
        sim.buffer, sim.received, sim.consumed = s.buffered, s.received, s.consumed
        sim.last_probs = s.last_probs
        return sim


def batch_probs(backend, signal: np.ndarray) -> np.ndarray:
    logits = backend.predict(signal[None], np.array([len(signal)], np.int64))
    return softmax(logits[0, -1] if logits.ndim == 3 else logits[0])


PAIRS = [("torch", "torch"), ("torch", "onnxruntime"), ("onnxruntime", "torch")]


@pytest.mark.parametrize("name", ["tiny", "tiny2", "tinynone"])
@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_restored_stream_ends_at_the_batch_prediction(tiny_root, onnx_cache, name, first, second):
    path = tiny_root / name
    a = load(first, path)
    meta = a.metadata
    t, p, c = meta.frame_size, meta.patch_size, meta.input_channels
    rng = np.random.default_rng(7)
    length = (5 * t + t // 2 + 3 * p) // p * p  # ends on a partial frame
    signal = rng.standard_normal((length, c)).astype(np.float32)
    half = 2 * t + t // 3 + 1  # leaves a partial frame (and a partial patch) buffered

    slab_a = a.new_slab(3)
    sim = StreamSim(a, slab_a, 1, c)
    for piece in np.array_split(signal[:half], 7):
        sim.feed(piece)
    assert 0 < len(sim.buffer) < t and sim.consumed == 2 * t
    digest = checkpoint_hash(path)
    data = encode(sim.snapshot(name, digest))
    del sim, slab_a, a

    b = load(second, path)
    slab_b = b.new_slab(4)
    restored = decode(data, expect_model=name, expect_hash=checkpoint_hash(path))
    sim = StreamSim.restore(b, slab_b, 2, restored)
    assert sim.consumed == 2 * t and sim.received == half
    for piece in np.array_split(signal[half:], 5):
        sim.feed(piece)
    sim.flush()
    assert sim.consumed == length
    want = batch_probs(b, signal)
    np.testing.assert_allclose(sim.last_probs, want, rtol=0, atol=1e-5)
    # the other slots were not touched
    others = capture_state(slab_b, 0)
    assert all(not np.any(v) for v in others.values())


def test_restore_into_another_architecture_is_refused(tiny_root):
    a = load("torch", tiny_root / "tiny")
    b = load("torch", tiny_root / "tinynone")
    slab_a, slab_b = a.new_slab(1), b.new_slab(1)
    with pytest.raises(SnapshotError) as e:
        restore_state(slab_b, 0, capture_state(slab_a, 0))
    assert e.value.code == "snapshot_state_mismatch"
    rows = capture_state(slab_a, 0)
    rows["pool"] = rows["pool"].astype(np.float64)
    with pytest.raises(SnapshotError, match="float64"):
        restore_state(slab_a, 0, rows)
    rows.pop("pool")
    with pytest.raises(SnapshotError):
        restore_state(slab_a, 0, rows)


SHIPPED_KWS = Path(__file__).resolve().parent.parent / "checkpoints" / "kws-s4d"


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED_KWS / "model.safetensors").exists(), reason="no checkpoints/kws-s4d")
def test_shipped_kws_session_restores_exactly_and_the_bench_runs():
    import torch

    from bench.snapshot import bench_snapshot

    with torch.inference_mode():
        result, data = bench_snapshot(SHIPPED_KWS, reps=3)
    assert result["restored_final_vs_batch_max_abs_diff"] <= 1e-5
    assert result["snapshot_bytes"] == len(data) > result["state_bytes"]
    assert decode(data, expect_hash=checkpoint_hash(SHIPPED_KWS)).model == "kws-s4d"
    assert {"snapshot", "restore_total", "encode", "decode"} <= set(result["timings"])
