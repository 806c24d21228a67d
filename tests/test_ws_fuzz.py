"""Bounded randomized fuzz of the WebSocket stream protocol (server/PROTOCOL.md) against a real
server: a fixed seed, a few hundred short client sessions, several at a time.

Each session draws a random sequence of: valid starts (fresh, or resumes of known, unknown,
other sessions' and a clean stream's ids), starts with invalid fields (wrong types, nested
objects, huge strings, bad encodings / rates / channel counts / events), binary audio of random
sizes (0 bytes, odd byte counts, sizes off the frame, fragmented messages, NaN samples,
over the size limit), invalid JSON, JSON of the wrong shape or an unknown `type`, control
messages in the wrong state (binary / end / reset before start, two starts, reset or end with
a partial sample), pings, frames RFC 6455 forbids (text that is not UTF-8, malformed frames,
a message over the WebSocket layer's limit), and endings: `end`, a normal close, a close with
another code, an abrupt TCP abort, an abort in the middle of a fragmented message.

A model of the protocol predicts each session's outcome from what it sent (a resume may
find its session attached, detached or gone: those accept each documented answer), and every
session is checked against it: the right `error` code and the close code PROTOCOL.md's table
gives it (never `internal` / 1011 for a client mistake), or `final` + 1000 with the offset the samples give and the batch
path's probabilities; no session hangs. Meanwhile `/healthz` keeps answering and clean streams,
started before the fuzz and fed during it, end with the batch path's `final` (1e-5). After:
`/metrics` renders, no connection is left on the server and every session's state slot is
freed once the detached ones expire.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import websockets

from tests.conftest import ROOT, TINY_MODELS, assert_probs_close, batch_probs


def _documented_close_codes() -> dict[str, int]:
    """error code -> close code, from PROTOCOL.md's table (not from the server's own)."""
    text = (ROOT / "server" / "PROTOCOL.md").read_text()
    section = text[text.index("| error code | close | when |"):]
    codes = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        codes[cells[0]] = int(cells[1])
    return codes


WS_CLOSE_CODES = _documented_close_codes()

SEED = 20240613
MAX_FRAME = 65536  # the server's max_frame_bytes here: a message past it is cheap to send
WS_MAX_SIZE = 4 << 20  # uvicorn's limit: max(4 * max_frame_bytes, 4 MiB)
IDLE_TTL = 4.0  # detached sessions expire within the test (the leak check waits for it)
SESSION_TIMEOUT = 25.0  # a session not closed by then is a hang

#: streamable test models: name -> (sample_rate, channels, frame_size, patch_size)
SPECS = {name: (t["sample_rate"], t["input_channels"], t["frame_size"], m.get("patch_size", 1))
         for name, (m, t) in TINY_MODELS.items()}
STREAMABLE = ["tiny", "tiny2", "tinynone", "tinyema"]
CLASSES = {name: t["class_names"] for name, (_, t) in TINY_MODELS.items()}

# ---- what a text message is to the server --------------------------------------------------
BAD_JSON_TEXT = [
    "", " ", "not json", "{", "}", "[1, 2]", "null", "1", '"start"', "true", '{"type": "start"',
    "NaN", "{'type': 'end'}", '{"type": "end"} {"type": "end"}', '{"type": "reset", "v": 1e400}',
    '{"type": "start", "sample_rate": NaN}', "[" * 3000 + "]" * 3000,
    '{"type": "end", "x": ' + "[" * 2000 + "]" * 2000 + "}",
    '{"type": "end", "x": "\\ud800"}', "\x00", '{"type": "end",}',
]
UNKNOWN_TYPE_OBJ = [
    {}, {"type": 5}, {"type": None}, {"type": ["end"]}, {"type": {"t": "end"}}, {"type": "pause"},
    {"type": "END"}, {"type": "start "}, {"type": ""}, {"Type": "end"}, {"type": True},
    {"type": 1.5}, {"type": "x" * 60000}, {"sample_rate": 16000, "encoding": "f32le"},
]


def _frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True,
           rsv: int = 0) -> bytes:
    """A client frame (RFC 6455 5.2), payload < 126 bytes."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode, (0x80 if masked else 0) | len(payload)])
    if not masked:
        return head + payload
    key = b"\x12\x34\x56\x78"
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


#: frames RFC 6455 forbids a client to send
BAD_FRAMES = {
    "unmasked": _frame(1, b'{"type": "end"}', masked=False),
    "continuation_first": _frame(0, b"abc"),
    "reserved_bits": _frame(2, b"\x00\x00", rsv=0x40),
    "unknown_opcode": _frame(3, b"x"),
    "fragmented_ping": _frame(9, b"x", fin=False),
    "text_inside_binary": _frame(2, b"\x00", fin=False) + _frame(1, b"{}"),
}


def _valid_start(rng: random.Random, model: str, enc: str) -> dict:
    sr, ch, frame, _ = SPECS[model]
    msg = {"type": "start", "sample_rate": sr, "encoding": enc, "channels": ch}
    if rng.random() < 0.35:
        msg["emit_every"] = rng.choice([0, 1, 7, frame, 3 * frame + 1, 1000, None, 2**63,
                                        2**64 - 1])
    if rng.random() < 0.25:
        msg["events"] = rng.choice([False, True, {"threshold": 0.7},
                                    {"threshold": 0.5, "hysteresis": 0.1, "holdoff_ms": 100},
                                    {"background": [CLASSES[model][0]], "min_on_ms": 0}])
    if rng.random() < 0.1:  # fields the protocol does not name are ignored
        msg["extra"] = {"nested": [1, {"x": None}], "s": "y" * rng.choice([1, 5000])}
    return msg


