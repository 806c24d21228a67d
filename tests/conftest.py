"""Shared fixtures: tiny random checkpoints and real uvicorn servers on 127.0.0.1.

Reusable by any test file:
- `make_checkpoint(root, name, **overrides) -> Path` (fixture returning the function)
- `checkpoint_dir`: session-wide folder with tiny models (see `TINY_MODELS`)
- `start_server(**settings) -> ServerHandle`: a fresh server (stopped at session end)
- `live_server`: one shared server over `checkpoint_dir` (the default settings)
- `ws_client`: helpers to stream a signal over the WebSocket protocol
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.serve import free_port  # noqa: F401 (tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: name -> (ModelConfig overrides, TaskConfig overrides)
TINY_MODELS: dict[str, tuple[dict, dict]] = {
    # 1 channel, mean pooling, 16 kHz
    "tiny": (
        dict(d_input=1, d_model=16, d_state=8, n_layers=2, d_output=3, pooling="mean"),
        dict(sample_rate=16000, input_channels=1, class_names=["a", "b", "c"], frame_size=64),
    ),
    # 2 channels, patches of 2 samples, last pooling, bilinear
    "tiny2": (
        dict(d_input=2, d_model=8, d_state=4, n_layers=1, d_output=4, patch_size=2,
             pooling="last", discretization="bilinear", init="inv",
             input_mean=[0.1, -0.2], input_std=[2.0, 0.5]),
        dict(sample_rate=100, input_channels=2, class_names=["w", "x", "y", "z"], frame_size=32),
    ),
    # per-step outputs
    "tinynone": (
        dict(d_input=1, d_model=8, d_state=4, n_layers=1, d_output=2, pooling="none"),
        dict(sample_rate=250, input_channels=1, class_names=["p", "q"], frame_size=16),
    ),
    # bidirectional: batch only
    "tinybi": (
        dict(d_input=1, d_model=8, d_state=4, n_layers=1, d_output=2, bidirectional=True),
        dict(sample_rate=16000, input_channels=1, class_names=["u", "v"], frame_size=64),
    ),
    # exponential moving average pooling, time constant 0.05 s = 100 samples at 2 kHz
    "tinyema": (
        dict(d_input=1, d_model=8, d_state=4, n_layers=2, d_output=3, pooling="ema",
             ema_tau_s=0.05, sample_rate=2000),
        dict(sample_rate=2000, input_channels=1, class_names=["yes", "no", "unknown"],
             frame_size=32),
    ),
}


def _make_checkpoint(root: Path, name: str, model: dict | None = None, task: dict | None = None,
                     seed: int = 0) -> Path:
    from model.checkpoint import save_checkpoint
    from model.config import CheckpointConfig, ModelConfig, TaskConfig
    from model.network import S4DNetwork

    mcfg = ModelConfig(**(model or {}))
    tcfg = TaskConfig(name=f"test-{name}", description=f"random test model {name}", **(task or {}))
    net = S4DNetwork(mcfg, seed=seed)
    return save_checkpoint(Path(root) / name, net, CheckpointConfig(model=mcfg, task=tcfg))


@pytest.fixture(scope="session")
def make_checkpoint():
    """`make_checkpoint(root, name, model={...}, task={...}, seed=0) -> Path`."""
    return _make_checkpoint


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    for i, (name, (m, t)) in enumerate(TINY_MODELS.items()):
        _make_checkpoint(root, name, m, t, seed=i + 1)
    return root


def tiny_stream_bank(path: Path) -> Path:
    """A small keyword stream bank in model/data/stream_bank.py's layout (val, test and train
    splits of noise "words": 20 keywords + 10 non-keywords each, and 4 rooms), for CPU tests.
    (train is drawn last: the val / test words and the rooms stay what earlier tests drew.)"""
    from model.data.streams import UNKNOWN

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    arrays = {}

    def words(split: str) -> None:
        lengths = rng.integers(3000, 7000, 30)
        arrays[f"{split}_audio"] = (rng.standard_normal(int(lengths.sum())) * 8000).astype(np.int16)
        arrays[f"{split}_lengths"] = lengths
        arrays[f"{split}_labels"] = np.array([i % 10 for i in range(20)] + [UNKNOWN] * 10)

    words("val")
    words("test")
    rirs = (rng.standard_normal((4, 400)) * 0.1).astype(np.float16)
    words("train")
    np.savez(path / "words.npz", **arrays)
    np.savez(path / "rirs.npz", rirs=rirs)
    return path


def child_pythonpath() -> str:
    """PYTHONPATH for a child process: the repo first, then what this process was given (a
    machine whose packages live in a --target folder on PYTHONPATH keeps them)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)




