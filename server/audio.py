"""Decoding REST inputs (JSON arrays, WAV/FLAC/OGG, CSV, NPY) into float32 sequences [L, C].

Every decoder checks what the input *claims* (file header, line count, array header) against
the limits before it does the work, so a 20 KB file cannot expand into gigabytes. These
functions are synchronous and CPU-bound: the REST layer runs them in the decode thread pool
(server/limits.py), never on the event loop.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from server.errors import ApiError

WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}
FLAC_TYPES = {"audio/flac", "audio/x-flac"}
OGG_TYPES = {"audio/ogg", "application/ogg"}
CSV_TYPES = {"text/csv", "application/csv"}
NPY_TYPES = {"application/x-npy", "application/npy", "application/octet-stream"}

#: declared kind -> libsndfile container formats that may carry it
AUDIO_CONTAINERS = {"wav": {"WAV", "WAVEX", "RF64"}, "flac": {"FLAC"}, "ogg": {"OGG"}}
_F32_MAX = float(np.finfo(np.float32).max)
_TYPE_NAMES = {str: "a string", bool: "a boolean", type(None): "null", list: "an array",
               dict: "an object"}


@dataclass(frozen=True)
class DecodeSpec:
    """What a model takes and what the server allows: checked before and after decoding."""

    channels: int
    sample_rate: int
    patch: int
    max_len: int
    min_rate: int = 1000
    max_rate: int = 384000


def bad(code: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, code, message)


def too_large(where: str, n: int, limit: int, what: str = "samples") -> ApiError:
    return bad("too_large", f"{where}: {n} {what} > limit {limit}", 413)


def check_sequence(x: np.ndarray, channels: int, patch: int, max_len: int, where: str) -> np.ndarray:
    """Shape [L] or [L, C] -> float32 [L, C]; finite; within float32; patch_size <= L <= max_len."""
    x = np.asarray(x)
    if x.dtype == object or x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise bad("bad_input", f"{where}: expected numbers")
    if np.iscomplexobj(x):
        raise bad("bad_input", f"{where}: complex values are not accepted (send real numbers)")
    if x.ndim == 1:
        if channels != 1:
            raise bad("bad_channels",
                      f"{where}: the model takes {channels} channels; send [[c0..], ...]")
        x = x[:, None]
    elif x.ndim != 2:
        raise bad("bad_input", f"{where}: expected shape [L] or [L, C], got {list(x.shape)}")
    if x.shape[1] != channels:
        raise bad("bad_channels", f"{where}: {x.shape[1]} channels, the model takes {channels}")
    if x.shape[0] > max_len:
        raise too_large(where, x.shape[0], max_len)
    if x.shape[0] < patch:
        raise bad("bad_input", f"{where}: needs at least {patch} samples, got {x.shape[0]}")
    if x.dtype.kind == "f" and x.size:
        if not np.isfinite(x).all():
            raise bad("non_finite", f"{where}: NaN or Inf in the input")
        if x.dtype.itemsize > 4 and float(np.abs(x).max()) > _F32_MAX:
            raise bad("bad_input", f"{where}: a value is outside the float32 range")
    elif x.dtype.kind in "iu" and x.size and float(np.abs(x.astype(np.float64)).max()) > _F32_MAX:
        raise bad("bad_input", f"{where}: a value is outside the float32 range")
    return np.ascontiguousarray(x.astype(np.float32))


# ---- JSON ----------------------------------------------------------------------------------
def _kind_name(t: type) -> str:
    return _TYPE_NAMES.get(t, t.__name__)


def from_json_list(seq, channels: int, patch: int, max_len: int, where: str) -> np.ndarray:
    """A parsed JSON sequence -> [L, C]. Only JSON numbers are samples: strings, booleans, null
    and deeper arrays are refused (NumPy would silently turn "1.5" and true into numbers)."""
    if not isinstance(seq, list) or not seq:
        raise bad("bad_input", f"{where}: each input must be a non-empty array")
    if len(seq) > max_len:
        raise too_large(where, len(seq), max_len)
    if type(seq[0]) is list:
        width = len(seq[0])
        if width == 0 or any(type(r) is not list or len(r) != width for r in seq):
            raise bad("bad_input", f"{where}: rows must all be non-empty arrays of {width} numbers")
        types = set(map(type, itertools.chain.from_iterable(seq)))
    else:
        types = set(map(type, seq))
    odd = types - {int, float}
    if odd:
        names = ", ".join(sorted(_kind_name(t) for t in odd))
        raise bad("bad_input", f"{where}: samples must be JSON numbers, got {names}")
    try:
        arr = np.array(seq, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise bad("bad_input", f"{where}: not a numeric array ({type(exc).__name__})") from exc
    if not np.isfinite(arr).all():  # JSON has no NaN/Inf literal: this is an overflowed number
        raise bad("bad_input", f"{where}: a number is outside the float range")
    return check_sequence(arr, channels, patch, max_len, where)


# ---- audio ---------------------------------------------------------------------------------
def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling along time (scipy.signal.resample_poly)."""
    if src == dst:
        return x
    from scipy.signal import resample_poly

    f = Fraction(dst, src).limit_denominator(10000)
    return resample_poly(x, f.numerator, f.denominator, axis=0).astype(np.float32)


