"""`s4d serve --workers W`: W front-end processes on one port, one engine process per device
(or `engines_per_device` of them).

The supervisor binds the listening socket once and hands it to every front-end (they accept
from the same queue), starts one engine per device on an ipc:// endpoint, restarts any child
that dies (an engine comes back with a new epoch: its sessions are gone and their clients get
`internal` / 1011; a front-end takes only its own sockets with it), and on SIGTERM lets the
front-ends drain (`final` + 1001 to every stream) before stopping the engines.
Prometheus runs in multiprocess mode: every child writes its series to one directory and any
front-end's `/metrics` shows the sum.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import LOAD_ERROR_EXIT
from server.settings import Settings

log = logging.getLogger("s4d.supervisor")


def engine_devices(settings: Settings) -> list[str]:
    """The device of each engine: every visible GPU, or the CPU, engines_per_device times
    each (engine i serves devices[i]; its session ids start with e<i>-)."""
    device = settings.resolve_device()
    devices = [device]
    if device == "cuda":
        import torch

        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    return [d for d in devices for _ in range(settings.engines_per_device)]


def listen_socket(host: str, port: int, *, reuse_port: bool, listen: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    return sock


def frontend_main(settings_json: str, index: int, endpoints: list[str],
                  sock: socket.socket | None) -> None:
    """Entry point of a front-end process: uvicorn on its port, no model state. With
    `reuse_port` it opens its own SO_REUSEPORT socket (the kernel spreads connections evenly
    over the front-ends); otherwise it accepts from the supervisor's shared socket."""
    from server.engine.process import set_process_name
    from server.frontend.client import frontend_identity
    from server.logs import configure_logging
    from server.runner import build_server

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level, settings.log_format)
    set_process_name(f"s4d-frontend-{index}")
    if sock is None:
        sock = listen_socket(settings.host, settings.port, reuse_port=True)
    server = build_server(settings, engine_endpoints=endpoints,
                          identity=frontend_identity(index))
    server.run(sockets=[sock])


@dataclass
class Child:
    kind: str  # "engine" | "frontend"
    index: int
    proc: mp.process.BaseProcess
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.ctx = mp.get_context("spawn")  # no CUDA / thread state inherited across fork
        self.run_dir = Path(tempfile.mkdtemp(prefix="s4d-"))
        self.metrics_dir = self.run_dir / "metrics"
        self.metrics_dir.mkdir()
        self.devices = engine_devices(settings)
        self.endpoints = [f"ipc://{self.run_dir}/engine-{i}.sock" for i in range(len(self.devices))]
        self.children: dict[tuple[str, int], Child] = {}
        self.stopping = False
        self.exit_code = 0  # LOAD_ERROR_EXIT when an engine could not load its models
        self.sock: socket.socket | None = None

    def bind(self) -> socket.socket:
        """The port, held by the supervisor. With `reuse_port` this socket only reserves it
        (bound, not listening: it never receives a connection) and each front-end listens on
        its own; otherwise every front-end accepts from this one."""
        s = self.settings
        reuse = s.reuse_port and hasattr(socket, "SO_REUSEPORT")
        self.sock = listen_socket(s.host, s.port, reuse_port=reuse, listen=not reuse)
        # front-ends bind the port this one got (port 0 -> a free one)
        self.settings = s.model_copy(update={"port": self.sock.getsockname()[1],
                                             "reuse_port": reuse})
        return self.sock

    def _spawn(self, kind: str, index: int) -> None:
        from server.engine.process import engine_main

        js = self.settings.model_dump_json()
        if kind == "engine":
            proc = self.ctx.Process(target=engine_main, name=f"s4d-engine-{index}",
                                    args=(js, self.endpoints[index], self.devices[index], index))
        else:
            shared = None if self.settings.reuse_port else self.sock
            proc = self.ctx.Process(target=frontend_main, name=f"s4d-frontend-{index}",
                                    args=(js, index, self.endpoints, shared))
        proc.start()
        self.children[(kind, index)] = Child(kind, index, proc)
        log.info("started %s %d (pid %d)", kind, index, proc.pid)

    def run(self) -> int:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)  # inherited by children
        self.bind()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        host, port = self.sock.getsockname()[:2]
        log.info("serving on http://%s:%d with %d front-end(s) and %d engine(s) on %s",
                 host, port, self.settings.workers, len(self.devices), ",".join(self.devices))
        try:
            for i in range(len(self.devices)):
                self._spawn("engine", i)
            for i in range(self.settings.workers):
                self._spawn("frontend", i)
            while not self.stopping:
                self._reap()
                time.sleep(0.2)
            self._shutdown()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.exit_code

    def _on_signal(self, signum, _frame) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        self.stopping = True

    def _reap(self) -> None:
        from prometheus_client import multiprocess

        for child in list(self.children.values()):
            if child.proc.is_alive():
                continue
            code = child.proc.exitcode
            multiprocess.mark_process_dead(child.proc.pid, str(self.metrics_dir))
            if child.kind == "engine":  # a killed engine cannot unlink its sample rings
                from server.engine.shm import remove_engine_segments

                remove_engine_segments(child.proc.pid)
            if self.stopping:
                continue
            if child.kind == "engine" and code == LOAD_ERROR_EXIT:  # exit_on_load_error
                log.error("engine %d could not load its models (its error above): stopping "
                          "(--no-exit-on-load-error keeps the server up)", child.index)
                self.exit_code = LOAD_ERROR_EXIT
                self.stopping = True
                continue
            log.error("%s %d (pid %d) exited with %s: restarting", child.kind, child.index,
                      child.proc.pid, code)
            if time.monotonic() - child.started < 2:
                time.sleep(1.0)  # a child that dies at once must not spin the supervisor
            self._spawn(child.kind, child.index)

    def _shutdown(self) -> None:
        grace = self.settings.graceful_timeout_s + 5
        fronts = [c for c in self.children.values() if c.kind == "frontend"]
        engines = [c for c in self.children.values() if c.kind == "engine"]
        for group in (fronts, engines):  # front-ends drain first: they still need the engines
            for c in group:
                if c.proc.is_alive():
                    os.kill(c.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for c in group:
                c.proc.join(max(0.1, deadline - time.monotonic()))
                if c.proc.is_alive():
                    log.warning("%s %d did not stop in %.0fs: killing", c.kind, c.index, grace)
                    c.proc.kill()
                    c.proc.join(5)
        from server.engine.shm import remove_engine_segments

        for c in engines:  # an engine killed above left its rings behind
            remove_engine_segments(c.proc.pid)
        log.info("stopped")


def supervise(settings: Settings) -> int:
    return Supervisor(settings).run()