def start_dnsmasq(hosts: Path, port: int, workdir: Path) -> subprocess.Popen:
    """A real DNS server on 127.0.0.1:`port` answering the names in `hosts` (re-read on
    SIGHUP), as Docker's resolver answers a scaled service: for the load-balancer tests."""
    return subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--no-resolv", "--no-hosts",
         "--no-poll", f"--addn-hosts={hosts}", "--listen-address=127.0.0.1",
         "--bind-interfaces", f"--port={port}", "--local-ttl=1",
         f"--pid-file={workdir / 'dnsmasq.pid'}",
         *(["--user=root"] if os.geteuid() == 0 else [])],
        stdout=open(workdir / "dnsmasq.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM a server started with start_new_session=True, SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class ServerHandle:
    settings: object
    server: object
    thread: threading.Thread
    base_url: str
    ws_base: str
    errors: list = field(default_factory=list)

    def ws_url(self, model: str) -> str:
        return f"{self.ws_base}/v1/models/{model}/stream"

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 30.0), **kw)

    def metrics_text(self) -> str:
        return httpx.get(f"{self.base_url}/metrics", timeout=10).text

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def _start(**overrides) -> ServerHandle:
    from server.runner import build_server
    from server.settings import Settings

    overrides.setdefault("port", free_port())
    overrides.setdefault("host", "127.0.0.1")
    overrides.setdefault("log_level", "warning")
    overrides.setdefault("batch_window_ms", 2.0)
    settings = Settings(**overrides)
    server = build_server(settings)
    handle = ServerHandle(settings, server, None, f"http://127.0.0.1:{settings.port}",
                          f"ws://127.0.0.1:{settings.port}")

    def target():
        try:
            server.run()
        except BaseException as exc:  # surfaced by the readiness wait below
            handle.errors.append(exc)

    handle.thread = threading.Thread(target=target, name=f"uvicorn-{settings.port}", daemon=True)
    handle.thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if handle.errors or not handle.thread.is_alive():
            raise RuntimeError(f"server failed to start: {handle.errors}")
        try:
            r = httpx.get(f"{handle.base_url}/readyz", timeout=2)
            if r.status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    handle.stop()
    raise RuntimeError("server did not become ready within 60 s")


@pytest.fixture(scope="session")
def start_server():
    """`start_server(**settings_overrides) -> ServerHandle`; all stopped at session end."""
    handles: list[ServerHandle] = []

    def start(**overrides) -> ServerHandle:
        h = _start(**overrides)
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.stop()


@pytest.fixture(scope="session")
def live_server(start_server, checkpoint_dir) -> ServerHandle:
    return start_server(checkpoints=checkpoint_dir, max_sessions=128, idle_ttl_s=30.0)


# ---- WebSocket client helpers -----------------------------------------------------------------
def encode(signal: np.ndarray, encoding: str) -> bytes:
    """[L, C] float32 -> interleaved little-endian bytes (pcm_s16le expects values in [-1, 1))."""
    x = np.asarray(signal)
    if encoding == "f32le":
        return x.astype("<f4").tobytes()
    return np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes()


