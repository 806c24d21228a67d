"""Reading signal files for the clients: WAV (and anything soundfile reads), CSV, NPY, WFDB.

Every reader returns ``(samples, sample_rate)``: float32 samples of shape [L, C] (time major,
one column per channel) and the file's sample rate, or None where the format has none
(CSV, NPY). Nothing here talks to the server.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import numpy as np

SOUND_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".aiff", ".aif"}
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
NPY_SUFFIXES = {".npy"}
WFDB_SUFFIXES = {".hea", ".dat"}

# content types the server's predict endpoint accepts for an uploaded file, by format
UPLOAD_CONTENT_TYPES = {"wav": "audio/wav", "csv": "text/csv", "npy": "application/x-npy"}


def detect_format(path: str | os.PathLike) -> str:
    """One of ``wav`` (any soundfile format), ``csv``, ``npy``, ``wfdb``; ValueError otherwise.

    A WFDB record may be named by its header (``rec.hea``), its signal file (``rec.dat``) or
    its bare record name (``rec`` with ``rec.hea`` beside it).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SOUND_SUFFIXES:
        return "wav"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in NPY_SUFFIXES:
        return "npy"
    if suffix in WFDB_SUFFIXES or Path(str(p) + ".hea").exists():
        return "wfdb"
    raise ValueError(
        f"{path}: unknown file type {suffix or '(none)'}; expected WAV, CSV, NPY or a WFDB record"
    )


def read_file(path: str | os.PathLike) -> tuple[np.ndarray, int | None]:
    """Read a signal file into (float32 [L, C], sample_rate or None)."""
    fmt = detect_format(path)
    if fmt == "wav":
        return read_wav(path)
    if fmt == "csv":
        return read_csv(path), None
    if fmt == "npy":
        return read_npy(path), None
    return read_wfdb(path)


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Any format soundfile reads. A missing file is FileNotFoundError, one that is not audio
    ValueError (both name the file), never soundfile's own error."""
    import soundfile as sf

    if not Path(path).is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.SoundFileError as exc:
        raise ValueError(f"{path}: not a readable audio file ({exc})") from None
    return np.ascontiguousarray(data, dtype=np.float32), int(rate)


def wav_is_pcm16(path: str | os.PathLike) -> bool:
    """True when the file holds 16-bit PCM (so pcm_s16le streams it losslessly)."""
    import soundfile as sf

    try:
        return sf.info(str(path)).subtype == "PCM_16"
    except Exception:  # noqa: BLE001 - not a sound file
        return False


def _split(line: str, delimiter: str | None) -> list[str]:
    return [t.strip() for t in (line.split(delimiter) if delimiter else line.split())]


def read_csv(path: str | os.PathLike) -> np.ndarray:
    """One row per time step, one column per channel; an optional header row is skipped.

    The delimiter is a comma, a semicolon or a tab (whichever the first row has), else blanks.
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path}: empty CSV file")
    first = lines[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first), None)
    rows: list[list[float]] = []
    for i, line in enumerate(lines):
        fields = _split(line, delimiter)
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            if i == 0:  # a header row
                continue
            raise ValueError(f"{path}: line {i + 1}: not numeric: {line!r}") from None
    if not rows:
        raise ValueError(f"{path}: CSV file has a header but no data")
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError(f"{path}: rows have different numbers of columns")
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), width)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Shape [L] (one channel) or [L, C]. Never unpickles."""
    arr = np.load(str(path), allow_pickle=False)
    return as_2d(arr, what=str(path))


def read_wfdb(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A WFDB record (``.hea`` + signal files) via the ``wfdb`` package, physical units."""
    try:
        import wfdb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading WFDB records needs the 'wfdb' package") from exc
    p = Path(path)
    record_name = str(p.with_suffix("")) if p.suffix.lower() in WFDB_SUFFIXES else str(p)
    record = wfdb.rdrecord(record_name)
    signal = record.p_signal
    if signal is None:  # digital only
        signal = record.d_signal
    return as_2d(np.asarray(signal), what=str(path)), int(round(float(record.fs)))


def as_2d(arr: np.ndarray, what: str = "input") -> np.ndarray:
    """[L] -> [L, 1]; [L, C] kept; float32, C-contiguous. Raises ValueError otherwise."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{what}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim != 2:
        raise ValueError(f"{what}: expected shape [L] or [L, C], got {list(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling along time (axis 0) with scipy.signal.resample_poly."""
    if from_rate == to_rate:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(from_rate), int(to_rate))
    y = resample_poly(x, int(to_rate) // g, int(from_rate) // g, axis=0)
    return np.ascontiguousarray(y, dtype=np.float32)


def conform(
    x: np.ndarray, sample_rate: int | None, target_rate: int | None, target_channels: int | None
) -> np.ndarray:
    """Make [L, C] samples fit a model: resample when both rates are known and differ; mix
    down to mono when the model takes one channel. Other channel mismatches raise ValueError.
    """
    x = as_2d(x)
    if sample_rate and target_rate and int(sample_rate) != int(target_rate):
        x = resample(x, int(sample_rate), int(target_rate))
    if target_channels is not None and x.shape[1] != target_channels:
        if target_channels == 1:
            x = np.ascontiguousarray(x.mean(axis=1, keepdims=True), dtype=np.float32)
        else:
            raise ValueError(
                f"the input has {x.shape[1]} channels and the model takes {target_channels}"
            )
    return x
