"""``python -m pytest_glmperf.simulator``: serve the simulator with uvicorn.

Binds first (``--port 0`` picks a free port), then prints exactly one JSON line to stdout,
``{"event": "listening", "host": ..., "port": N, "pid": ...}`` (a PD prefill worker adds
``"bootstrap_port"``), once uvicorn accepts connections; the plugin reads that line to learn
the port. Logs go to stderr. SIGTERM or SIGINT stops it cleanly (exit status 0); a bad flag
exits with status 2. With ``--sim-exit-with-parent``, EOF on stdin stops it the same way:
the plugin holds the pipe's write end, which the kernel closes when the plugin dies, even by
SIGKILL, so no orphan is left listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import replace
from types import FrameType
from typing import ClassVar

import uvicorn

from .app import SimulatorApp, create_app

GRACEFUL_SHUTDOWN_S = 2
log = logging.getLogger("glmperf.sim")


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the bound address once it is up (and from then on, with
    ``--sim-exit-with-parent``, watching stdin)."""

    announce: ClassVar[dict[str, object]] = {}

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(json.dumps(self.announce), flush=True)
            if self.exit_with_parent:
                watch_stdin(asyncio.get_running_loop(), self)

    app: SimulatorApp | None = None
    exit_with_parent: bool = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """End open streams at once, stop, and exit with status 0 (uvicorn would re-raise
        the signal). Streams cut this way end without [DONE], as on a real server going down."""
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
        if self.app is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to stop
                asyncio.get_running_loop().call_soon_threadsafe(self.app.stop_streams)


def watch_stdin(loop: asyncio.AbstractEventLoop, server: uvicorn.Server) -> threading.Thread:
    """Stop *server* as on SIGTERM once stdin reaches EOF (its writer is gone); data is ignored.

    A daemon thread blocks on fd 0 and hands the exit to the event loop, where handle_exit
    can end the open streams. An unreadable stdin counts as EOF.
    """
    def wait() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 65536):
                pass
        log.info("stdin closed (--sim-exit-with-parent): the parent is gone; shutting down")
        with contextlib.suppress(RuntimeError):  # the loop has closed: already stopping
            loop.call_soon_threadsafe(server.handle_exit, signal.SIGTERM, None)

    thread = threading.Thread(target=wait, daemon=True, name="glmperf-sim-stdin")
    thread.start()
    return thread


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: the kernel picks a free one).

    proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so, and
    without it Nagle's algorithm holds a small SSE write until the client's delayed ACK,
    adding 40 ms to chunks that follow another write closely.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bind_sockets(app: SimulatorApp) -> list[socket.socket]:
    """The listening sockets: the API's, and a PD prefill worker's bootstrap server's
    (``--disaggregation-bootstrap-port``, 0 picks a free one). Both serve the same app, which
    routes by the local port. ValueError naming the flag when a port cannot be bound."""
    opts = app.options
    sock = bind(opts.host, opts.port)
    app.config = replace(app.config, port=sock.getsockname()[1])
    sockets = [sock]
    if app.config.disaggregation_mode == "prefill":
        wanted = app.config.disaggregation_bootstrap_port
        try:
            boot = bind(opts.host, wanted)
        except OSError as exc:
            sock.close()
            raise ValueError(f"--disaggregation-bootstrap-port {wanted}: cannot bind the bootstrap "
                             f"server on {opts.host}: {exc.strerror or exc}") from None
        app.config = replace(app.config, disaggregation_bootstrap_port=boot.getsockname()[1])
        sockets.append(boot)
    return sockets


def serve(app: SimulatorApp, sockets: list[socket.socket] | None = None) -> None:
    """Serve *app* on its configured host and port until told to stop."""
    opts = app.options
    if sockets is None:
        sockets = bind_sockets(app)
    config = uvicorn.Config(app, loop="asyncio", http="h11", lifespan="on", log_level="warning",
                            access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = _Server(config)
    server.app = app
    server.exit_with_parent = opts.exit_with_parent
    server.announce = {"event": "listening", "host": opts.host, "port": app.config.port,
                       "pid": os.getpid()}
    if app.config.disaggregation_mode == "prefill":
        server.announce["bootstrap_port"] = app.config.disaggregation_bootstrap_port
    server.run(sockets=sockets)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(sys.argv[1:] if argv is None else argv)
        sockets = bind_sockets(app)
    except ValueError as exc:
        print(f"glmperf-sim: error: {exc}", file=sys.stderr)
        return 2
    serve(app, sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