def _mutations(model: str) -> list[tuple[str, object, set]]:
    """(field, bad value or DELETE, acceptable error codes) for a start of `model`."""
    sr, ch, _, _ = SPECS[model]
    start_or = {"bad_start", "bad_sample_rate"}
    bs = {"bad_start"}
    enc_or = {"bad_start", "bad_encoding"}
    ch_or = {"bad_start", "bad_channels"}
    sid_or = {"bad_start", "unknown_session"}
    return [
        ("sample_rate", str(sr), bs), ("sample_rate", float(sr), bs), ("sample_rate", True, bs),
        ("sample_rate", None, bs), ("sample_rate", {"hz": sr}, bs), ("sample_rate", [sr], bs),
        ("sample_rate", -sr, start_or), ("sample_rate", 0, start_or),
        # an integer past 64 bits is parsed as a float: "not an integer" is a fair answer too
        ("sample_rate", sr + 1, {"bad_sample_rate"}), ("sample_rate", 2**70, start_or),
        ("sample_rate", DELETE, bs),
        ("encoding", "mulaw", {"bad_encoding"}), ("encoding", "F32LE", {"bad_encoding"}),
        ("encoding", "", {"bad_encoding"}), ("encoding", "f32le\x00", {"bad_encoding"}),
        ("encoding", "e" * 50000, {"bad_encoding"}), ("encoding", 3, enc_or),
        ("encoding", None, enc_or), ("encoding", ["f32le"], enc_or),
        ("encoding", {"f32le": True}, enc_or), ("encoding", DELETE, bs),
        ("channels", ch + 1, {"bad_channels"}), ("channels", 2**70, ch_or),
        ("channels", 0, ch_or), ("channels", -1, ch_or), ("channels", str(ch), bs),
        ("channels", True, bs), ("channels", float(ch), bs), ("channels", [ch], bs),
        ("channels", DELETE, bs),
        ("emit_every", -1, bs), ("emit_every", 1.5, bs), ("emit_every", "64", bs),
        ("emit_every", True, bs), ("emit_every", [64], bs), ("emit_every", {"n": 1}, bs),
        ("session_id", "", bs), ("session_id", 7, bs), ("session_id", {"id": "x"}, bs),
        ("session_id", ["e0-x"], bs), ("session_id", True, bs),
        ("session_id", "x" * 129, sid_or), ("session_id", "x" * 60000, sid_or),
        ("offset", -1, bs), ("offset", 1.5, bs), ("offset", "0", bs), ("offset", 10, bs),
        ("offset", [0], bs),
        ("events", "yes", bs), ("events", 1, bs), ("events", 0, bs), ("events", [], bs),
        ("events", {"threshold": 2}, bs), ("events", {"threshold": 0}, bs),
        ("events", {"threshold": -0.5}, bs), ("events", {"bogus": 1}, bs),
        ("events", {"label_thresholds": {"zz": 0.5}}, bs), ("events", {"background": ["nope"]}, bs),
        ("events", {"background": "a"}, bs), ("events", {"threshold": True}, bs),
        ("events", {"threshold": "0.5"}, bs), ("events", {"holdoff_ms": -1}, bs),
        ("events", {"holdoff_ms": 10**12}, bs), ("events", {"min_on_ms": 1e9}, bs),
        ("events", {"onset_lag_ms": 1e12}, bs), ("events", {"label_thresholds": []}, bs),
        ("events", {"threshold": 0.5, "hysteresis": 0.9}, bs),
        ("events", {"threshold": {"a": 1}}, bs), ("events", {"background": [1, 2]}, bs),
    ]


DELETE = object()


# ---- session plans ---------------------------------------------------------------------------
@dataclass
class Action:
    kind: str  # start | bin | text | obj | utf8 | rfc | ping | sleep | abort | close | frag_abort
    value: object = None
    codes: set | None = None  # start: acceptable error codes (None: a valid start)
    resume: bool = False  # start: a resume (its session id is drawn when it runs)
    offset: int | None = None  # resume offset (None: absent)
    nan: bool = False  # bin: one sample of it is NaN / Inf
    frag: int = 1  # bin / obj: sent as this many fragments


@dataclass
class Plan:
    index: int
    model: str
    enc: str
    actions: list


def _bin_size(rng: random.Random, width: int, frame: int) -> int:
    return rng.choice([0, 1, 3, 7, max(width - 1, 1), width, width + 1, frame * width,
                       frame * width - 1, frame * width + 1, 2 * frame * width + 3,
                       rng.randint(1, 200) * width, rng.randint(1, 4000), rng.randint(1, 64)])


