"""REST + streaming clients for s4d-serve, speaking only the wire protocol (server/PROTOCOL.md).

    from clients import S4DClient
    with S4DClient("http://127.0.0.1:8000") as c:
        print(c.models())
        print(c.predict("kws-s4d", "yes.wav")[0].label)
        for r in c.stream_file("kws-s4d", "yes.wav"):
            print(r["offset"], r["label"])
        for r in c.stream_live("kws-s4d", sys.stdin.buffer.raw, rate=48000):  # raw s16le
            print(r["offset"], r["label"])

`AsyncS4DClient` is the same API with coroutines and async iterators.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import numpy as np

from . import io as cio
from ._portal import Portal
from .errors import S4DError
from .live import read_live
from .stream import _DEFAULT, AsyncStreamSession, _parse_http_error, ws_url_for

DEFAULT_URL = os.environ.get("S4D_URL", "http://127.0.0.1:8000")

PathLike = str | os.PathLike

# the deadline (time.monotonic()) of the REST call in progress in this task: every request it
# makes is bounded by it (see AsyncS4DClient._request)
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("s4d_rest_deadline",
                                                                         default=None)


def _deadline_in(timeout: float | None) -> float | None:
    """`timeout` seconds from now, or the enclosing call's deadline if that comes first."""
    outer = _DEADLINE.get()
    if timeout is None:
        return outer
    deadline = time.monotonic() + timeout
    return deadline if outer is None else min(deadline, outer)


@contextlib.contextmanager
def _deadline(timeout: float | None) -> Iterator[None]:
    """Every REST request made inside shares one deadline, `timeout` seconds from now (or
    the enclosing one's, whichever is first); None: no deadline of its own."""
    token = _DEADLINE.set(_deadline_in(timeout))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


@dataclass
class Prediction:
    """One sequence's prediction. ``per_step`` is [steps, classes] when asked for."""

    label: str
    probabilities: dict[str, float]
    num_samples: int
    per_step: np.ndarray | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: Any) -> Prediction:
        """One item of a predict response's ``predictions``; S4DError ``bad_response`` when
        it is not one (see PROTOCOL.md)."""
        if not isinstance(d, dict):
            raise _bad_response("a prediction that is not an object", d)
        label, probs, n = d.get("label"), d.get("probabilities"), d.get("num_samples")
        if not isinstance(label, str):
            raise _bad_response("a prediction whose label is not a string", d)
        if not isinstance(probs, dict) or not all(_is_number(v) for v in probs.values()):
            raise _bad_response("a prediction whose probabilities are not {class: number}", d)
        if not _is_int(n) or n < 0:
            raise _bad_response("a prediction whose num_samples is not an integer >= 0", d)
        per_step = d.get("per_step")
        if per_step is not None:
            try:
                per_step = np.asarray(per_step, dtype=np.float32)
            except (TypeError, ValueError):
                per_step = None
            if per_step is None or per_step.ndim != 2:
                raise _bad_response("a prediction whose per_step is not [steps][classes] "
                                    "numbers", d)
        return cls(
            label=label,
            probabilities={str(k): float(v) for k, v in probs.items()},
            num_samples=n,
            per_step=per_step,
            raw=d,
        )

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "label": self.label,
            "probabilities": self.probabilities,
            "num_samples": self.num_samples,
        }
        if self.per_step is not None:
            out["per_step"] = self.per_step.tolist()
        return out


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _error_from_response(resp: httpx.Response) -> S4DError:
    code, message = _parse_http_error(resp.content, resp.status_code)
    rid = resp.headers.get("x-request-id")
    if rid is not None and not (0 < len(rid) <= 128 and rid.isascii() and rid.isprintable()):
        rid = None  # not the server's token: never echo what could garble a log line
    return S4DError(code, message, resp.status_code, rid)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad_response(what: str, value: Any) -> S4DError:
    text = repr(value)
    return S4DError("bad_response", f"{what}: {text[:200]}{'...' if len(text) > 200 else ''}")


