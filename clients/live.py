"""Live input: raw PCM from a pipe or any binary reader, as chunks fit for a model's stream.

A file is read whole, resampled whole and sent. A live source (a microphone through
`arecord`, `sox -d` or `ffmpeg`, another program's output) has no end to wait for, so here it
is read as it comes, on a thread of its own (a blocking read must not stop the results coming
back, and must not keep the process alive once the stream is over), cut into whole frames
whatever sizes the reads return, mixed down, and resampled chunk by chunk with soxr's
streaming resampler, whose output does not depend on where the stream was cut (the same as
resampling it whole). It ends at EOF or when the caller sets `stop`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO

import numpy as np

PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
_EOF = object()


class PcmChunker:
    """Interleaved little-endian PCM bytes -> float32 [n, C] full-scale frames, for reads of
    any size: bytes of an incomplete frame wait for the next read."""

    def __init__(self, encoding: str, channels: int):
        if encoding not in PCM_FORMATS:
            raise ValueError(f"input encoding must be one of {sorted(PCM_FORMATS)}, got {encoding!r}")
        if channels < 1:
            raise ValueError(f"input channels must be >= 1, got {channels}")
        self.dtype, self.channels = PCM_FORMATS[encoding], int(channels)
        self.frame_bytes = self.dtype.itemsize * self.channels
        self._rest = b""

    def feed(self, data: bytes) -> np.ndarray:
        buf = self._rest + data if self._rest else data
        whole = len(buf) - len(buf) % self.frame_bytes
        self._rest = bytes(buf[whole:])
        x = np.frombuffer(buf[:whole], self.dtype).reshape(-1, self.channels)
        if self.dtype.kind == "i":
            return x.astype(np.float32) / np.float32(32768.0)
        return x.astype(np.float32)

    @property
    def pending(self) -> int:
        """Bytes held back: the start of a frame that has not fully arrived."""
        return len(self._rest)


class LiveConformer:
    """Mix down (when the model takes one channel) and resample, chunk after chunk, as one
    stream."""

    def __init__(self, rate: int, channels: int, target_rate: int, target_channels: int):
        if channels != target_channels and target_channels != 1:
            raise ValueError(f"the input has {channels} channels and the model takes "
                             f"{target_channels}")
        self.mix = channels != target_channels
        self.resampler = None
        if int(rate) != int(target_rate):
            import soxr

            self.resampler = soxr.ResampleStream(int(rate), int(target_rate), target_channels,
                                                 dtype="float32", quality="HQ")
        self.channels = target_channels

    def process(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self.mix:
            x = x.mean(axis=1, keepdims=True, dtype=np.float32)
        if self.resampler is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        y = self.resampler.resample_chunk(np.ascontiguousarray(x, dtype=np.float32), last=last)
        return y.reshape(-1, self.channels)


def _reader_thread(reader: BinaryIO, size: int, loop: asyncio.AbstractEventLoop,
                   queue: asyncio.Queue, stopped: threading.Event) -> None:
    # read1 (buffered) or a raw read: what has arrived, up to `size`, not a wait for `size`
    read = getattr(reader, "read1", None) or reader.read

    def post(item) -> bool:
        if stopped.is_set():  # the stream is over (its loop may be closed): drop, quietly
            return False
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop closed between the check and the call
            return False
        return True

    try:
        while True:
            data = read(size)
            if not data or not post(data):
                break
    except (OSError, ValueError) as exc:  # closed or broken source: the stream ends with it
        post(exc)
        return
    post(_EOF)


async def read_live(reader: BinaryIO, *, rate: int, channels: int = 1, encoding: str = "s16le",
                    target_rate: int, target_channels: int = 1, chunk_ms: float = 20.0,
                    stop: asyncio.Event | None = None,
                    on_trailing: Callable[[int], Any] | None = None) -> AsyncIterator[np.ndarray]:
    """Float32 [n, target_channels] chunks at `target_rate` from raw PCM read off `reader`
    until EOF or `stop`. `on_trailing(n)` is told of n bytes at the end that did not make a
    whole frame (they cannot be sent)."""
    chunker = PcmChunker(encoding, channels)
    conform = LiveConformer(rate, channels, target_rate, target_channels)
    size = max(chunker.frame_bytes, int(round(rate * chunk_ms / 1000.0)) * chunker.frame_bytes)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stopped = threading.Event()
    threading.Thread(target=_reader_thread, args=(reader, size, loop, queue, stopped),
                     name="s4d-live-input", daemon=True).start()
    stop_wait = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        while True:
            get = asyncio.ensure_future(queue.get())
            waits = {get} | ({stop_wait} if stop_wait is not None else set())
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:  # stopped: what was read so far still goes out
                get.cancel()
                break
            item = get.result()
            if item is _EOF:
                break
            if isinstance(item, BaseException):
                raise item
            x = conform.process(chunker.feed(item))
            if len(x):
                yield x
        while not queue.empty():  # stopped with reads already queued: they were accepted
            item = queue.get_nowait()
            if isinstance(item, bytes):
                x = conform.process(chunker.feed(item))
                if len(x):
                    yield x
        tail = conform.process(np.zeros((0, channels), np.float32), last=True)
        if len(tail):
            yield tail
        if chunker.pending and on_trailing is not None:
            on_trailing(chunker.pending)
    finally:
        stopped.set()
        if stop_wait is not None:
            stop_wait.cancel()
