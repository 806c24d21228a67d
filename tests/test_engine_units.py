"""The engine's parts without a server: planner, sample rings, byte reassembly, and the session
manager + stream loop of `ModelEngine` on a `NumpySlabStorage` with a fake backend."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from server.backends.base import Backend, ModelMetadata
from server.engine.buffers import RingOverflow, SlotBuffers, write_ring
from server.engine.lane import DeviceLane
from server.engine.model_engine import ModelEngine
from server.engine.planner import bucket, buckets_upto, plan_round, split_batch
from server.engine.wire import decode, encode
from server.errors import StreamError
from server.frontend.decoder import SampleDecoder
from server.metrics import Metrics
from server.slab import NumpySlabStorage


# ---- planner ---------------------------------------------------------------------------
def test_bucket_sizes():
    assert [bucket(n) for n in (1, 2, 3, 5, 9, 16, 17, 33, 48, 49, 256, 257, 513, 1025)] == \
        [1, 2, 4, 8, 16, 16, 32, 48, 48, 64, 256, 288, 576, 1152]
    sizes = buckets_upto(2048)
    assert sizes == sorted(set(bucket(n) for n in range(1, 2049)))
    for n in range(1, 4097):  # every padded size is a fixed point, waste < 1/8 above 256
        b = bucket(n)
        assert b >= n and bucket(b) == b and (n <= 256 or (b - n) * 8 < n)


def test_plan_full_frames_and_flushes():
    slots = np.array([0, 1, 2, 3, 4])
    avail = np.array([64, 10, 130, 3, 0])
    r = plan_round(slots, avail, np.array([], np.int64), frame=64, patch=2)
    assert r.full.tolist() == [0, 2] and not r.partial and not len(r.finished)
    # flushing: 1 (10 -> partial 10), 3 (3 -> partial 2, remainder 1 dropped), 4 (nothing left),
    # 2 (>= a frame: its full frame first, the flush continues next round)
    r = plan_round(slots, avail, np.array([1, 2, 3, 4]), frame=64, patch=2)
    assert r.full.tolist() == [0, 2]
    assert {k: v.tolist() for k, v in r.partial.items()} == {10: [1], 2: [3]}
    assert sorted(r.finished.tolist()) == [1, 3, 4]
    assert plan_round(slots[:0], avail[:0], np.array([], np.int64), frame=64, patch=1).empty


# ---- sample rings ----------------------------------------------------------------------
def test_split_batch_keeps_steps_within_the_fast_path():
    slots = np.arange(2560)
    parts = split_batch(slots, 2048)
    assert [len(p) for p in parts] == [1280, 1280]
    assert np.array_equal(np.concatenate(parts), slots)
    assert [len(p) for p in split_batch(np.arange(5), 2)] == [2, 2, 1]
    assert split_batch(slots, None)[0] is slots and split_batch(slots, 4096)[0] is slots


def test_ring_write_read_wraps_and_refuses_overflow():
    b = SlotBuffers(capacity=3, ring=8, channels=2, classes=2)
    g = [b.open(s) for s in range(3)]
    assert b.valid(np.array([0, 1]), np.array(g[:2])).all()
    data = np.arange(12, dtype=np.float32).reshape(6, 2)
    b.write(np.array([0, 2]), np.array([4, 2]), data)
    np.testing.assert_array_equal(b.read(np.array([0]), 3)[0], data[:3])
    b.advance(np.array([0]), 3)
    more = -np.arange(14, dtype=np.float32).reshape(7, 2)
    b.write(np.array([0]), np.array([7]), more)  # wraps around the 8-sample ring
    got = b.read(np.array([0]), 8)[0]
    np.testing.assert_array_equal(got, np.concatenate([data[3:4], more]))
    np.testing.assert_array_equal(b.buffered(0), got)
    with pytest.raises(RingOverflow):
        b.write(np.array([0]), np.array([1]), np.zeros((1, 2), np.float32))
    b.close(2)
    assert not b.valid(np.array([2]), np.array([g[2]])).any()


@pytest.mark.parametrize("via", ["write", "staging", "staging-frames"])
def test_ring_matches_a_fifo_for_random_traffic(via):
    """Mirrored ring (frame 5 of 15): any interleaving of writes and frame reads returns the
    samples in order, for every slot independently. `staging`: as with front-end processes,
    the samples are written into a staging ring and copied in at commit (`copy_in`), while
    another staging ring (a stale front-end's) gets other samples at the same places;
    `staging-frames`: mostly a frame per session and tick, as real-time streams commit (the
    copy by whole windows, the ring's mirrored start included)."""
    rng = np.random.default_rng(1)
    b = SlotBuffers(capacity=4, ring=15, channels=2, classes=1, frame=5)
    for s in range(4):
        b.open(s)
    staging, stale = np.zeros_like(b.data), np.zeros_like(b.data)
    fifo = {s: [] for s in range(4)}
    counter = 0
    for _ in range(400):
        slots = rng.choice(4, size=rng.integers(1, 5), replace=False)
        room = 15 - b.available(slots)
        counts = np.array([rng.integers(0, r + 1) for r in room])
        if via == "staging-frames" and rng.random() < 0.8:
            counts = np.minimum(room, 5)
        data = np.arange(counter, counter + 2 * counts.sum(), dtype=np.float32).reshape(-1, 2)
        counter += 2 * int(counts.sum())
        if via == "write":
            b.write(slots, counts, data)
        else:
            at = 0
            for s, n in zip(slots.tolist(), counts.tolist(), strict=True):
                start = int(b.received[s])
                write_ring(staging, 15, s, start, data[at:at + n])
                write_ring(stale, 15, s, start, -1 - data[at:at + n])
                at += n
            b.copy_in(staging, slots, counts)
            b.commit(slots, counts)
        at = 0
        for s, n in zip(slots.tolist(), counts.tolist(), strict=True):
            fifo[s].extend(data[at:at + n])
            at += n
        ready = np.array([s for s in range(4) if b.available(np.array([s]))[0] >= 1])
        if len(ready):
            length = int(min(5, b.available(ready).min()))
            got = b.read(ready, length)
            b.advance(ready, length)
            for i, s in enumerate(ready.tolist()):
                np.testing.assert_array_equal(got[i], np.array(fifo[s][:length]))
                del fifo[s][:length]
    for s in range(4):
        np.testing.assert_array_equal(b.buffered(s).reshape(-1, 2),
                                      np.array(fifo[s]).reshape(-1, 2))


# ---- byte reassembly -------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["pcm_s16le", "f32le"])
def test_decoder_reassembles_any_split(encoding):
    rng = np.random.default_rng(0)
    x = (rng.uniform(-0.9, 0.9, (101, 3))).astype(np.float32)
    if encoding == "f32le":
        raw, want = x.astype("<f4").tobytes(), x
    else:
        q = np.round(x * 32768).astype("<i2")
        raw, want = q.tobytes(), q.astype(np.float32) / 32768
    for cuts in ([1], [5, 7, 1], [len(raw)], [3, 1000]):
        dec = SampleDecoder(encoding, 3, skip=4)
        out, i, k = [], 0, 0
        while i < len(raw):
            n = cuts[k % len(cuts)]
            out.append(dec.feed(raw[i:i + n]))
            i, k = i + n, k + 1
        assert not dec.pending
        np.testing.assert_array_equal(np.concatenate(out), want[4:])


def test_decoder_refuses_non_finite():
    with pytest.raises(StreamError) as e:
        SampleDecoder("f32le", 1).feed(np.array([1.0, np.nan], "<f4").tobytes())
    assert e.value.code == "non_finite"


def test_wire_round_trip_is_pickle_free():
    arrays = [np.arange(5, dtype=np.int32), np.ones((3, 2), np.float32)]
    frames = encode({"ops": [{"op": "ping", "req": 1}]}, arrays)
    header, got = decode([bytes(f) for f in frames])
    assert header == {"ops": [{"op": "ping", "req": 1}]}
    for a, b in zip(arrays, got, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


# ---- ModelEngine with a fake backend on NumpySlabStorage -------------------------------
class FakeBackend(Backend):
    """A linear 'model' whose state is the running sum of samples: logits = [sum, -sum]."""

    name = "fake"

    @classmethod
    def load(cls, checkpoint_dir, device, *, name=None):
        raise NotImplementedError

    def __init__(self, frame: int = 8, patch: int = 2, fail: bool = False):
        self.metadata = ModelMetadata(
            name="fake", description="", task="t", sample_rate=100, input_channels=1,
            classes=("pos", "neg"), frame_size=frame, patch_size=patch, streamable=True,
            state_bytes_per_session=4, parameters=0, pooling="mean", backend="fake", device="cpu")
        self.fail = fail
        self.steps: list[tuple[int, int]] = []

    def new_slab(self, n):
        return NumpySlabStorage({"sum": np.zeros((1, 1), np.float32)}, n)

    def step(self, frames, state):
        if self.fail:
            raise RuntimeError("injected")
        self.steps.append(frames.shape[:2])
        new = state["sum"] + frames.sum(axis=(1, 2))[:, None]
        return np.concatenate([new, -new], 1), {"sum": new}

    def predict(self, batch, lengths):
        raise NotImplementedError


class Sink:
    def __init__(self):
        self.prog, self.ctl, self.evt = [], [], []

    def progress(self, model, owners, slots, gens, consumed, probs):
        self.prog += list(zip(owners.tolist(), slots.tolist(), consumed.tolist(), strict=True))

    def reply(self, owner, msg):
        self.ctl.append((owner, msg))

    def event(self, owner, msg):
        self.evt.append((owner, msg))


def make_engine(backend, capacity=4):
    lane = DeviceLane("test")
    sink = Sink()
    me = ModelEngine(0, "fake", backend, backend.new_slab(capacity), lane, Metrics(), sink,
                     batch_settings=dict(window_s=0.0, max_batch_sequences=4,
                                         max_batch_samples=1 << 16))
    return me, sink, lane


def push(me, slots, gens, counts, data):
    """What a front-end does: write the samples into the ring, then commit the counts."""
    at = 0
    for slot, n in zip(slots.tolist(), counts.tolist(), strict=True):
        write_ring(me.buffers.data, me.buffers.ring, slot, int(me.buffers.received[slot]),
                   data[at:at + n])
        at += n
    me.feed(slots, gens, counts)


async def open_new(me, owner):
    """A new f32le session of `owner` with a result every frame."""
    return await me.open(owner, session_id=None, offset=None, encoding="f32le", emit_every=8)


async def _settle(me, rounds=20):
    for _ in range(rounds):
        await asyncio.sleep(0.01)


def test_engine_sessions_steps_flush_resume_and_expire():
    async def main():
        be = FakeBackend()
        me, sink, lane = make_engine(be, capacity=2)
        me.start()
        a = await open_new(me, 1)
        b = await open_new(me, 2)
        with pytest.raises(StreamError) as e:  # slab full
            await open_new(me, 1)
        assert e.value.code == "server_busy"
        slots = np.array([a["slot"], b["slot"]])
        gens = np.array([a["gen"], b["gen"]])
        push(me, slots, gens, np.array([20, 8]), np.ones((28, 1), np.float32))
        await _settle(me)
        assert (2, 8) in [tuple(s) for s in be.steps]  # no padding rows: nothing to capture
        assert me.buffers.consumed[a["slot"]] == 16 and me.buffers.consumed[b["slot"]] == 8
        assert {o for o, *_ in sink.prog} == {1, 2}  # each owner hears of its own sessions
        # flush a: the 4 left run as a partial frame; reset zeroes the state
        me.flush(1, 7, a["slot"], a["gen"], reset=True, end=False)
        await _settle(me)
        owner, reply = sink.ctl[-1]
        assert owner == 1 and reply["req"] == 7 and reply["consumed"] == 20
        assert reply["probs"][0] > 0.99  # sum 20 > 0
        assert me.slab.storage.arrays["sum"][a["slot"]] == 0
        # detach b, resume it, offset beyond held -> offset_gap; then expire a detached one
        me.detach(b["slot"], b["gen"])
        with pytest.raises(StreamError) as e:
            await me.open(3, session_id=b["session_id"], offset=99, encoding="f32le", emit_every=0)
        assert e.value.code == "offset_gap"
        again = await me.open(3, session_id=b["session_id"], offset=8, encoding="f32le",
                              emit_every=0)
        assert again["received"] == 8 and again["slot"] == b["slot"]
        with pytest.raises(StreamError) as e:
            await me.open(4, session_id=b["session_id"], offset=8, encoding="f32le", emit_every=0)
        assert e.value.code == "session_busy"
        me.detach(b["slot"], b["gen"])
        assert me.expire(now=1e12, ttl=1.0) == 1 and b["session_id"] not in me.sessions
        # stale samples for the closed session are ignored, not written into a reused slot
        push(me, np.array([b["slot"]]), np.array([b["gen"]]), np.array([3]),
             np.ones((3, 1), np.float32))
        # end a: flush + close, slot freed
        me.flush(1, 8, a["slot"], a["gen"], reset=False, end=True)
        await _settle(me)
        assert sink.ctl[-1][1]["req"] == 8 and me.slab.in_use == 0
        await me.stop()
        lane.stop()

    asyncio.run(main())


def test_engine_step_failure_closes_only_those_sessions():
    async def main():
        be = FakeBackend(fail=True)
        me, sink, lane = make_engine(be)
        me.start()
        a = await open_new(me, 5)
        push(me, np.array([a["slot"]]), np.array([a["gen"]]), np.array([8]),
             np.ones((8, 1), np.float32))
        await _settle(me)
        assert sink.evt and sink.evt[0][0] == 5 and sink.evt[0][1]["code"] == "internal"
        # the slot stays out of use until its front-end has seen the failure (it may still
        # be writing into the ring), then serves again
        assert me.slab.in_use == 1
        me.release(5, a["slot"], a["gen"])
        assert me.slab.in_use == 0
        # ... and /metrics says so (the gauge was left at the quarantined slot's bytes)
        in_use = me.metrics.registry.get_sample_value("s4d_state_slab_bytes_in_use",
                                                      {"model": "fake"})
        assert in_use == 0, in_use
        b = await open_new(me, 6)  # a front-end gone for good frees its quarantine too
        push(me, np.array([b["slot"]]), np.array([b["gen"]]), np.array([8]),
             np.ones((8, 1), np.float32))
        await _settle(me)
        me.release_owner(6)
        assert me.slab.in_use == 0
        assert me.metrics.registry.get_sample_value("s4d_state_slab_bytes_in_use",
                                                    {"model": "fake"}) == 0
        await me.stop()
        lane.stop()

    asyncio.run(main())


def test_lane_stream_steps_go_first_but_batch_is_not_starved():
    """A stream loop that submits its next step right after the last one finished keeps the
    lane (hold), queued batch jobs wait; with no end of stream work in sight they still run
    within max_hold_s."""

    async def main():
        lane = DeviceLane("t", max_hold_s=0.3)
        order = []

        def job(tag, secs):
            def run():
                time.sleep(secs)
                order.append((tag, time.monotonic()))
            return run

        lane.hold(grace_s=0.05)  # generous: a loaded CI machine may lag between steps
        batch = [lane.submit(job("batch", 0.01), priority=False) for _ in range(3)]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.15:  # 150 ms of back-to-back stream steps
            await lane.submit(job("step", 0.005))
        assert all(tag == "step" for tag, _ in order)  # batch held back meanwhile
        lane.release()
        await asyncio.gather(*batch)
        tags = [t for t, _ in order]
        assert tags[-3:] == ["batch"] * 3
        # fairness: streams that never stop still let batch jobs through
        order.clear()
        lane.hold(grace_s=0.05)  # generous: a loaded CI machine may lag between steps
        late = lane.submit(job("batch", 0.001), priority=False)
        t0 = time.monotonic()
        while not late.done() and time.monotonic() - t0 < 2:
            await lane.submit(job("step", 0.005))
        assert late.done() and time.monotonic() - t0 < 0.6
        lane.stop()

    asyncio.run(main())


def test_rounds_step_full_frames_and_backlogs_catch_up_back_to_back():
    async def main():
        be = FakeBackend()
        me, sink, lane = make_engine(be, capacity=2)  # loop not started: rounds by hand
        a = await open_new(me, 1)
        b = await open_new(me, 1)
        slots = np.array([a["slot"], b["slot"]])
        gens = np.array([a["gen"], b["gen"]])
        push(me, slots, gens, np.array([27, 8]), np.ones((35, 1), np.float32))
        assert await me._round()  # a round steps everyone with a full frame once
        assert [tuple(s) for s in be.steps] == [(2, 8)]
        await me._drain()  # then rounds back to back: a was 3 frames behind
        assert [tuple(s) for s in be.steps] == [(2, 8), (1, 8), (1, 8)]
        assert me.buffers.consumed[slots].tolist() == [24, 8]
        assert not await me._round()  # 3 samples left: less than a frame
        be.max_step_batch = 1  # a round above the backend's fast path: one step per session
        push(me, slots, gens, np.array([5, 8]), np.ones((13, 1), np.float32))
        assert await me._round()
        assert [tuple(s) for s in be.steps[3:]] == [(1, 8), (1, 8)]
        assert me.buffers.consumed[slots].tolist() == [32, 16]
        await me.stop()
        lane.stop()

    asyncio.run(main())


def test_server_start_freezes_its_startup_objects(live_server):
    """After start-up the collector no longer walks the models' and libraries' objects (the
    test server runs in this process)."""
    import gc

    assert gc.get_freeze_count() > 10_000


def test_server_start_sets_the_engine_switch_interval(live_server):
    """The engine's event loop keeps the GIL from the device lane for at most
    `gil_switch_interval_ms` (default 0.5 ms, not Python's 5 ms); the test server runs in
    this process."""
    import sys

    assert sys.getswitchinterval() == pytest.approx(0.0005)


def test_unexpected_round_error_fails_the_waiting_sessions_and_the_loop_goes_on(monkeypatch):
    """A bug outside the model step (here: the planner raising once) must not leave streams
    waiting for results that never come: the sessions that round owed a step or a flush get
    `internal`, a session with nothing pending is untouched, and the loop serves on."""
    import server.engine.model_engine as model_engine

    async def main():
        be = FakeBackend()
        me, sink, lane = make_engine(be, capacity=4)
        me.start()
        a = await open_new(me, 1)
        b = await open_new(me, 1)
        idle = await open_new(me, 2)
        real_plan, calls = model_engine.plan_round, []

        def plan_once_broken(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("injected planner bug")
            return real_plan(*args, **kwargs)

        monkeypatch.setattr(model_engine, "plan_round", plan_once_broken)
        me.flush(1, 3, b["slot"], b["gen"], reset=False, end=False)  # b: a flush pending
        push(me, np.array([a["slot"]]), np.array([a["gen"]]), np.array([8]),
             np.ones((8, 1), np.float32))  # a: a full frame pending
        await _settle(me)
        failed = {(o, m["slot"]) for o, m in sink.evt if m["code"] == "internal"}
        assert failed == {(1, a["slot"]), (1, b["slot"])}
        assert all("ValueError" in m["message"] for _, m in sink.evt)
        assert (1, {"req": 3, "error": "internal", "message": "session closed (error)"}) in sink.ctl
        assert set(me.sessions) == {idle["session_id"]}
        # the loop still serves: the untouched session steps normally
        push(me, np.array([idle["slot"]]), np.array([idle["gen"]]), np.array([8]),
             np.ones((8, 1), np.float32))
        await _settle(me)
        assert me.buffers.consumed[idle["slot"]] == 8
        assert any(o == 2 and c == 8 for o, _, c in sink.prog)
        await me.stop()
        lane.stop()

    asyncio.run(main())


def test_lane_stop_waits_for_the_job_in_hand_so_the_process_exits_cleanly(tmp_path):
    """A process that stopped its lanes and exited while a lane was inside torch aborted
    ("terminate called without an active exception", status 134; seen at the end of
    bench/engine_load.py): stop() now waits for the job in hand, and the exit is clean."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "lane_exit.py"
    script.write_text(
        "import asyncio, torch\n"
        "from server.engine.lane import DeviceLane\n"
        "async def main():\n"
        "    lane = DeviceLane('t')\n"
        "    x = torch.randn(512, 512)\n"
        "    def work():\n"
        "        for _ in range(300):\n"
        "            x @ x\n"
        "    lane.submit(work)\n"
        "    await asyncio.sleep(0.05)\n"
        "    lane.stop()\n"
        "asyncio.run(main())\n")
    root = Path(__file__).resolve().parents[1]
    for _ in range(2):
        r = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
        assert r.returncode == 0, r.stderr[-500:]


def test_cuda_index_of_an_engines_device():
    """Every engine thread makes its GPU current; torch.cuda.set_device refuses a bare "cuda"
    (the one-process server's device), so a bare "cuda" resolves to the current GPU: on a GPU
    host `s4d serve` failed to load any model ("Expected a torch.device with a specified
    index") until this. cuda:N is N; the CPU has none."""
    from server.engine.engine import cuda_index

    assert cuda_index("cpu") is None
    assert cuda_index("cuda:1") == 1 and cuda_index("cuda:0") == 0
    assert cuda_index("cuda", current=lambda: 0) == 0
    assert cuda_index("cuda", current=lambda: 3) == 3