def _check_meta(meta: Any) -> dict:
    """A model's META, with the fields the client relies on checked."""
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise _bad_response("model metadata that is not an object with a name", meta)
    if not _is_int(meta.get("sample_rate")) or meta["sample_rate"] <= 0:
        raise _bad_response("model metadata whose sample_rate is not an integer > 0", meta)
    channels = meta.get("input_channels")
    if channels is not None and (not _is_int(channels) or channels <= 0):
        raise _bad_response("model metadata whose input_channels is not an integer > 0", meta)
    return meta


def _predictions(data: Any, n: int) -> list[Prediction]:
    """A predict response's predictions: one per input, in order."""
    preds = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(preds, list):
        raise _bad_response("a predict response without a predictions list", data)
    if len(preds) != n:
        raise S4DError("bad_response", f"{len(preds)} predictions for {n} inputs")
    return [Prediction.from_json(p) for p in preds]


def _seq_to_json(x: np.ndarray, what: str) -> list:
    a = cio.as_2d(x, what=what)
    if not np.isfinite(a).all():
        raise S4DError("non_finite", f"{what}: NaN or Inf in the input")
    return a[:, 0].tolist() if a.shape[1] == 1 else a.tolist()


def _arrays_to_batch(inputs: Any) -> list[np.ndarray]:
    """An array [L] or [L, C] is one sequence, [B, L, C] a batch; a list is a batch."""
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 3:
            return list(inputs)
        return [inputs]
    return [np.asarray(x) for x in inputs]


def tls_context(ca_file: PathLike | None) -> ssl.SSLContext | None:
    """A verifying TLS context that trusts only the CA certificate(s) in `ca_file` (PEM);
    None: the system's default trust store."""
    if ca_file is None:
        return None
    return ssl.create_default_context(cafile=os.fspath(ca_file))