def decoded(signal: np.ndarray, encoding: str) -> np.ndarray:
    """What the server sees after decoding `encode(signal, encoding)`."""
    if encoding == "f32le":
        return np.asarray(signal, np.float32)
    q = np.clip(np.round(np.asarray(signal) * 32768), -32768, 32767).astype(np.int16)
    return q.astype(np.float32) / 32768.0


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut bytes into consecutive pieces of the given sizes (cycled)."""
    out, i, k = [], 0, 0
    while i < len(data):
        n = max(1, sizes[k % len(sizes)])
        out.append(data[i : i + n])
        i += n
        k += 1
    return out


@dataclass
class StreamResult:
    started: dict | None = None
    messages: list = field(default_factory=list)
    close_code: int | None = None

    @property
    def results(self) -> list[dict]:
        return [m for m in self.messages if m.get("type") == "result"]

    @property
    def final(self) -> dict | None:
        return next((m for m in self.messages if m.get("type") == "final"), None)

    @property
    def error(self) -> dict | None:
        return next((m for m in self.messages if m.get("type") == "error"), None)


async def recv_all(ws, into: StreamResult, timeout: float = 30.0) -> StreamResult:
    """Read messages until the server closes the socket."""
    import websockets

    try:
        while True:
            msg = await asyncio.wait_for(ws.recv(), timeout)
            into.messages.append(json.loads(msg))
    except websockets.ConnectionClosed as exc:
        into.close_code = exc.rcvd.code if exc.rcvd is not None else None
    return into


async def stream_signal(url: str, signal: np.ndarray, *, encoding: str = "f32le",
                        sizes: list[int] | None = None, start: dict | None = None,
                        reset_after: int | None = None, end: bool = True) -> StreamResult:
    """Stream `signal` ([L, C]) in byte pieces of `sizes`; `reset` after `reset_after` samples."""
    import websockets

    channels = signal.shape[1]
    res = StreamResult()
    async with websockets.connect(url, max_size=None) as ws:
        msg = {"type": "start", "encoding": encoding, "channels": channels, **(start or {})}
        await ws.send(json.dumps(msg))
        res.started = json.loads(await ws.recv())
        if res.started.get("type") != "started":
            res.messages.append(res.started)
            return await recv_all(ws, res)
        width = (4 if encoding == "f32le" else 2) * channels
        parts = []
        if reset_after is None:
            parts.append(encode(signal, encoding))
        else:
            parts += [encode(signal[:reset_after], encoding), None,
                      encode(signal[reset_after:], encoding)]
        reader = asyncio.ensure_future(recv_all(ws, res))
        for part in parts:
            if part is None:
                await ws.send(json.dumps({"type": "reset"}))
                continue
            for piece in split(part, sizes or [width * 100]):
                await ws.send(piece)
        if end:
            await ws.send(json.dumps({"type": "end"}))
        await reader
    return res


@pytest.fixture(scope="session")
def ws_client():
    """Namespace of helpers: encode, decoded, split, stream_signal, recv_all, StreamResult."""

    class NS:
        pass

    ns = NS()
    for f in (encode, decoded, split, stream_signal, recv_all, StreamResult):
        setattr(ns, f.__name__, f)
    return ns


def batch_probs(handle: ServerHandle, model: str, sequences: list[np.ndarray]) -> list[dict]:
    """The REST batch prediction for each [L, C] sequence (probabilities dicts)."""
    inputs = [s[:, 0].tolist() if s.shape[1] == 1 else s.tolist() for s in sequences]
    r = httpx.post(f"{handle.base_url}/v1/models/{model}/predict", json={"inputs": inputs},
                   timeout=60)
    assert r.status_code == 200, r.text
    return [p["probabilities"] for p in r.json()["predictions"]]


@pytest.fixture(scope="session")
def batch_predict():
    """`batch_predict(handle, model, [seq [L, C], ...]) -> [probabilities dict, ...]`."""
    return batch_probs


def assert_probs_close(a: dict, b: dict, tol: float = 1e-4) -> None:
    assert a is not None and b is not None
    assert a.keys() == b.keys()
    diff = max(abs(a[k] - b[k]) for k in a)
    assert diff <= tol, f"max |diff| {diff:.2e} > {tol}: {a} vs {b}"


@pytest.fixture(scope="session")
def probs_close():
    return assert_probs_close