def make_plan(index: int, rng: random.Random) -> Plan:
    r = rng.random()
    model = ("nope" if r < 0.04 else "tinybi" if r < 0.08
             else rng.choice(["tiny", "tiny", "tiny2", "tinynone", "tinyema"]))
    spec_model = model if model in SPECS and model != "tinybi" else "tiny"
    sr, ch, frame, _ = SPECS[spec_model]
    enc = rng.choice(["f32le", "pcm_s16le"])
    width = (4 if enc == "f32le" else 2) * ch
    actions: list[Action] = []
    if model in STREAMABLE and rng.random() < 0.3:  # a well-behaved stream: odd pieces, resets
        actions.append(Action("start", _valid_start(rng, spec_model, enc)))
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.1:
                actions.append(Action("bin", -1))  # whatever completes the last sample
                actions.append(Action("obj", {"type": "reset"}))
            else:
                actions.append(Action("bin", _bin_size(rng, width, frame), frag=rng.choice([1, 1, 2])))
        actions.append(Action("bin", -1))
        actions.append(Action("obj", {"type": "end"}))
        return Plan(index, model, enc, actions)

    r = rng.random()  # how the session opens
    if r < 0.55:
        actions.append(Action("start", _valid_start(rng, spec_model, enc)))
    elif r < 0.75:
        f, bad, codes = rng.choice(_mutations(spec_model))
        msg = _valid_start(rng, spec_model, enc)
        if f == "events":
            msg.pop("events", None)
        if f == "offset" and bad == 10:
            msg.pop("session_id", None)
        if bad is DELETE:
            del msg[f]
        else:
            msg[f] = bad
        actions.append(Action("start", msg, codes=codes))
    elif r < 0.88:
        actions.append(Action("start", {**_valid_start(rng, spec_model, enc)}, resume=True,
                              offset=rng.choice([None, 0, 0, 1, 5, 10**9, 2**40, 2**63, 2**64 - 1,
                                                 2**64 + 5])))
    # else: junk first (binary, end, reset or text before any start)

    for _ in range(rng.randint(0, 10)):
        r = rng.random()
        if r < 0.55:
            big = rng.random() < 0.03
            n = rng.randint(MAX_FRAME + 1, MAX_FRAME + 3000) if big else _bin_size(rng, width, frame)
            actions.append(Action("bin", n, nan=enc == "f32le" and rng.random() < 0.05,
                                  frag=rng.choice([1, 1, 1, 1, 2, 3])))
        elif r < 0.60:
            actions.append(Action("text", rng.choice(BAD_JSON_TEXT)))
        elif r < 0.64:
            actions.append(Action("obj", rng.choice(UNKNOWN_TYPE_OBJ)))
        elif r < 0.67:
            actions.append(Action("text", "x" * (MAX_FRAME + rng.randint(1, 100))))
        elif r < 0.74:
            actions.append(Action("obj", rng.choice([{"type": "reset"},
                                                     {"type": "reset", "pad": "p" * 50000}])))
        elif r < 0.78:
            actions.append(Action("obj", _valid_start(rng, spec_model, enc)))  # a second start
        elif r < 0.82:
            actions.append(Action("obj", {"type": "end"}))
        elif r < 0.85:
            actions.append(Action("ping"))
        elif r < 0.87:  # a text message that is not UTF-8 (RFC 6455: close 1007)
            actions.append(Action("utf8", rng.choice([b"\xff\xfe{}", b'{"type": "end"}\xc3\x28',
                                                      b"\xe2\x82"]), frag=rng.choice([1, 2])))
        elif r < 0.88:  # a frame that breaks RFC 6455 (close 1002)
            actions.append(Action("rfc", rng.choice(list(BAD_FRAMES))))
        elif r < 0.885:  # over the WebSocket layer's own limit (ws_max_size = 4 MiB here)
            actions.append(Action("bin", WS_MAX_SIZE + rng.randint(1, 1000)))
        elif r < 0.93:
            actions.append(Action("sleep", rng.choice([0.0, 0.005, 0.02])))
        else:
            actions.append(Action("obj", {"type": "end", "junk": {"a": [1, {"b": None}]}},
                                  frag=rng.choice([1, 2])))

    r = rng.random()  # how the client leaves
    if r < 0.45:
        actions.append(Action("obj", {"type": "end"}))
    elif r < 0.60:
        actions.append(Action("abort"))
    elif r < 0.70:
        actions.append(Action("close", rng.choice([1000, 1001, 3000, 4000, 4999])))
    elif r < 0.75:
        actions.append(Action("frag_abort"))
    # else: the client closes normally after its last message
    return Plan(index, model, enc, actions)