def decode_audio(data: bytes, kind: str, spec: DecodeSpec, where: str) -> np.ndarray:
    """Header first (container, rate, channels, frames x resampling ratio), then a read bounded
    to the frames the limit allows, then resampling. `kind`: the declared wav | flac | ogg."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # LibsndfileError / RuntimeError: the message names the BytesIO
        raise bad("bad_input", f"{where}: not a readable audio file ({exc})") from exc
    allowed = AUDIO_CONTAINERS.get(kind, set())
    if info.format not in allowed:
        raise bad("unsupported_media_type",
                  f"{where}: declared {kind.upper()} but the file is {info.format}; send it "
                  f"with its own content type", 415)
    sr = info.samplerate
    # a file at the model's own rate is never resampled, so it is fine at any rate (a 250 Hz ECG)
    if sr != spec.sample_rate and not (spec.min_rate <= sr <= spec.max_rate):
        raise bad("bad_sample_rate", f"{where}: sample rate {sr} Hz is outside the accepted "
                  f"range {spec.min_rate}..{spec.max_rate} Hz")
    if info.channels != spec.channels and not (spec.channels == 1 and info.channels == 2):
        raise bad("bad_channels", f"{where}: {info.channels} audio channels; the model takes "
                  f"{spec.channels}" + (" (stereo is mixed down)" if spec.channels == 1 else ""))
    ratio = spec.sample_rate / sr
    max_frames = math.floor(spec.max_len / ratio)  # input frames that stay within the limit
    if info.frames == 0:  # empty, not too large (a JSON input must be non-empty too)
        raise bad("bad_input", f"{where}: the audio file holds no samples")
    if info.frames <= 0 or info.frames > max_frames:
        n = math.ceil(info.frames * ratio) if info.frames > 0 else "unknown"
        raise bad("too_large", f"{where}: the header declares {info.frames} frames at {sr} Hz "
                  f"= {n} samples at {spec.sample_rate} Hz > limit {spec.max_len}", 413)
    try:
        x, _ = sf.read(io.BytesIO(data), frames=max_frames + 1, dtype="float32", always_2d=True)
    except Exception as exc:
        raise bad("bad_input", f"{where}: the audio data cannot be decoded ({exc})") from exc
    if len(x) > max_frames:  # the header understated the length
        raise too_large(where, math.ceil(len(x) * ratio), spec.max_len)
    if x.shape[1] != spec.channels:
        x = x.mean(axis=1, keepdims=True)
    return resample(x, int(sr), spec.sample_rate)


# ---- CSV -----------------------------------------------------------------------------------
_BLANK_LINE = re.compile(rb"(?m)^[ \t]*\r?\n")
_LETTER = re.compile(rb"[A-Za-z_]")
_SEP = np.zeros(256, bool)
_SEP[[ord(" "), ord("\t"), ord(","), ord("\n")]] = True


def _commas_per_line(body: bytes) -> np.ndarray:
    b = np.frombuffer(body, np.uint8)
    commas, ends = np.flatnonzero(b == ord(",")), np.flatnonzero(b == ord("\n"))
    return np.diff(np.concatenate(([0], np.searchsorted(commas, ends), [len(commas)])))


def _tokens_per_line(body: bytes) -> np.ndarray:
    """Count of separator-delimited fields on each line, vectorised over the bytes."""
    b = np.frombuffer(body, np.uint8)
    word = ~_SEP[b]
    starts = np.flatnonzero(word[1:] & ~word[:-1]) + 1
    if word[0]:
        starts = np.concatenate(([0], starts))
    ends = np.flatnonzero(b == ord("\n"))
    return np.diff(np.concatenate(([0], np.searchsorted(starts, ends), [len(starts)])))


_PARSE_CHUNK = 1 << 19


def _parse_numbers(text: bytes, comma: bool) -> np.ndarray:
    """numpy's C text-to-float loop (raises ValueError on a token that is not a number or an
    empty field, `1,,2`), over
    pieces of ~512 KB cut at line ends: the loop holds the GIL, and between pieces the event
    loop thread gets it back (one 8 MB call would stall it ~0.2 s)."""
    out, i, n = [], 0, len(text)
    while i < n:
        j = text.find(b"\n", i + _PARSE_CHUNK)
        j = n if j < 0 else j
        piece = text[i:j]
        out.append(np.fromstring(piece.replace(b"\n", b","), sep=",") if comma
                   else np.fromstring(piece, sep=" "))
        i = j + 1
    return np.concatenate(out) if out else np.zeros(0)


def decode_csv(data: bytes, max_len: int, where: str) -> np.ndarray:
    """One row per time step, one column per channel (comma or whitespace separated), an
    optional header row. The line count is checked before anything is parsed."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.count(b"\n") + 1
    if lines > max_len + 2:  # a header row and a trailing newline
        raise too_large(where, lines, max_len + 1, "CSV lines")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad("bad_input", f"{where}: CSV must be UTF-8") from exc
    body = data.replace(b"\r\n", b"\n").strip()
    if b"\n\n" in body or b"\n " in body or b"\n\t" in body:  # maybe blank lines: drop them
        body = _BLANK_LINE.sub(b"", body).strip()
    if not body:
        raise bad("bad_input", f"{where}: empty CSV")
    first, _, rest = body.partition(b"\n")
    comma = b"," in first
    try:
        _parse_numbers(first, comma)
    except ValueError:
        if not _LETTER.search(first):
            raise bad("bad_input", f"{where}: non-numeric CSV value in row 1") from None
        body = rest.strip()  # a header row (names: it has letters)
        if not body:
            raise bad("bad_input", f"{where}: a CSV header but no rows") from None
    if b"," not in body and b" " not in body and b"\t" not in body:
        counts = np.ones(body.count(b"\n") + 1, np.int64)  # one column: a field per line
    elif comma:
        counts = _commas_per_line(body) + 1
    else:
        counts = _tokens_per_line(body)
    cols = int(counts[0])
    if cols == 0 or (counts != cols).any():
        row = int(np.flatnonzero(counts != cols)[0]) + 1 if cols else 1
        raise bad("bad_input", f"{where}: CSV rows must all have the same number of columns "
                  f"(data row {row} differs)")
    try:
        values = _parse_numbers(body, comma)
    except ValueError as exc:
        raise bad("bad_input", f"{where}: non-numeric CSV value") from exc
    if values.size != len(counts) * cols:
        raise bad("bad_input", f"{where}: non-numeric CSV value")
    return values.reshape(len(counts), cols)


