"""clients/ and bench/serve.py: file readers, the Python client, the CLI, resume, the load
generator. Unit tests need nothing; the rest run against a real `s4d serve` subprocess on a
free loopback port, serving small random checkpoints made here with model/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clients import S4DClient, S4DError, conform, encode_samples, read_file, resample
from clients.io import detect_format

ROOT = Path(__file__).resolve().parents[1]
KWS_CLASSES = [
    "yes",
    "no",
    "up",
    "down",
    "left",
    "right",
    "on",
    "off",
    "stop",
    "go",
    "unknown",
    "silence",
]
ECG_CLASSES = ["normal", "brady", "tachy", "af", "wide_qrs"]


# ------------------------------------------------------------------------------- unit
def test_read_wav(tmp_path):
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(0)
    x = (rng.uniform(-0.5, 0.5, size=(800, 2)) * 32768).round() / 32768
    p = tmp_path / "a.wav"
    sf.write(str(p), x, 8000, subtype="PCM_16")
    y, rate = read_file(p)
    assert rate == 8000 and y.dtype == np.float32 and y.shape == (800, 2)
    np.testing.assert_allclose(y, x, atol=1e-6)
    assert detect_format(p) == "wav"


def test_read_wav_missing_or_not_audio(tmp_path):
    """soundfile's own error (a RuntimeError) never escapes: `s4d stream` / `predict --scale`
    caught only OSError / ValueError and printed a traceback for a missing or broken WAV."""
    pytest.importorskip("soundfile")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_file(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFFjunkjunk")
    with pytest.raises(ValueError, match="bad.wav: not a readable audio file"):
        read_file(bad)


def test_read_csv_with_and_without_header(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(6, 2) / 7
    p1 = tmp_path / "h.csv"
    p1.write_text("lead_a,lead_b\n" + "\n".join(f"{a},{b}" for a, b in x) + "\n")
    p2 = tmp_path / "n.csv"
    p2.write_text("\n".join(f"{a}" for a in x[:, 0]))
    y1, r1 = read_file(p1)
    y2, r2 = read_file(p2)
    assert r1 is None and r2 is None
    np.testing.assert_allclose(y1, x, rtol=1e-6)
    np.testing.assert_allclose(y2, x[:, :1], rtol=1e-6)
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,x\n")
    with pytest.raises(ValueError):
        read_file(bad)


def test_read_npy(tmp_path):
    x = np.linspace(-1, 1, 50)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", np.stack([x, -x], 1).astype(np.float64))
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 4)))
    a, ra = read_file(tmp_path / "a.npy")
    b, _ = read_file(tmp_path / "b.npy")
    assert ra is None and a.shape == (50, 1) and b.shape == (50, 2) and b.dtype == np.float32
    with pytest.raises(ValueError):
        read_file(tmp_path / "c.npy")


def test_read_wfdb(tmp_path):
    wfdb = pytest.importorskip("wfdb")
    t = np.arange(720) / 360
    sig = np.stack([np.sin(2 * np.pi * 1.2 * t), 0.5 * np.cos(2 * np.pi * 3 * t)], 1)
    wfdb.wrsamp(
        "rec",
        fs=360,
        units=["mV", "mV"],
        sig_name=["MLII", "V5"],
        p_signal=sig,
        fmt=["212", "212"],
        write_dir=str(tmp_path),
    )
    for name in ("rec.hea", "rec.dat", "rec"):
        y, rate = read_file(tmp_path / name)
        assert rate == 360 and y.shape == (720, 2)
        np.testing.assert_allclose(y, sig, atol=2e-3)  # 212 format quantization


def test_conform_and_resample():
    x = np.random.default_rng(1).standard_normal((8000, 2)).astype(np.float32)
    y = conform(x, 8000, 16000, 1)
    assert y.shape == (16000, 1) and y.dtype == np.float32
    assert resample(x, 360, 250).shape == (5556, 2)
    assert conform(x, None, 16000, 2) is not None  # unknown rate: left as is
    with pytest.raises(ValueError):
        conform(x[:, :1], 16000, 16000, 2)


def test_encode_samples():
    x = np.array([0.0, 0.5, -1.0, 0.99999, 1.5], dtype=np.float32)
    data, n = encode_samples(x, 1, "pcm_s16le")
    assert n == 5
    np.testing.assert_array_equal(np.frombuffer(data, "<i2"), [0, 16384, -32768, 32767, 32767])
    data, n = encode_samples(np.stack([x, -x], 1), 2, "f32le")
    assert n == 5 and np.frombuffer(data, "<f4")[:4].tolist() == [0.0, -0.0, 0.5, -0.5]
    with pytest.raises(S4DError) as ei:
        encode_samples(np.array([np.nan]), 1, "f32le")
    assert ei.value.code == "non_finite"
    with pytest.raises(ValueError):
        encode_samples(x, 2, "f32le")


# ------------------------------------------------------------------------------- server
def _make_checkpoints(root: Path) -> None:
    torch = pytest.importorskip("torch")
    from model.checkpoint import save_checkpoint
    from model.config import CheckpointConfig, ModelConfig, TaskConfig
    from model.network import S4DNetwork

    torch.manual_seed(0)
    specs = [
        ("kws-s4d", 16000, KWS_CLASSES, 320, 0),
        ("ecg-s4d", 250, ECG_CLASSES, 50, 1),
    ]
    for name, rate, classes, frame, seed in specs:
        mc = ModelConfig(d_input=1, d_model=16, d_state=8, n_layers=2, d_output=len(classes))
        task = TaskConfig(
            name=name, sample_rate=rate, input_channels=1, class_names=classes, frame_size=frame
        )
        net = S4DNetwork(mc, seed=seed).eval()
        save_checkpoint(root / name, net, CheckpointConfig(model=mc, task=task))


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_server):
    """(url, checkpoints dir) of a real uvicorn server on 127.0.0.1 (conftest's start_server)
    serving small random kws-s4d / ecg-s4d models; S4D_TEST_URL uses a running one."""
    if os.environ.get("S4D_TEST_URL"):
        return os.environ["S4D_TEST_URL"], None
    ckpt = tmp_path_factory.mktemp("ckpt")
    _make_checkpoints(ckpt)
    handle = start_server(checkpoints=ckpt, device="cpu", idle_ttl_s=30.0)
    return handle.base_url, ckpt


@pytest.fixture(scope="module")
def client(server):
    with S4DClient(server[0], timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def kws_wav(tmp_path_factory):
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(3)
    t = np.arange(16000 * 3 // 4) / 16000
    x = 0.3 * np.sin(2 * np.pi * 300 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)
    p = tmp_path_factory.mktemp("wav") / "clip.wav"
    sf.write(str(p), x, 16000, subtype="PCM_16")
    return p


def _probs(d) -> np.ndarray:
    probs = d.probabilities if hasattr(d, "probabilities") else d["probabilities"]
    return np.array([probs[c] for c in sorted(probs)])


def test_models_and_errors(client):
    names = {m["name"] for m in client.models()}
    assert {"kws-s4d", "ecg-s4d"} <= names
    meta = client.model("kws-s4d")
    assert meta["sample_rate"] == 16000 and meta["input_channels"] == 1
    with pytest.raises(S4DError) as ei:
        client.model("no-such-model")
    assert ei.value.code == "unknown_model" and ei.value.status == 404
    with pytest.raises(S4DError) as ei:
        client.predict("no-such-model", np.zeros(100, np.float32))
    assert ei.value.code == "unknown_model"
    with pytest.raises(S4DError) as ei:
        with client.stream("no-such-model", sample_rate=16000) as s:
            s.send(np.zeros(320, np.float32))
    assert ei.value.code == "unknown_model"


def test_predict_arrays_and_files(client, kws_wav, tmp_path):
    x, rate = read_file(kws_wav)
    a, b = client.predict("kws-s4d", [x[:, 0], x[:4000]])
    assert a.label in KWS_CLASSES and a.num_samples == len(x) and b.num_samples == 4000
    assert abs(sum(a.probabilities.values()) - 1) < 1e-4
    (w,) = client.predict("kws-s4d", kws_wav)
    np.testing.assert_allclose(_probs(w), _probs(a), atol=1e-5)
    np.save(tmp_path / "clip.npy", x)
    (tmp_path / "clip.csv").write_text("amp\n" + "\n".join(repr(float(v)) for v in x[:, 0]))
    both = client.predict("kws-s4d", [tmp_path / "clip.npy", str(tmp_path / "clip.csv")])
    for p in both:
        np.testing.assert_allclose(_probs(p), _probs(a), atol=1e-5)


def test_predict_wfdb_resampled(client, tmp_path):
    wfdb = pytest.importorskip("wfdb")
    t = np.arange(360 * 4) / 360
    sig = np.stack([np.sin(2 * np.pi * 1.2 * t), 0.2 * np.sin(2 * np.pi * 7 * t)], 1)
    wfdb.wrsamp(
        "ecg",
        fs=360,
        units=["mV", "mV"],
        sig_name=["MLII", "V1"],
        p_signal=sig,
        fmt=["16", "16"],
        write_dir=str(tmp_path),
    )
    (p,) = client.predict("ecg-s4d", tmp_path / "ecg.hea")
    assert p.num_samples == 1000  # 4 s at the model's 250 Hz, mixed down to one lead
    y, _ = read_file(tmp_path / "ecg.hea")
    (q,) = client.predict("ecg-s4d", conform(y, 360, 250, 1))
    np.testing.assert_allclose(_probs(p), _probs(q), atol=1e-6)


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s4d_cli", *args],
        cwd=ROOT,
        timeout=timeout,
        capture_output=True,
        text=True,
    )


def test_predict_cli(server, client, kws_wav, tmp_path):
    np.save(tmp_path / "x.npy", read_file(kws_wav)[0])
    r = _run_cli(
        "predict",
        "--url",
        server[0],
        "--model",
        "kws-s4d",
        str(kws_wav),
        str(tmp_path / "x.npy"),
        str(tmp_path / "missing.wav"),
    )
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert r.returncode == 1 and len(lines) == 3, r.stderr
    (ref,) = client.predict("kws-s4d", kws_wav)
    for d in lines[:2]:
        assert d["model"] == "kws-s4d" and d["label"] == ref.label
        np.testing.assert_allclose(_probs(d), _probs(ref), atol=1e-6)
    assert "error" in lines[2]


def test_stream_file_matches_predict(client, kws_wav):
    (ref,) = client.predict("kws-s4d", kws_wav)
    msgs = list(client.stream_file("kws-s4d", kws_wav, chunk_ms=37))
    final = msgs[-1]
    assert final["type"] == "final" and final["offset"] == ref.num_samples
    results = msgs[:-1]
    assert results and all(m["type"] == "result" for m in results)
    offsets = [m["offset"] for m in results]
    assert offsets == sorted(offsets) and all(o % 320 == 0 for o in offsets)
    np.testing.assert_allclose(_probs(final), _probs(ref), atol=1e-4)
    assert final["label"] == ref.label


def test_stream_resampled_f32(client, tmp_path):
    sf = pytest.importorskip("soundfile")
    x = 0.2 * np.sin(2 * np.pi * 220 * np.arange(8000) / 8000)[:, None].repeat(2, 1)
    p = tmp_path / "st8k.wav"
    sf.write(str(p), x, 8000, subtype="FLOAT")
    ref = client.predict("kws-s4d", conform(read_file(p)[0], 8000, 16000, 1))[0]
    final = list(client.stream_file("kws-s4d", p, emit_every=0))[-1]
    assert final["type"] == "final" and final["offset"] == 16000
    np.testing.assert_allclose(_probs(final), _probs(ref), atol=1e-4)


def test_stream_resume_after_disconnect(client, kws_wav):
    x, _ = read_file(kws_wav)
    (ref,) = client.predict("kws-s4d", x)
    seen = []
    with client.stream(
        "kws-s4d", sample_rate=16000, encoding="pcm_s16le", on_result=seen.append
    ) as s:
        sid = s.session_id
        for k, i in enumerate(range(0, len(x), 500)):
            s.send(x[i : i + 500])
            if k in (6, 15):
                time.sleep(0.05)
                s._abort_connection()
        final = s.end()
    assert s.reconnects >= 1 and s.session_id == sid
    assert final["offset"] == len(x)
    np.testing.assert_allclose(_probs(final), _probs(ref), atol=1e-4)
    assert seen[-1]["type"] == "final"


def test_stream_reset_and_cli(server, client, kws_wav):
    x, _ = read_file(kws_wav)
    with client.stream("kws-s4d", sample_rate=16000, encoding="f32le") as s:
        s.send(x[:3000])
        n = s.reset()
        assert n == 3000
        s.send(x[3000:])
        final = s.end()
    (ref,) = client.predict("kws-s4d", x[3000:])
    np.testing.assert_allclose(_probs(final), _probs(ref), atol=1e-4)
    r = _run_cli(
        "stream",
        "--url",
        server[0],
        "--model",
        "kws-s4d",
        str(kws_wav),
        "--json",
        "--emit-every",
        "1600",
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert lines[-1]["type"] == "final" and lines[-1]["offset"] == len(x)
    results = [m for m in lines[:-1] if m["type"] == "result"]  # events may come too
    assert [m["offset"] for m in results] == list(range(1600, len(x) + 1, 1600))


def test_bench_serve_short(server, tmp_path):
    """The load generator starts its own server on the test checkpoints (or uses S4D_TEST_URL)."""
    url, ckpt = server
    out = tmp_path / "bench.json"
    args = ["--model", "kws-s4d", "--streams", "2,1", "--duration", "2", "--warmup", "0.5"]
    args += ["--json", "--output", str(out), "--client-procs", "1", "--device", "cpu"]
    args += ["--checkpoints", str(ckpt)] if ckpt else ["--url", url]
    r = subprocess.run(
        [sys.executable, "-m", "bench.serve", *args],
        cwd=ROOT,
        timeout=90,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert json.loads(out.read_text()) == report
    assert report["frame_size"] == 320 and report["sample_rate"] == 16000
    run, small = report["runs"]  # the counts run in the order given
    assert small["streams"] == 1
    # shape, not speed: a loaded CI machine may well be too slow for real time
    assert run["streams"] == 2 and run["frames_measured"] > 100
    assert run["error_count"] == 0 and run["results_received"] > 0
    lat = run["latency_ms"]
    assert set(lat) >= {"p50", "p95", "p99", "max"} and 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert 0 < run["rtf"] <= 1.05 and isinstance(run["pass"], bool)
    assert 0 <= run["late_frames"] <= run["frames_measured"]
    assert 0 <= run["late_streams"] <= run["streams"] and "bins" in run["late_bins_100ms"]
    passed = [r["streams"] for r in report["runs"] if r["pass"]]
    assert report["max_streams"] == (max(passed) if passed else None)
    if ckpt:
        assert report["server_started_here"] and run["server_cpu_percent"] >= 0
        # one process serves here: all its CPU per answered frame is the "server" role's
        per_frame = run["server_cpu_us_per_frame"]
        assert per_frame["server"] > 0 and per_frame["engine"] == per_frame["front-ends"] == 0
        # what the machine took from the server (Linux: /proc/stat steal, schedstat waits)
        assert run["server_cpu_steal_percent"] >= 0 and run["server_runqueue_wait_percent"] >= 0
        seen = run["server_metrics"]  # the server's own /metrics over the window
        assert seen["steps"] > 0 and seen["step_ms_mean"] > 0 and seen["batch_mean"] >= 1
        assert isinstance(seen["gc_pauses"], dict)
        lag = seen["loop_lag"]["server"]  # the event loop's 10 ms timer, sampled all along
        assert lag["samples"] > 0 and 0 <= lag["over_50ms"] <= lag["over_20ms"] <= lag["samples"]


def test_async_client_results_iterator(server, kws_wav):
    import asyncio

    from clients import AsyncS4DClient

    x, _ = read_file(kws_wav)

    async def main():
        async with AsyncS4DClient(server[0]) as c:
            (ref,) = await c.predict("kws-s4d", x)
            async with c.stream("kws-s4d", sample_rate=16000, encoding="pcm_s16le") as s:

                async def feed():
                    for i in range(0, len(x), 1000):
                        await s.send(x[i : i + 1000])
                    return await s.end()

                task = asyncio.ensure_future(feed())
                msgs = [m async for m in s.results()]
                final = await task
            return ref, msgs, final

    ref, msgs, final = asyncio.run(main())
    assert msgs[-1] == final and [m["offset"] for m in msgs[:-1]] == list(
        range(320, len(x) + 1, 320)
    )
    np.testing.assert_allclose(_probs(final), _probs(ref), atol=1e-4)


def test_bench_serve_says_when_frames_were_late():
    from bench.serve import _late_bins, late_where

    bins = _late_bins(np.array([0.01, 0.05, 0.07, 1.23, 5.0]))  # due times, s into the window
    assert bins == {"bins": 3, "densest": [[0.0, 3], [1.2, 1], [5.0, 1]]}
    assert _late_bins(np.array([])) == {"bins": 0, "densest": []}
    line = late_where({"late_frames": 5, "late_streams": 2, "late_bins_100ms": bins})
    assert line == "  late in 2 streams, 3 bins of 100 ms (densest 0.0 s: 3)"
    assert late_where({"late_frames": 0, "late_streams": 0, "late_bins_100ms": bins}) == ""


def test_bench_serve_stream_counts():
    """--streams takes a list of counts; anything but positive integers is refused."""
    import argparse

    from bench.serve import _int_list

    assert _int_list("2000, 2048") == [2000, 2048]
    for bad in ("", "a", "0", "-3", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            _int_list(bad)