# ---- samples ---------------------------------------------------------------------------------
class Feed:
    """The session's byte stream: whole samples (finite, or one NaN / Inf where asked),
    handed out in pieces of any size; `rows` is what the server decodes."""

    def __init__(self, rng: random.Random, enc: str, channels: int):
        self.rng, self.enc, self.ch = np.random.default_rng(rng.getrandbits(32)), enc, channels
        self.width = (4 if enc == "f32le" else 2) * channels
        self.buf = bytearray()
        self.rows: list[np.ndarray] = []
        self.pos = 0  # bytes handed out
        self.nan_sample: int | None = None  # first sample holding a NaN / Inf

    def _grow(self, nbytes: int) -> None:
        while len(self.buf) < nbytes:
            n = max(64, (nbytes - len(self.buf)) // self.width + 1)
            if self.enc == "f32le":
                x = (self.rng.standard_normal((n, self.ch)) * 0.3).astype("<f4")
                self.rows.append(x.astype(np.float32))
            else:
                x = self.rng.integers(-32768, 32768, (n, self.ch)).astype("<i2")
                self.rows.append(x.astype(np.float32) / np.float32(32768.0))
            self.buf += x.tobytes()

    def take(self, n: int, nan: bool = False) -> bytes:
        self._grow(self.pos + n + self.width)
        if nan:
            k = -(-self.pos // self.width) + (self.rng.integers(0, max(1, n // self.width)))
            self._grow((k + 1) * self.width)
            bad = self.rng.choice([np.nan, np.inf, -np.inf])
            self.buf[k * self.width: (k + 1) * self.width] = \
                np.full(self.ch, bad, "<f4").tobytes()
            if self.nan_sample is None or k < self.nan_sample:
                self.nan_sample = int(k)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def samples(self, start: int, stop: int) -> np.ndarray:
        if not self.rows:
            return np.zeros((0, self.ch), np.float32)
        return np.concatenate(self.rows)[start:stop]


# ---- the protocol model and the session runner -----------------------------------------------
@dataclass
class Outcome:
    plan: Plan
    messages: list = field(default_factory=list)
    close_code: int | None = None
    closed: bool = False
    problems: list = field(default_factory=list)
    sent: list = field(default_factory=list)  # a short log of what went out
    session_id: str | None = None
    client_closed: bool = False  # the client sent a close: the server's answer may be cut
    rfc_close: int | None = None  # what RFC 6455 closes with for a frame this client sent
    expect_final: bool = False
    feed: object = None
    fresh: bool = True
    seg_start: int = 0
    end_pos: int = 0


class Pool:
    """Session ids seen so far: id -> (model, status). status: live (attached or soon
    detached), ended (final answered: deleted), failed (closed by an error), clean (attached
    for the whole fuzz)."""

    def __init__(self):
        self.ids: dict[str, tuple[str, str]] = {}

    def pick(self, rng: random.Random) -> tuple[str, str, str]:
        if not self.ids or rng.random() < 0.15:
            return f"e0-{rng.getrandbits(128):032x}", "", "unknown"
        sid = rng.choice(sorted(self.ids))
        return (sid, *self.ids[sid])


def _frags(data, n: int):
    if n <= 1 or len(data) < 2:
        return data
    cuts = sorted({1 + i * (len(data) - 1) // n for i in range(n)} | {len(data)})
    out, prev = [], 0
    for c in cuts:
        if c > prev:
            out.append(data[prev:c])
            prev = c
    return out


async def run_session(plan: Plan, url_of, pool: Pool) -> Outcome:
    rng = random.Random(SEED * 7919 + plan.index)
    out = Outcome(plan)
    model = plan.model
    expect: set | str | None = None  # error codes, or "final"
    state = "pre"  # pre | started | done
    feed: Feed | None = None
    held, skip, fresh = 0, 0, True
    seg_start = 0  # sample index (of this connection's stream) where the segment began
    resets: list[int] = []  # expected reset offsets
    end_pos = 0  # bytes sent when `end` went out
    arrived = asyncio.Event()

    if model == "nope":
        expect, state = {"unknown_model"}, "done"
    elif model == "tinybi":
        expect, state = {"not_streamable"}, "done"

    ws = await websockets.connect(url_of(model), max_size=None, ping_interval=None,
                                  open_timeout=10, close_timeout=5)

    async def reader():
        try:
            while True:
                raw = await ws.recv()
                try:
                    msg = json.loads(raw)
                except (TypeError, ValueError):
                    msg = {"type": "<not json>", "raw": repr(raw)[:200]}
                out.messages.append(msg)
                arrived.set()
        except websockets.ConnectionClosed as exc:
            out.close_code = exc.rcvd.code if exc.rcvd is not None else None
        finally:
            out.closed = True
            arrived.set()

    read_task = asyncio.ensure_future(reader())

    async def next_message(count: int, timeout: float = 10.0) -> dict | None:
        deadline = time.monotonic() + timeout
        while len(out.messages) <= count and not out.closed:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return None
        return out.messages[count] if len(out.messages) > count else None

    def fail(code: str | set) -> None:
        nonlocal expect, state
        if state != "done":
            expect, state = ({code} if isinstance(code, str) else set(code)), "done"

    def control(obj) -> None:
        """What a JSON object message does in the current state (PROTOCOL.md)."""
        nonlocal state, expect, seg_start, end_pos
        t = obj.get("type") if isinstance(obj, dict) else None
        if not isinstance(t, str) or t not in ("start", "reset", "end"):
            return fail("unknown_type")
        if state == "pre":
            return fail("not_started") if t != "start" else None
        if t == "start":
            return fail("already_started")
        if feed.pos % feed.width:
            return fail("partial_sample")
        n = feed.pos // feed.width
        if t == "reset":
            resets.append(held + max(0, n - skip))
            seg_start = n
        else:
            expect, state, end_pos = "final", "done", feed.pos

    aborted = False
    try:
        for act in plan.actions:
            if out.closed:
                break
            k = act.kind
            if k == "obj" and act.value.get("type") == "start":
                act, k = Action("start", act.value), "start"  # a (valid) start, maybe a second
            if k == "sleep":
                await asyncio.sleep(act.value)
                continue
            if k == "ping":
                await ws.ping()
                continue
            if k in ("abort", "frag_abort"):
                if k == "frag_abort":  # the first fragment of a message, then the TCP abort
                    async def frags():
                        yield b"\x00" * 5
                        ws.transport.abort()
                        await asyncio.sleep(3600)
                    try:
                        await asyncio.wait_for(ws.send(frags()), 0.5)
                    except (asyncio.TimeoutError, websockets.ConnectionClosed):
                        pass
                ws.transport.abort()
                out.sent.append(k)
                aborted = True
                break
            if k == "close":
                out.sent.append(f"close {act.value}")
                out.client_closed = True
                await ws.close(act.value)
                break
            if k == "bin":
                if act.value < 0:  # the bytes that complete the last sample
                    data = feed.take(-feed.pos % feed.width) if feed is not None else b""
                elif feed is not None and act.value <= MAX_FRAME:
                    data = feed.take(act.value, act.nan)
                else:
                    data = bytes(rng.getrandbits(8) for _ in range(min(act.value, 64)))
                    data = data * (act.value // max(1, len(data))) + data[: act.value % max(1, len(data))]
                await ws.send(_frags(data, act.frag))
                out.sent.append(f"bin {len(data)}{' nan' if act.nan else ''}"
                                f"{f' frag{act.frag}' if act.frag > 1 else ''}")
                if len(data) > WS_MAX_SIZE:  # refused from its header: nothing after it
                    out.rfc_close = 1009
                    fail("too_big")
                    break
                if state == "pre":
                    fail("too_big" if len(data) > MAX_FRAME else "not_started")
                elif state == "started":
                    if len(data) > MAX_FRAME:
                        fail("too_big")
                    elif feed.nan_sample is not None and feed.pos >= (feed.nan_sample + 1) * feed.width:
                        fail("non_finite")
                continue
            if k == "rfc":  # raw bytes past the client library: a frame RFC 6455 forbids
                if ws.transport.is_closing():
                    break  # the server closed it already
                ws.transport.write(BAD_FRAMES[act.value])
                out.sent.append(f"rfc {act.value}")
                out.rfc_close = 1002
                break
            if k == "utf8":  # the WebSocket layer fails the connection: nothing after it
                await ws.send(_frags(act.value, act.frag), text=True)
                out.sent.append(f"utf8 {act.value!r}")
                out.rfc_close = 1007
                break
            if k == "text":
                text = act.value
                await ws.send(text)
                out.sent.append(f"text {text[:40]!r}" + (f"...({len(text)})" if len(text) > 40 else ""))
                fail("too_big" if len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME else "bad_json")
                continue
            if k == "obj":
                text = json.dumps(act.value)
                await ws.send(_frags(text, act.frag))
                out.sent.append(f"obj {text[:60]}")
                if state in ("pre", "started"):
                    if len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME:
                        fail("too_big")
                    else:
                        control(act.value)
                continue
            # start
            msg = dict(act.value)
            target = None
            if act.resume:
                sid, smodel, status = pool.pick(rng)
                msg["session_id"] = sid
                target = (sid, smodel, status)
                if act.offset is not None:
                    msg["offset"] = act.offset
            text = json.dumps(msg)
            await ws.send(text)
            out.sent.append(f"start {text[:160]}")
            if state != "pre":
                if state == "started":
                    fail("already_started")
                continue
            if act.codes is not None:
                fail(act.codes)
                continue
            first = len(out.messages)
            reply = await next_message(first)
            if reply is None:
                out.problems.append("no answer to start")
                state = "done"
                break
            if target is not None:
                sid, smodel, status = target
                if smodel != model or status in ("unknown", "ended", "failed"):
                    allowed = {"unknown_session"}
                elif status == "clean":
                    allowed = {"session_busy"}
                else:  # live: attached, detached, expired or ended by now
                    allowed = {"started", "unknown_session", "session_busy", "offset_gap"}
                if msg.get("offset", 0) >= 2**64:  # parsed as a float: not an integer offset
                    allowed = allowed | {"bad_start"}
                got = reply.get("code") if reply.get("type") == "error" else reply.get("type")
                if got not in allowed:
                    out.problems.append(f"resume of a {status} session of {smodel or '-'} on "
                                        f"{model}: {got!r}, expected one of {sorted(allowed)}")
                if reply.get("type") == "error":
                    expect, state = {reply.get("code")}, "done"  # checked just above
                    continue
                if reply.get("session_id") != sid:
                    out.problems.append(f"resumed another session: {reply}")
                held = int(reply.get("offset", -1))
                req = msg.get("offset")
                if req is not None and req > held:
                    out.problems.append(f"resume at offset {req} started with {held} held")
                skip = held - (held if req is None else req)
                fresh = False
            elif reply.get("type") != "started":
                out.problems.append(f"valid start answered {reply}")
                state = "done"
                break
            elif reply.get("offset") != 0:
                out.problems.append(f"new session started at offset {reply.get('offset')}")
            out.session_id = reply.get("session_id")
            if out.session_id and fresh:
                pool.ids[out.session_id] = (model, "live")
            feed = Feed(rng, msg["encoding"], SPECS[model][1])
            state = "started"
        if not aborted and not out.closed:
            if state == "done" or out.rfc_close:  # the server ends it: an answer, its close
                await asyncio.wait_for(asyncio.shield(read_task), SESSION_TIMEOUT)
            else:  # nothing ends it: the client closes
                await asyncio.wait_for(ws.close(), SESSION_TIMEOUT)
        await asyncio.wait_for(asyncio.shield(read_task), SESSION_TIMEOUT)
    except asyncio.TimeoutError:
        out.problems.append(f"hang: not closed within {SESSION_TIMEOUT} s")
    except websockets.ConnectionClosed:
        await asyncio.wait_for(asyncio.shield(read_task), SESSION_TIMEOUT)
    finally:
        if not read_task.done():
            ws.transport.abort()
            read_task.cancel()

    _check(out, expect, aborted, feed, end_pos, held, skip, resets)
    # the pool learns how it ended (a resume of it expects accordingly)
    if out.session_id and out.session_id in pool.ids:
        fin = any(m.get("type") == "final" for m in out.messages)
        err = next((m for m in out.messages if m.get("type") == "error"), None)
        kept = err is not None and err.get("code") in ("timeout", "slow_consumer")
        status = "ended" if fin else "failed" if err is not None and not kept else "live"
        pool.ids[out.session_id] = (model, status)
    out.expect_final = expect == "final" and not aborted
    out.feed, out.fresh, out.seg_start, out.end_pos = feed, fresh, seg_start, end_pos
    return out


def _check(out: Outcome, expect, aborted: bool, feed, end_pos, held, skip, resets) -> None:
    """The session against what the protocol model expects (`expect`: error codes, "final",
    or None: nothing ends it but the client)."""
    msgs, p = out.messages, out.problems
    types = [m.get("type") for m in msgs]
    known = {"started", "result", "reset", "event", "final", "error", "stored"}
    if any(t not in known for t in types):
        p.append(f"unknown message types {set(types) - known}")
    errors = [m for m in msgs if m.get("type") == "error"]
    if out.close_code == 1011 or any(e.get("code") == "internal" for e in errors):
        p.append(f"internal error for a client's input: {errors[:1]} close {out.close_code}")
    for e in errors:
        if not isinstance(e.get("message"), str) or not e["message"]:
            p.append(f"error without a message: {e}")
    if len(errors) > 1 or (errors and msgs[-1] is not errors[0]):
        p.append("an error that is not the last message")
    if "final" in types and msgs[-1].get("type") != "final":
        p.append("messages after final")
    if aborted:
        return
    if not out.closed:
        p.append("connection not closed")
    if out.rfc_close is not None and out.close_code == out.rfc_close:
        # the WebSocket layer failed the connection (RFC 6455) as the frame arrived, maybe
        # before the app answered earlier messages: their answer, if any, must still be right
        if errors and isinstance(expect, set) and errors[0].get("code") not in expect:
            p.append(f"expected error {sorted(expect)} or none, got {errors[0]}")
        if "final" in types and expect != "final":
            p.append("a final that was not asked for")
        return
    if out.rfc_close is not None and expect is None:
        p.append(f"expected close {out.rfc_close}, got {out.close_code} {errors[:1]}")
        return
    if out.client_closed and not errors and "final" not in types:
        return  # the client's close crossed the server's answer (which is then never sent)
    if isinstance(expect, set):
        code = errors[0].get("code") if errors else None
        if code not in expect:
            p.append(f"expected error {sorted(expect)}, got {code!r} (close {out.close_code})")
        elif out.close_code != WS_CLOSE_CODES[code] and not (
                out.client_closed and out.close_code == out.plan.actions[-1].value):
            p.append(f"error {code} closed with {out.close_code}, not {WS_CLOSE_CODES[code]}")
        return
    if expect == "final":
        if errors or "final" not in types or out.close_code != 1000:
            p.append(f"expected final + 1000, got {types[-3:]} close {out.close_code} "
                     f"{errors[:1]}")
            return
        n = end_pos // feed.width
        want = held + max(0, n - skip)
        if msgs[-1]["offset"] != want:
            p.append(f"final offset {msgs[-1]['offset']} != {want} samples sent")
        got_resets = [m["offset"] for m in msgs if m.get("type") == "reset"]
        if got_resets != resets:
            p.append(f"reset offsets {got_resets} != {resets}")
        return
    # the client closed (or the session never started): no error, no final
    if errors:
        p.append(f"unexpected error {errors[0]} (close {out.close_code})")


async def read_until_closed(ws, msgs: list, timeout: float = 60) -> int | None:
    """Every message into `msgs` as it comes (as a client should read), until the close;
    returns the close code the server sent (None: none came)."""
    try:
        while True:
            msgs.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


async def _clean_stream(url: str, model: str, enc: str, seed: int, done: asyncio.Event,
                        pool: Pool, min_chunks: int = 40) -> tuple[np.ndarray, list, int | None]:
    """A well-behaved stream, started before the fuzz and fed (random piece sizes, small
    pauses) until it is over; its id is in the pool for resumes (they must be session_busy)."""
    rng = random.Random(seed)
    _, ch, _, _ = SPECS[model]
    feed = Feed(rng, enc, ch)
    msgs: list = []

    # no client keepalive: sending faster than the engine consumes, this client's pings wait
    # behind its own unread audio while backpressure pauses the server's reading
    async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SPECS[model][0],
                                  "encoding": enc, "channels": ch}))
        started = json.loads(await ws.recv())
        assert started["type"] == "started", started
        pool.ids[started["session_id"]] = (model, "clean")
        reader = asyncio.ensure_future(read_until_closed(ws, msgs))
        chunks = 0
        try:
            while (not done.is_set() or chunks < min_chunks) and feed.pos < 400_000 * feed.width:
                await ws.send(feed.take(rng.choice([1, 3, feed.width, 97, 640, 1283, 4000])))
                chunks += 1
                await asyncio.sleep(rng.choice([0.0, 0.01, 0.03]))
            await ws.send(feed.take(-feed.pos % feed.width))  # whole samples
            await ws.send(json.dumps({"type": "end"}))
        except websockets.ConnectionClosed:  # the server closed it: its messages say why
            pass
        code = await reader
    return feed.samples(0, feed.pos // feed.width), msgs, code


async def _health(base: str, stop: asyncio.Event, out: list) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = await c.get("/healthz")
                out.append((r.status_code, time.perf_counter() - t0))
            except httpx.HTTPError as exc:
                out.append((repr(exc), time.perf_counter() - t0))
            await asyncio.sleep(0.1)


async def fuzz(base: str, ws_base: str, n_sessions: int, concurrency: int, seed: int):
    def url_of(model):
        return f"{ws_base}/v1/models/{model}/stream"

    rng = random.Random(seed)
    plans = [make_plan(i, random.Random(rng.getrandbits(64))) for i in range(n_sessions)]
    pool, done, stop, health = Pool(), asyncio.Event(), asyncio.Event(), []
    clean = [asyncio.ensure_future(_clean_stream(url_of(m), m, e, seed + k, done, pool))
             for k, (m, e) in enumerate([("tiny", "f32le"), ("tiny2", "pcm_s16le")])]
    while sum(1 for v in pool.ids.values() if v[1] == "clean") < len(clean):
        await asyncio.sleep(0.01)
    poller = asyncio.ensure_future(_health(base, stop, health))
    queue = list(plans)
    outcomes: list[Outcome] = []

    async def worker():
        while queue:
            plan = queue.pop(0)
            try:
                outcomes.append(await asyncio.wait_for(run_session(plan, url_of, pool),
                                                       3 * SESSION_TIMEOUT))
            except Exception as exc:  # a hang past every inner timeout, or a refused connect
                o = Outcome(plan)
                o.problems.append(f"session raised {exc!r}")
                outcomes.append(o)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    done.set()
    clean_out = await asyncio.gather(*clean)
    stop.set()
    await poller
    return outcomes, clean_out, health, elapsed


def _report(outcomes: list[Outcome]) -> str:
    bad = [o for o in outcomes if o.problems]
    lines = [f"{len(bad)} of {len(outcomes)} fuzz sessions misbehaved:"]
    for o in bad[:20]:
        lines.append(f"- session {o.plan.index} model={o.plan.model}: {o.problems}")
        lines.append(f"  sent: {o.sent}")
        lines.append(f"  got: {[m.get('type') if m.get('type') != 'error' else m for m in o.messages][-6:]}"
                     f" close={o.close_code}")
    return "\n".join(lines)


def _compare_with_batch(outcomes: list[Outcome], handle) -> int:
    """Finals of fresh fuzz sessions equal the batch prediction of their last segment."""
    by_model: dict[str, list] = {}
    for o in outcomes:
        if (o.expect_final and not o.problems and o.fresh
                and o.messages and o.messages[-1].get("type") == "final"):
            n = o.end_pos // o.feed.width
            seg = o.feed.samples(o.seg_start, n)
            if len(seg) >= SPECS[o.plan.model][3] and o.messages[-1]["probabilities"]:
                by_model.setdefault(o.plan.model, []).append((seg, o.messages[-1]))
    checked = 0
    for model, items in by_model.items():
        for i in range(0, len(items), 16):
            part = items[i:i + 16]
            probs = batch_probs(handle, model, [s for s, _ in part])
            for (_, final), ref in zip(part, probs, strict=True):
                assert_probs_close(final["probabilities"], ref, 1e-5)
                checked += 1
    return checked


def _metric(text: str, name: str) -> list[float]:
    return [float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name)]


def _assert_clean_and_health(clean_out, health) -> None:
    for (x, msgs, code) in clean_out:
        assert code == 1000 and msgs and msgs[-1]["type"] == "final", (code, msgs[-3:])
        assert msgs[-1]["offset"] == len(x), (msgs[-1]["offset"], len(x))
    assert health and all(s == 200 for s, _ in health), [h for h in health if h[0] != 200][:5]
    assert max(t for _, t in health) < 2.0, sorted(t for _, t in health)[-5:]


def _assert_metrics_and_no_leaks(base: str, connections=None) -> None:
    r = httpx.get(f"{base}/metrics", timeout=10)
    assert r.status_code == 200 and "s4d_errors_total" in r.text
    assert not [v for v in _metric(r.text, 's4d_errors_total{code="internal"}') if v > 0], \
        "internal errors counted"
    deadline = time.monotonic() + IDLE_TTL + 10  # detached sessions expire after the TTL
    while True:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        active = sum(_metric(text, "s4d_sessions_active{"))
        slab = sum(_metric(text, "s4d_state_slab_bytes_in_use{"))
        conns = len(connections) if connections is not None else 0
        if (active, slab, conns) == (0, 0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (active, slab, conns) == (0, 0, 0), \
        f"left behind: {active} sessions, {slab} slab bytes, {conns} connections"


def _assert_fuzz_held(outcomes, clean_out, health, handle, min_checked: int) -> int:
    """Every session as predicted, health answered, the clean streams and the fuzz's own valid
    streams equal to the batch path; returns how many finals were compared."""
    assert not any(o.problems for o in outcomes), _report(outcomes)
    _assert_clean_and_health(clean_out, health)
    for x, msgs, _ in clean_out:
        model = "tiny" if x.shape[1] == 1 else "tiny2"
        assert_probs_close(msgs[-1]["probabilities"], batch_probs(handle, model, [x])[0], 1e-5)
    checked = _compare_with_batch(outcomes, handle)
    assert checked >= min_checked, checked  # the fuzz's own valid streams equal batch too
    return checked


def test_ws_fuzz_single_process(start_server, checkpoint_dir):
    srv = start_server(checkpoints=checkpoint_dir, max_sessions=512, idle_ttl_s=IDLE_TTL,
                       max_frame_bytes=MAX_FRAME)
    t0 = time.monotonic()
    outcomes, clean_out, health, elapsed = asyncio.run(
        fuzz(srv.base_url, srv.ws_base, n_sessions=240, concurrency=6, seed=SEED))
    assert len(outcomes) == 240
    checked = _assert_fuzz_held(outcomes, clean_out, health, srv, min_checked=40)
    st = srv.server._s4d_app.state.s4d
    _assert_metrics_and_no_leaks(srv.base_url, st.connections)
    print(f"fuzz: {len(outcomes)} sessions in {elapsed:.1f} s, {checked} finals vs batch, "
          f"total {time.monotonic() - t0:.1f} s")


def test_ws_fuzz_workers(checkpoint_dir):
    """A smaller run through `--workers 2` (two front-end processes, one engine process): the
    same checks, with every message crossing the front-end <-> engine wire."""
    from tests.test_workers import Workers

    w = Workers(checkpoint_dir, models="tiny,tiny2,tinynone,tinyema,tinybi",
                S4D_MAX_FRAME_BYTES=MAX_FRAME, S4D_IDLE_TTL_S=IDLE_TTL, S4D_MAX_SESSIONS=512)
    try:
        handle = SimpleNamespace(base_url=w.base)  # what batch_probs needs of a server
        outcomes, clean_out, health, elapsed = asyncio.run(
            fuzz(w.base, f"ws://127.0.0.1:{w.port}", n_sessions=80, concurrency=4,
                 seed=SEED + 1))
        checked = _assert_fuzz_held(outcomes, clean_out, health, handle, min_checked=10)
        _assert_metrics_and_no_leaks(w.base)
        assert w.proc.poll() is None
        print(f"fuzz (workers): {len(outcomes)} sessions in {elapsed:.1f} s, {checked} finals")
    finally:
        w.stop()


# ---- regressions of what the fuzz found -------------------------------------------------------
def _pinging_server(start_server, checkpoint_dir, **settings):
    """A server whose keepalive pings come every 0.1 s, answered within 0.25 s (uvicorn's
    defaults are 20 s and 20 s: too slow for a test). uvicorn reads both for each new
    connection from its config."""
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", **settings)
    srv.server.config.ws_ping_interval = 0.1
    srv.server.config.ws_ping_timeout = 0.25
    return srv


def test_keepalive_waits_for_a_fast_client_under_backpressure(start_server, checkpoint_dir):
    """A client sending faster than real time fills its socket buffers with audio while
    backpressure pauses the server's reading: its pongs wait behind that audio. The server
    used to fail such a connection with 1011 `keepalive ping timeout` (no error message) once
    a ping went unanswered for `ws_ping_timeout` (found by the fuzz's clean streams on a
    loaded server, with uvicorn's 20 s). It must wait: the stream ends with its exact final."""
    srv = _pinging_server(start_server, checkpoint_dir, max_buffer_samples=64)
    pool = (np.random.default_rng(5).standard_normal(1_000_000) * 0.2).astype(np.float32)
    sent = [0]  # samples sent: whatever keeps the server busy past 1 s, on any machine

    async def main():
        async with websockets.connect(srv.ws_url("tiny"), max_size=None,
                                      ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "f32le",
                                      "channels": 1, "emit_every": 0}))
            assert json.loads(await ws.recv())["type"] == "started"
            msgs: list = []
            reader = asyncio.ensure_future(read_until_closed(ws, msgs))
            t0 = time.monotonic()
            data = pool.astype("<f4").tobytes()
            try:
                for i in range(0, len(data), 4096):  # as fast as the socket takes it
                    await ws.send(data[i:i + 4096])
                    sent[0] = (i + 4096) // 4
                    if sent[0] >= 900_000 or (sent[0] >= 100_000 and time.monotonic() - t0 > 1.0):
                        break  # (the batch path's limit is 960,000 samples)
                await ws.send(json.dumps({"type": "end"}))
            except websockets.ConnectionClosed:
                pass
            code = await reader
            return msgs, code, time.monotonic() - t0

    msgs, code, elapsed = asyncio.run(main())
    x = pool[: sent[0]]
    assert code == 1000 and msgs and msgs[-1]["type"] == "final", (code, msgs[-2:])
    assert msgs[-1]["offset"] == len(x)
    assert elapsed > 1.0, elapsed  # the backlog outlived several unanswered pings
    assert_probs_close(msgs[-1]["probabilities"], batch_probs(srv, "tiny", [x[:, None]])[0], 1e-5)


def test_keepalive_timeout_is_a_documented_error(start_server, checkpoint_dir):
    """A client that stops reading its socket (and sends nothing) never answers the server's
    ping: `timeout` and close 1008 as PROTOCOL.md documents (was: 1011 `internal error` with
    no error message); its session stays resumable."""
    srv = _pinging_server(start_server, checkpoint_dir)
    start = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1}

    async def main():
        ws = await websockets.connect(srv.ws_url("tiny"), ping_interval=None)
        await ws.send(json.dumps(start))
        sid = json.loads(await ws.recv())["session_id"]
        await ws.send(np.zeros(100, "<f4").tobytes())
        await asyncio.sleep(0.3)
        ws.transport.pause_reading()  # a client whose loop stopped reading: no pongs
        await asyncio.sleep(1.0)
        ws.transport.resume_reading()
        msgs: list = []
        code = await read_until_closed(ws, msgs, 10)
        async with websockets.connect(srv.ws_url("tiny")) as ws:
            await ws.send(json.dumps({**start, "session_id": sid, "offset": 100}))
            resumed = json.loads(await ws.recv())
        return msgs, code, resumed

    msgs, code, resumed = asyncio.run(main())
    assert code == 1008 and msgs and msgs[-1]["code"] == "timeout", (code, msgs)
    assert resumed["type"] == "started" and resumed["offset"] == 100, resumed
    text = srv.metrics_text()
    assert _metric(text, 's4d_errors_total{code="timeout"}') >= [1.0]