# ---- NPY -----------------------------------------------------------------------------------
def decode_npy(data: bytes, spec: DecodeSpec, where: str) -> np.ndarray:
    """The .npy header (dtype, shape) is checked before the array is read; never unpickles."""
    from numpy.lib import format as npf

    f = io.BytesIO(data)
    try:
        version = npf.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npf.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npf.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:
        raise bad("bad_input", f"{where}: not a readable .npy array ({exc})") from exc
    if dtype.kind == "c":
        raise bad("bad_input", f"{where}: complex arrays are not accepted (send the real signal; "
                  "for I/Q data, real and imaginary parts as two channels)")
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "fiu":
        raise bad("bad_input", f"{where}: .npy dtype {dtype.str} is not a real number type")
    if len(shape) not in (1, 2):
        raise bad("bad_input", f"{where}: expected shape [L] or [L, C], got {list(shape)}")
    if shape[0] > spec.max_len:
        raise too_large(where, shape[0], spec.max_len)
    width = shape[1] if len(shape) == 2 else 1
    if width != spec.channels:
        raise bad("bad_channels", f"{where}: {width} channels, the model takes {spec.channels}")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise bad("bad_input", f"{where}: not a readable .npy array ({exc})") from exc


# ---- dispatch ------------------------------------------------------------------------------
def kind_of(content_type: str | None, filename: str | None = None) -> str | None:
    """wav | flac | ogg | csv | npy from the content type, else the file name, else None."""
    ct = (content_type or "").split(";")[0].strip().lower()
    for types, kind in ((WAV_TYPES, "wav"), (FLAC_TYPES, "flac"), (OGG_TYPES, "ogg"),
                        (CSV_TYPES, "csv"), (NPY_TYPES - {"application/octet-stream"}, "npy")):
        if ct in types:
            return kind
    name = (filename or "").lower()
    for ext, kind in ((".wav", "wav"), (".wave", "wav"), (".flac", "flac"), (".ogg", "ogg"),
                      (".csv", "csv"), (".npy", "npy")):
        if name.endswith(ext):
            return kind
    if ct == "application/octet-stream":
        return "npy"
    return None


def decode_payload(data: bytes, kind: str, spec: DecodeSpec, where: str) -> np.ndarray:
    if kind in AUDIO_CONTAINERS:
        x = decode_audio(data, kind, spec, where)
    elif kind == "csv":
        x = decode_csv(data, spec.max_len, where)
    elif kind == "npy":
        x = decode_npy(data, spec, where)
    else:
        raise bad("unsupported_media_type", f"{where}: unsupported type", 415)
    return check_sequence(x, spec.channels, spec.patch, spec.max_len, where)
