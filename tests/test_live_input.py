"""Live input (`clients/live.py`, `s4d stream -`): raw PCM read as it comes, through a pipe,
against a real server with the shipped keyword models.

Unit checks: frames are cut the same whatever sizes the reads return; the streaming resampler's
output does not depend on where the stream was cut. End to end: the bundled samples' raw PCM
piped into `s4d stream -` gives the same answer as streaming the file (bit for bit at the
model's rate; the same events from 48 kHz stereo); reads of odd sizes and pauses change
nothing; Ctrl-C ends the input, not the program (the final result is printed, exit 0); a
trailing partial frame is reported, not silently dropped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import child_pythonpath

from clients.live import LiveConformer, PcmChunker

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "server" / "static" / "samples"


# ------------------------------------------------------------------------------- unit
@pytest.mark.parametrize("encoding,channels", [("s16le", 1), ("s16le", 2), ("f32le", 3)])
def test_chunker_cuts_whole_frames_whatever_the_reads(encoding, channels):
    rng = np.random.default_rng(1)
    if encoding == "s16le":
        x = rng.integers(-32768, 32768, (1001, channels)).astype("<i2")
        want = x.astype(np.float32) / 32768
    else:
        x = rng.standard_normal((1001, channels)).astype("<f4")
        want = x
    data = x.tobytes() + b"\x01"  # one byte of a next frame that never completes
    chunker, got, i = PcmChunker(encoding, channels), [], 0
    while i < len(data):
        n = int(rng.integers(1, 50))
        got.append(chunker.feed(data[i:i + n]))
        i += n
    np.testing.assert_array_equal(np.concatenate(got), want)
    assert chunker.pending == 1


def test_conformer_resamples_and_mixes_as_one_stream():
    import soxr

    rng = np.random.default_rng(2)
    x = rng.standard_normal((48000, 2)).astype(np.float32) * 0.1
    whole = soxr.resample(x.mean(axis=1), 48000, 16000)
    for sizes in ([960], [1, 7, 480, 4801, 13]):
        conform, out, i, k = LiveConformer(48000, 2, 16000, 1), [], 0, 0
        while i < len(x):
            n = sizes[k % len(sizes)]
            out.append(conform.process(x[i:i + n]))
            i, k = i + n, k + 1
        out.append(conform.process(np.zeros((0, 2), np.float32), last=True))
        y = np.concatenate(out)
        assert y.shape == (16000, 1)
        np.testing.assert_allclose(y[:, 0], whole, atol=1e-6)
    with pytest.raises(ValueError):
        LiveConformer(16000, 2, 16000, 3)


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def url(start_server):
    if not all((ROOT / "checkpoints" / m / "config.json").exists()
               for m in ("kws-s4d", "kws-events-s4d")):
        pytest.skip("shipped checkpoints are missing")
    return start_server(checkpoints=ROOT / "checkpoints", models="kws-s4d,kws-events-s4d",
                        device="cpu", max_sessions=8).base_url


def _cli(url: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=child_pythonpath())
    return subprocess.Popen([sys.executable, "-m", "s4d_cli", "stream", "--url", url, *args],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _feed(proc: subprocess.Popen, data: bytes, sizes=(4096,), pause_s: float = 0.0,
          close: bool = True) -> None:
    i = k = 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        proc.stdin.write(data[i:i + n])
        proc.stdin.flush()
        i, k = i + n, k + 1
        if pause_s:
            time.sleep(pause_s)
    if close:
        proc.stdin.close()


def _run_fed(proc: subprocess.Popen, data: bytes, sizes=(4096,), pause_s: float = 0.0):
    """Feed stdin from a thread (as a live source would), collect stdout / stderr."""
    feeder = threading.Thread(target=_feed, args=(proc, data, sizes, pause_s), daemon=True)
    feeder.start()
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    feeder.join(timeout=10)
    return out, err


def _messages(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def _by_kind(messages: list[dict]) -> dict[str, list[dict]]:
    """Messages per type, in order, without what differs between two runs. Per type: the CLI
    prints an event when it arrives and results as it iterates them, so an event and the
    result of the same frame may print in either order."""
    out: dict[str, list[dict]] = {}
    for m in messages:
        out.setdefault(m["type"], []).append(
            {k: v for k, v in m.items() if k not in ("session_id", "latency_ms")})
    return out


def _file_messages(url: str, path: Path, *args: str) -> list[dict]:
    proc = _cli(url, "--json", *args, str(path))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return _messages(out)


def _pcm16(path: Path) -> np.ndarray:
    x, rate = soundfile.read(str(path), dtype="int16")
    assert rate == 16000
    return x


def test_piped_pcm_equals_the_file_bit_for_bit(url):
    """At the model's rate in 16 bits the samples go out as they came: every result equals
    streaming the file; reads of odd sizes with pauses between them change nothing."""
    path = SAMPLES / "kws_yes.wav"
    want = _file_messages(url, path)
    pcm = _pcm16(path).tobytes()
    for sizes, pause in (((4096,), 0.0), ((333, 1, 1001, 64), 0.002)):
        proc = _cli(url, "--json", "-")
        out, err = _run_fed(proc, pcm, sizes, pause)
        assert proc.returncode == 0, err.decode()
        got = _messages(out)
        assert got and got[-1]["type"] == "final", err.decode()
        assert got[-1]["offset"] == len(pcm) // 2
        assert got[-1]["label"] == "yes"
        assert _by_kind(got) == _by_kind(want)


def test_48k_stereo_input_is_resampled_live(url):
    """kws_stream.wav at 48 kHz, stereo (the second channel at half level), piped raw: the
    keyword events of the file, at the same offsets."""
    import soxr

    path = SAMPLES / "kws_stream.wav"
    want = [m for m in _file_messages(url, path, "--model", "kws-events-s4d")
            if m["type"] == "event"]
    assert [e["label"] for e in want] == ["yes", "stop", "go"]
    x = _pcm16(path).astype(np.float32) / 32768
    y = soxr.resample(x, 16000, 48000)
    stereo = (np.clip(np.stack([y, 0.5 * y], 1), -1, 1) * 32767).astype("<i2")
    proc = _cli(url, "--json", "--model", "kws-events-s4d", "--input-rate", "48000",
                "--input-channels", "2", "-")
    out, err = _run_fed(proc, stereo.tobytes(), (7777,))
    assert proc.returncode == 0, err.decode()
    got = _messages(out)
    assert got[-1]["type"] == "final" and got[-1]["offset"] == len(x)
    events = [m for m in got if m["type"] == "event"]
    assert [e["label"] for e in events] == [e["label"] for e in want]
    for a, b in zip(events, want, strict=True):
        assert abs(a["offset"] - b["offset"]) <= 320  # one frame: 16 -> 48 -> 16 kHz, 0.75 level


def test_ctrl_c_ends_the_input_not_the_program(url):
    """A live source never reaches EOF: SIGINT sends what was read, ends the stream, prints
    the final result and exits 0, while the source is still open."""
    pcm = _pcm16(SAMPLES / "kws_yes.wav").tobytes()
    proc = _cli(url, "--json", "-")
    _feed(proc, pcm, close=False)  # the pipe stays open: a microphone that keeps going
    lines, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the last frame's result is back
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode()
        lines.append(json.loads(line))
        if lines[-1].get("offset") == len(pcm) // 2 and lines[-1]["type"] == "result":
            break
    proc.send_signal(signal.SIGINT)  # the s4d process only: the source keeps going

    def keep_going():
        try:
            for _ in range(75):
                proc.stdin.write(pcm[:640])
                proc.stdin.flush()
                time.sleep(0.02)
        except (BrokenPipeError, ValueError, OSError):
            pass

    writer = threading.Thread(target=keep_going, daemon=True)
    writer.start()
    out = proc.stdout.read()
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 0, err.decode()
    writer.join(10)
    final = _messages(out)[-1]
    # what the client read before it handled the signal is sent: the whole file, plus any
    # whole chunks of the still-running source that it read meanwhile (seen: one), never all
    extra = final["offset"] - len(pcm) // 2
    assert final["type"] == "final" and 0 <= extra < 75 * 320, final
    assert final["label"] == "yes"
    assert b"Fatal" not in err and b"Traceback" not in err and b"Exception" not in err


def test_trailing_partial_frame_is_reported(url):
    pcm = _pcm16(SAMPLES / "kws_yes.wav").tobytes() + b"\x07"
    proc = _cli(url, "--json", "-")
    out, err = proc.communicate(pcm, timeout=120)
    assert proc.returncode == 0, err.decode()
    assert _messages(out)[-1]["offset"] == 16000
    assert b"last 1 bytes of stdin were not a whole sample frame" in err


def test_a_terminal_on_stdin_is_refused_with_a_hint(url):
    """`s4d stream -` typed without a pipe: a clear message, not a wait for a terminal."""
    import pty

    main, sub = pty.openpty()
    env = dict(os.environ, PYTHONPATH=child_pythonpath())
    proc = subprocess.run([sys.executable, "-m", "s4d_cli", "stream", "--url", url, "-"],
                          cwd=ROOT, env=env, stdin=sub, capture_output=True, timeout=60)
    os.close(main)
    os.close(sub)
    assert proc.returncode == 1
    assert b"pipe it in" in proc.stderr


def test_the_readmes_arecord_pipeline(url):
    """The README's microphone line, as written, with ALSA's null capture device (2 s of zeros,
    no pacing) standing in for the microphone."""
    import shutil

    if shutil.which("arecord") is None:
        pytest.skip("arecord (alsa-utils) is not installed")
    text = (ROOT / "README.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("arecord ") and "s4d stream" in ln)
    line = line.split("#", 1)[0].strip()
    assert line.endswith(" -")
    line = line.replace("arecord ", "arecord -D null -d 2 ", 1).replace(".venv/bin/s4d",
                                                                      f"{sys.executable} -m s4d_cli")
    env = dict(os.environ, PYTHONPATH=child_pythonpath(), S4D_URL=url)
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", line + " --json"], cwd=ROOT, env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    final = _messages(proc.stdout)[-1]
    assert final["type"] == "final" and final["offset"] == 32000