def test_text_that_is_not_utf8_closes_1007_without_an_error_log(live_server, caplog):
    """RFC 6455: a text message that is not UTF-8 fails the connection with 1007. uvicorn logs
    each at ERROR with a traceback, so any client could fill the server's logs: here it is one
    INFO line, and the server serves on."""
    import logging

    async def main():
        async with websockets.connect(live_server.ws_url("tiny")) as ws:
            await ws.send(b'{"type": "end"}\xc3\x28', text=True)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            return closed.value.rcvd.code if closed.value.rcvd else None

    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        assert asyncio.run(main()) == 1007
    records = [r for r in caplog.records if r.name == "uvicorn.error" and "UTF-8" in r.getMessage()]
    assert records and all(r.levelno == logging.INFO and r.exc_info is None for r in records)
    assert httpx.get(live_server.base_url + "/healthz", timeout=5).status_code == 200


def test_integers_past_64_bits_say_why_they_are_refused():
    """JSON integers past 64 bits reach the server as floats: `bad_start` names the reason
    rather than calling 2**64 + 5 "not an integer"; other bad values keep the plain message."""
    import orjson

    from server.ws import StreamError, parse_start

    meta = SimpleNamespace(frame_size=320, sample_rate=16000, channels=1)
    wide = b'{"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1, ' \
           b'"session_id": "s", "offset": 18446744073709551621}'
    with pytest.raises(StreamError) as err:
        parse_start(orjson.loads(wide), meta, None)
    assert err.value.code == "bad_start" and "past 64 bits" in str(err.value)
    with pytest.raises(StreamError) as err:
        parse_start({**json.loads(wide), "offset": 1.5}, meta, None)
    assert err.value.code == "bad_start" and "past 64 bits" not in str(err.value)
