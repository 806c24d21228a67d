"""Transports between a front-end's `EngineClient` and an engine: same messages, two carriers.

`InprocLink`: the engine lives in this process and event loop (`--workers 0`); messages are
handed over as (header, arrays) without encoding. `ZmqLink`: a pyzmq DEALER socket to the
engine process's ROUTER; headers are msgpack, arrays travel as raw frames (no pickle, no copy
on receive).
"""

from __future__ import annotations

import asyncio
import logging

from server.engine.wire import decode, encode

log = logging.getLogger("s4d.frontend")


class InprocLink:
    remote = False

    def __init__(self, engine, identity: bytes = b"inproc"):
        self.engine, self.identity = engine, identity

    def start(self, on_message) -> None:
        self.engine.attach_transport(lambda _identity, header, arrays: on_message(header, arrays))

    def send(self, header: dict, arrays: list) -> None:
        self.engine.on_message(self.identity, header, arrays)

    def attach_ring(self, model: int, info: dict):
        return self.engine.models[model].buffers.data

    def close(self) -> None:
        pass


class ZmqLink:
    remote = True

    def __init__(self, endpoint: str, identity: bytes):
        import zmq
        import zmq.asyncio

        self.endpoint, self.identity = endpoint, identity
        self.sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(endpoint)
        self._reader: asyncio.Task | None = None
        self._shm: list = []

    def start(self, on_message) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read(on_message),
                                                              name="zmq-reader")

    async def _read(self, on_message) -> None:
        import zmq

        drain = zmq.Socket.shadow(self.sock.underlying)  # sync view for what is queued
        while True:
            batch = [await self.sock.recv_multipart(copy=False)]
            while True:
                try:
                    batch.append(drain.recv_multipart(zmq.NOBLOCK, copy=False))
                except zmq.Again:
                    break
            for frames in batch:
                try:
                    header, arrays = decode(frames)
                    on_message(header, arrays)
                except Exception:  # a bad message must not stop the reader
                    log.exception("front-end: bad message from the engine")

    def send(self, header: dict, arrays: list) -> None:
        self.sock.send_multipart(encode(header, arrays), copy=False)

    def attach_ring(self, model: int, info: dict):
        """This front-end's staging ring of a model, mapped from the engine's shared memory."""
        from server.engine import shm

        seg, data = shm.attach(info["shm"], tuple(info["shape"]))  # the engine unlinks it
        self._shm.append(seg)
        return data

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.sock.close(linger=0)
