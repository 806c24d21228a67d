"""Decoding REST inputs (JSON arrays, WAV, CSV, NPY) into float32 sequences [L, C]."""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np

from server.errors import ApiError

WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}
CSV_TYPES = {"text/csv", "application/csv"}
NPY_TYPES = {"application/x-npy", "application/npy", "application/octet-stream"}


def bad(code: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, code, message)


def check_sequence(x: np.ndarray, channels: int, patch: int, max_len: int, where: str) -> np.ndarray:
    """Shape [L] or [L, C] -> float32 [L, C]; finite; patch_size <= L <= max_len."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise bad("bad_input", f"{where}: expected numbers")
    if x.ndim == 1:
        if channels != 1:
            raise bad("bad_input", f"{where}: the model takes {channels} channels; send [[c0..], ...]")
        x = x[:, None]
    elif x.ndim != 2:
        raise bad("bad_input", f"{where}: expected shape [L] or [L, C], got {list(x.shape)}")
    if x.shape[1] != channels:
        raise bad("bad_input", f"{where}: {x.shape[1]} channels, the model takes {channels}")
    if x.shape[0] > max_len:
        raise bad("too_large", f"{where}: {x.shape[0]} samples > limit {max_len}", 413)
    if x.shape[0] < patch:
        raise bad("bad_input", f"{where}: needs at least {patch} samples, got {x.shape[0]}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise bad("non_finite", f"{where}: NaN or Inf in the input")
    return np.ascontiguousarray(x)


def from_json_list(seq, channels: int, patch: int, max_len: int, where: str) -> np.ndarray:
    if not isinstance(seq, list) or not seq:
        raise bad("bad_input", f"{where}: each input must be a non-empty array")
    if isinstance(seq[0], list):
        width = len(seq[0])
        if any(not isinstance(r, list) or len(r) != width for r in seq):
            raise bad("bad_input", f"{where}: rows must all be arrays of {width} numbers")
    try:
        arr = np.array(seq, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise bad("bad_input", f"{where}: not a numeric array ({exc})") from exc
    return check_sequence(arr, channels, patch, max_len, where)


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling along time (scipy.signal.resample_poly)."""
    if src == dst:
        return x
    from scipy.signal import resample_poly

    f = Fraction(dst, src).limit_denominator(10000)
    return resample_poly(x, f.numerator, f.denominator, axis=0).astype(np.float32)


def decode_wav(data: bytes, channels: int, sample_rate: int, where: str) -> np.ndarray:
    import soundfile as sf

    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises RuntimeError / LibsndfileError
        raise bad("bad_input", f"{where}: not a readable audio file ({exc})") from exc
    if x.shape[1] != channels:
        if channels == 1:
            x = x.mean(axis=1, keepdims=True)
        else:
            raise bad("bad_input", f"{where}: {x.shape[1]} audio channels, the model takes {channels}")
    if sr <= 0 or not math.isfinite(sr):
        raise bad("bad_sample_rate", f"{where}: invalid sample rate {sr}")
    return resample(x, int(sr), sample_rate)


def decode_csv(data: bytes, where: str) -> np.ndarray:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise bad("bad_input", f"{where}: CSV must be UTF-8") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise bad("bad_input", f"{where}: empty CSV")
    delim = "," if "," in lines[0] else None

    def parse(line: str) -> list[float]:
        return [float(v) for v in (line.split(delim) if delim else line.split())]

    try:
        parse(lines[0])
    except ValueError:
        lines = lines[1:]  # a header row
    try:
        rows = [parse(ln) for ln in lines]
    except ValueError as exc:
        raise bad("bad_input", f"{where}: non-numeric CSV value ({exc})") from exc
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise bad("bad_input", f"{where}: CSV rows must all have the same number of columns")
    return np.array(rows, dtype=np.float64)


def decode_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise bad("bad_input", f"{where}: not a readable .npy array ({exc})") from exc


def kind_of(content_type: str | None, filename: str | None = None) -> str | None:
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct in WAV_TYPES:
        return "wav"
    if ct in CSV_TYPES:
        return "csv"
    if ct in NPY_TYPES - {"application/octet-stream"}:
        return "npy"
    name = (filename or "").lower()
    for ext, kind in ((".wav", "wav"), (".wave", "wav"), (".flac", "wav"), (".ogg", "wav"),
                      (".csv", "csv"), (".npy", "npy")):
        if name.endswith(ext):
            return kind
    if ct == "application/octet-stream":
        return "npy"
    return None


def decode_payload(
    data: bytes, kind: str, *, channels: int, sample_rate: int, patch: int, max_len: int,
    where: str,
) -> np.ndarray:
    if kind == "wav":
        x = decode_wav(data, channels, sample_rate, where)
    elif kind == "csv":
        x = decode_csv(data, where)
    elif kind == "npy":
        x = decode_npy(data, where)
    else:
        raise bad("unsupported_media_type", f"{where}: unsupported type", 415)
    return check_sequence(x, channels, patch, max_len, where)