class AsyncS4DClient:
    """Async client. ``await client.aclose()`` (or ``async with``) when done.

    ``timeout`` (seconds; None: none) bounds each REST call as a whole: connecting, sending
    the request and receiving the whole answer, however the server paces it (a server that
    trickles its body byte by byte is cut off too); past it, S4DError ``timeout``. A call
    that makes several requests (``predict`` of files that go up in separate requests) has
    one deadline for all of them.

    ``api_key`` (default: env ``S4D_API_KEY``) is sent as ``Authorization: Bearer KEY`` on REST
    and on the WebSocket handshake. ``ca_file``: a PEM CA bundle to verify an https/wss server
    (e.g. one with a self-signed certificate)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float | None = 60.0,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
        ca_file: PathLike | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        api_key = api_key if api_key is not None else os.environ.get("S4D_API_KEY") or None
        if api_key:
            headers = {**(headers or {}), "Authorization": f"Bearer {api_key}"}
        self.headers = headers
        self.ssl_context = tls_context(ca_file)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            headers=headers,
            transport=transport,
            trust_env=False,
            verify=self.ssl_context if self.ssl_context is not None else True,
        )
        self._meta: dict[str, dict] = {}

    async def __aenter__(self) -> AsyncS4DClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ REST
    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        """One request, answer read whole, bounded in all by ``timeout`` and by the deadline
        of the call it is part of. httpx's own timeouts (also ``timeout``) bound each
        connect / write / read only: a body trickling in one byte per read would never trip
        them (httpx has no total timeout), so the whole request runs under asyncio.wait_for."""
        deadline = _deadline_in(self.timeout)
        left = None if deadline is None else deadline - time.monotonic()
        try:
            if left is not None and left <= 0:
                raise asyncio.TimeoutError
            resp = await asyncio.wait_for(self._http.request(method, path, **kw), left)
        except asyncio.TimeoutError as exc:  # the total deadline
            raise S4DError("timeout", f"{method} {path}: no complete answer within the "
                           f"{self.timeout} s timeout") from exc
        except httpx.TimeoutException as exc:
            raise S4DError("timeout", f"{method} {path}: {exc}") from exc
        except httpx.TransportError as exc:
            raise S4DError("connection_error", f"{self.url}{path}: {exc}") from exc
        except httpx.RequestError as exc:  # e.g. a body its Content-Encoding cannot decode
            raise S4DError("bad_response", f"{method} {path}: {type(exc).__name__}: {exc}") \
                from exc
        if resp.status_code >= 400:
            raise _error_from_response(resp)
        if not 200 <= resp.status_code < 300:  # redirects are not followed
            where = resp.headers.get("location")
            raise S4DError(
                f"http_{resp.status_code}",
                f"{method} {path}: unexpected HTTP {resp.status_code}"
                + (f" (a redirect to {where}: use that URL)" if where else ""),
                resp.status_code,
            )
        try:
            return resp.json()
        except ValueError as exc:  # not JSON, or not UTF-8
            raise S4DError("bad_response", f"{path}: not JSON: {resp.text[:200]!r}") from exc

    async def health(self) -> dict:
        data = await self._request("GET", "/healthz")
        if not isinstance(data, dict):
            raise _bad_response("/healthz answered", data)
        return data

    async def ready(self) -> bool:
        try:
            await self._request("GET", "/readyz")
            return True
        except S4DError:
            return False

    async def wait_ready(self, timeout: float = 30.0, interval: float = 0.1) -> None:
        """Poll /readyz until the server is ready; S4DError('timeout') otherwise (each poll
        is bounded by the client's timeout and by what is left of ``timeout``)."""
        deadline = time.monotonic() + timeout
        with _deadline(timeout):
            while time.monotonic() < deadline:
                if await self.ready():
                    return
                await asyncio.sleep(max(0.0, min(interval, deadline - time.monotonic())))
        raise S4DError("timeout", f"{self.url} not ready within {timeout} s")

    async def models(self) -> list[dict]:
        """Metadata of every served model (see META in PROTOCOL.md)."""
        data = await self._request("GET", "/v1/models")
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise _bad_response("/v1/models answered", data)
        for m in models:
            _check_meta(m)
        for m in models:
            self._meta[m["name"]] = m
        return models

    async def model(self, name: str) -> dict:
        meta = _check_meta(await self._request("GET", f"/v1/models/{name}"))
        self._meta[name] = meta
        return meta

    async def _cached_model(self, name: str) -> dict:
        return self._meta.get(name) or await self.model(name)

    async def predict(
        self,
        model: str,
        inputs: Any,
        *,
        sample_rate: int | None = None,
        per_step: bool = False,
        scale: float | None = None,
    ) -> list[Prediction]:
        """Batch prediction (the server's FFT path); one Prediction per sequence, in order.

        inputs: a file path (WAV/CSV/NPY are uploaded as they are, so the server resamples
        WAV; a WFDB record is read here, resampled to the model's rate and sent as JSON), a
        list of paths, a numpy array ([L] or [L, C] = one sequence, [B, L, C] = a batch), or
        a list of arrays (sequences may differ in length). ``sample_rate`` tells the server
        the arrays' rate. ``scale`` multiplies every sample before sending, to bring a file
        into the model's input units (see its ``input_units``); files are then read here and
        sent as JSON, e.g. ``scale=0.001`` for an ECG stored as int16 microvolts.

        The client's ``timeout`` bounds the whole call, every request it makes together.
        """
        with _deadline(self.timeout):
            if _is_pathlike(inputs):
                return await self._predict_files(model, [inputs], per_step, scale)
            if isinstance(inputs, (list, tuple)) and inputs and \
                    all(_is_pathlike(x) for x in inputs):
                return await self._predict_files(model, list(inputs), per_step, scale)
            batch = _arrays_to_batch(inputs)
            if not batch:
                raise S4DError("bad_input", "no inputs")
            if scale is not None:
                batch = [np.asarray(x, dtype=np.float32) * np.float32(scale) for x in batch]
            return await self._predict_json(model, batch, sample_rate, per_step)

    async def _predict_json(
        self, model: str, batch: Sequence[np.ndarray], sample_rate: int | None, per_step: bool
    ) -> list[Prediction]:
        body: dict[str, Any] = {
            "inputs": [_seq_to_json(x, f"inputs[{i}]") for i, x in enumerate(batch)]
        }
        if sample_rate is not None:
            body["sample_rate"] = int(sample_rate)
        if per_step:
            body["per_step"] = True
        data = await self._request("POST", f"/v1/models/{model}/predict", json=body)
        return _predictions(data, len(batch))

    async def _predict_files(
        self, model: str, paths: list[PathLike], per_step: bool, scale: float | None = None
    ) -> list[Prediction]:
        # uploadable formats go in one multipart request; WFDB records (and every file when
        # a scale is given) are read here and sent as JSON
        fmts = [cio.detect_format(p) for p in paths]
        results: list[Prediction | None] = [None] * len(paths)
        uploadable = scale is None
        upload = [i for i, f in enumerate(fmts) if uploadable and f in cio.UPLOAD_CONTENT_TYPES]
        other = [i for i in range(len(paths)) if i not in upload]
        if upload:
            with contextlib.ExitStack() as stack:
                files = []
                for i in upload:
                    fh = stack.enter_context(open(paths[i], "rb"))  # noqa: SIM115
                    files.append(
                        ("file", (Path(paths[i]).name, fh, cio.UPLOAD_CONTENT_TYPES[fmts[i]]))
                    )
                data = {"per_step": "true"} if per_step else None
                out = await self._request(
                    "POST", f"/v1/models/{model}/predict", files=files, data=data
                )
            for i, p in zip(upload, _predictions(out, len(upload)), strict=True):
                results[i] = p
        if other:
            meta = await self._cached_model(model)
            batch = []
            for i in other:
                x, rate = cio.read_file(paths[i])
                if scale is not None:
                    x = x * np.float32(scale)
                batch.append(
                    cio.conform(x, rate, meta.get("sample_rate"), meta.get("input_channels"))
                )
            preds = await self._predict_json(model, batch, None, per_step)
            for i, p in zip(other, preds, strict=True):
                results[i] = p
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ streaming
    def stream(
        self,
        model: str,
        *,
        sample_rate: int,
        channels: int = 1,
        encoding: str = "pcm_s16le",
        emit_every: int | None = None,
        session_id: str | None = None,
        offset: int = 0,
        on_result: Callable[[dict], Any] | None = None,
        **kwargs: Any,
    ) -> AsyncStreamSession:
        """A streaming session (not yet connected): ``async with client.stream(...) as s``.

        ``emit_every`` in samples (None = the model's frame size, 0 = only the final).
        Pass ``session_id`` and ``offset`` to resume a session left by another connection.
        Other keywords: reconnect, max_reconnects, resume_buffer_seconds, open_timeout,
        end_timeout (seconds ``end()`` waits for the final; the stream helpers' too).
        """
        return AsyncStreamSession(
            ws_url_for(self.url, model),
            sample_rate=sample_rate,
            channels=channels,
            encoding=encoding,
            emit_every=emit_every,
            session_id=session_id,
            offset=offset,
            on_result=on_result,
            headers=self.headers,
            ssl_context=self.ssl_context,
            **kwargs,
        )

    async def prepare_stream_input(
        self, model: str, path: PathLike, scale: float | None = None
    ) -> tuple[np.ndarray, str]:
        """Read a file and make it fit the model's stream (resampled, mixed down, times
        ``scale`` when given); returns (samples [L, C], encoding): pcm_s16le when that is
        lossless (an unscaled 16-bit WAV at the model's rate), else f32le."""
        meta = await self._cached_model(model)
        x, rate = cio.read_file(path)
        if scale is not None:
            x = x * np.float32(scale)
        target = meta.get("sample_rate")
        y = cio.conform(x, rate, target, meta.get("input_channels"))
        lossless16 = (
            scale is None
            and cio.detect_format(path) == "wav"
            and cio.wav_is_pcm16(path)
            and (rate is None or target is None or rate == target)
        )
        return y, ("pcm_s16le" if lossless16 else "f32le")

    async def stream_file(
        self,
        model: str,
        path: PathLike,
        *,
        realtime: bool = False,
        chunk_ms: float = 20.0,
        emit_every: int | None = None,
        encoding: str | None = None,
        on_session: Callable[[AsyncStreamSession], Any] | None = None,
        scale: float | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[dict]:
        """Stream a file in chunks of ``chunk_ms`` (paced at real time with a monotonic clock
        when ``realtime``); yields every result and, last, the final one. ``scale``
        multiplies every sample first (see `predict`)."""
        x, enc = await self.prepare_stream_input(model, path, scale)
        meta = await self._cached_model(model)
        async for msg in self.stream_array(
            model,
            x,
            sample_rate=int(meta["sample_rate"]),
            realtime=realtime,
            chunk_ms=chunk_ms,
            emit_every=emit_every,
            encoding=encoding or enc,
            on_session=on_session,
            **kwargs,
        ):
            yield msg

    async def stream_array(
        self,
        model: str,
        x: np.ndarray,
        *,
        sample_rate: int,
        realtime: bool = False,
        chunk_ms: float = 20.0,
        emit_every: int | None = None,
        encoding: str = "f32le",
        on_session: Callable[[AsyncStreamSession], Any] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[dict]:
        """Like stream_file for samples already in memory ([L] or [L, C] at sample_rate)."""
        x = cio.as_2d(x)
        chunk = max(1, int(round(sample_rate * chunk_ms / 1000.0)))

        async def chunks() -> AsyncIterator[np.ndarray]:
            t0 = time.monotonic()
            for k, i in enumerate(range(0, len(x), chunk)):
                if realtime:
                    # chunk k is complete (as if recorded live) at t0 + (k+1) * chunk duration
                    delay = t0 + (k + 1) * chunk / sample_rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                yield x[i : i + chunk]

        async for msg in self.stream_chunks(
            model, chunks(), sample_rate=sample_rate, channels=x.shape[1], encoding=encoding,
            emit_every=emit_every, on_session=on_session, **kwargs,
        ):
            yield msg

    async def stream_live(
        self,
        model: str,
        reader: BinaryIO,
        *,
        rate: int | None = None,
        channels: int = 1,
        input_encoding: str = "s16le",
        chunk_ms: float = 20.0,
        scale: float | None = None,
        stop: asyncio.Event | None = None,
        on_trailing: Callable[[int], Any] | None = None,
        emit_every: int | None = None,
        on_session: Callable[[AsyncStreamSession], Any] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[dict]:
        """Stream raw interleaved PCM read live from ``reader`` (``sys.stdin.buffer.raw`` fed by
        ``arecord``, ``sox -d`` or ``ffmpeg``; any binary file object) until EOF or until
        ``stop`` is set; yields every result and, last, the final one. ``rate`` (default: the
        model's) and ``channels`` describe the input; it is mixed down and resampled to the
        model's as it arrives. ``input_encoding``: ``s16le`` or ``f32le`` (full scale).
        ``on_trailing(n)`` hears of n bytes at the end that were not a whole frame."""
        meta = await self._cached_model(model)
        target_rate, target_channels = int(meta["sample_rate"]), int(meta.get("input_channels") or 1)
        rate = int(rate or target_rate)
        # the model's rate and layout in 16 bits, unscaled: sent as they came (lossless)
        as_is = (input_encoding == "s16le" and rate == target_rate and channels == target_channels
                 and scale is None)
        chunks = read_live(reader, rate=rate, channels=channels, encoding=input_encoding,
                           target_rate=target_rate, target_channels=target_channels,
                           chunk_ms=chunk_ms, stop=stop, on_trailing=on_trailing)
        if scale is not None:
            chunks = _scaled(chunks, np.float32(scale))
        async for msg in self.stream_chunks(
            model, chunks, sample_rate=target_rate, channels=target_channels,
            encoding="pcm_s16le" if as_is else "f32le", emit_every=emit_every,
            on_session=on_session, **kwargs,
        ):
            yield msg

    async def stream_chunks(
        self,
        model: str,
        chunks: AsyncIterable[np.ndarray],
        *,
        sample_rate: int,
        channels: int = 1,
        encoding: str = "f32le",
        emit_every: int | None = None,
        on_session: Callable[[AsyncStreamSession], Any] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[dict]:
        """Stream chunks ([n] or [n, C] samples at the model's rate) as ``chunks`` yields
        them, then end; yields every result and, last, the final one. The source runs beside
        the results: a slow source never holds results back."""
        session = self.stream(
            model,
            sample_rate=sample_rate,
            channels=channels,
            encoding=encoding,
            emit_every=emit_every,
            **kwargs,
        )
        await session.open()
        if on_session is not None:
            on_session(session)

        async def feed() -> dict:
            async for c in chunks:
                await session.send(c)
            return await session.end()

        feeder = asyncio.get_running_loop().create_task(feed())

        def on_feeder_done(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:
                session._fail_results(t.exception())

        feeder.add_done_callback(on_feeder_done)
        try:
            async for msg in session.results():
                yield msg
            await feeder
        finally:
            try:
                if not feeder.done():
                    feeder.cancel()
                    # asyncio.wait, not `await feeder`: the feeder's own CancelledError (or
                    # failure, which its callback has seen) is not raised here, while a
                    # cancellation of this task still is, once the session is closed
                    await asyncio.wait({feeder})
            finally:
                await session.close()  # also when it failed: its receiver may still be closing


async def _scaled(chunks: AsyncIterable[np.ndarray], k: np.float32) -> AsyncIterator[np.ndarray]:
    async for c in chunks:
        yield c * k


class StreamSession:
    """Synchronous view of an AsyncStreamSession (runs on the client's loop thread).

    ``with client.stream(...) as s: s.send(x); final = s.end()``. ``on_result`` callbacks
    run on the loop thread.
    """

    def __init__(self, portal: Portal, inner: AsyncStreamSession) -> None:
        self._portal = portal
        self.inner = inner

    def __enter__(self) -> StreamSession:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._portal.call(self.inner.__aexit__(exc_type, exc, tb))

    def open(self) -> dict:
        return self._portal.call(self.inner.open())

    def send(self, samples: Any) -> None:
        self._portal.call(self.inner.send(samples))

    def reset(self, timeout: float | None = 30.0) -> int:
        return self._portal.call(self.inner.reset(timeout))

    def end(self, timeout: float | None | object = _DEFAULT) -> dict:
        """The final result (see AsyncStreamSession.end; default timeout: end_timeout)."""
        return self._portal.call(self.inner.end(timeout))

    def close(self) -> None:
        self._portal.call(self.inner.close())

    def results(self) -> Iterator[dict]:
        return self._portal.iterate(self.inner.results())

    def _abort_connection(self) -> None:
        self._portal.loop.call_soon_threadsafe(self.inner._abort_connection)

    def __getattr__(self, name: str) -> Any:  # session_id, offset, acked_offset, final, ...
        return getattr(self.inner, name)


class S4DClient:
    """Synchronous client: the AsyncS4DClient API, blocking. ``close()`` (or ``with``)."""

    def __init__(self, url: str = DEFAULT_URL, **kwargs: Any) -> None:
        self._portal = Portal()
        self._async = self._portal.call(_make_async(url, kwargs))
        self.url = self._async.url

    def __enter__(self) -> S4DClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):  # best effort; KeyboardInterrupt goes on
                self._portal.call(self._async.aclose(), timeout=10)
        finally:
            self._portal.close()

    def health(self) -> dict:
        return self._portal.call(self._async.health())

    def ready(self) -> bool:
        return self._portal.call(self._async.ready())

    def wait_ready(self, timeout: float = 30.0) -> None:
        self._portal.call(self._async.wait_ready(timeout))

    def models(self) -> list[dict]:
        return self._portal.call(self._async.models())

    def model(self, name: str) -> dict:
        return self._portal.call(self._async.model(name))

    def predict(self, model: str, inputs: Any, **kwargs: Any) -> list[Prediction]:
        return self._portal.call(self._async.predict(model, inputs, **kwargs))

    def stream(self, model: str, **kwargs: Any) -> StreamSession:
        return StreamSession(self._portal, self._async.stream(model, **kwargs))

    def stream_file(self, model: str, path: PathLike, **kwargs: Any) -> Iterator[dict]:
        return self._portal.iterate(self._async.stream_file(model, path, **kwargs))

    def stream_array(self, model: str, x: np.ndarray, **kwargs: Any) -> Iterator[dict]:
        return self._portal.iterate(self._async.stream_array(model, x, **kwargs))

    def stream_live(self, model: str, reader: BinaryIO, **kwargs: Any) -> Iterator[dict]:
        """Raw PCM from `reader` until EOF (see AsyncS4DClient.stream_live)."""
        return self._portal.iterate(self._async.stream_live(model, reader, **kwargs))


async def _make_async(url: str, kwargs: dict) -> AsyncS4DClient:
    # httpx.AsyncClient binds to the loop it is first used on: create it on the portal's
    return AsyncS4DClient(url, **kwargs)
