"""Servers under test: the built-in simulator as a subprocess, or a server already running.

Both expose the same small surface (``ServerHandle``): base URL, log tail, provenance, stop.
Compose profiles live in ``compose.py``. A server is ready when ``GET /health_generate``
answers 200 (SGLang answers 503 until its warm-up generation has run).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx

from .errors import ConfigError, ServerNotReady, ServerStartError
from .profiles import ServerProfile
from .provenance import redact_url
from .teardown import _register, _unregister

LOG_TAIL_LINES = 200


class ServerHandle(Protocol):
    """What the run needs from any server, whatever brought it up."""

    profile: ServerProfile
    base_url: str

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str: ...

    def provenance(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


def wait_until_ready(base_url: str, timeout_s: float, *, check_alive: Callable[[], None] = lambda: None,
                     not_ready: Callable[[str], str] | None = None,
                     progress: Callable[[float, str], None] | None = None,
                     poll_s: float = 0.2, note_every_s: float = 10.0) -> float:
    """Poll GET /health_generate until 200; return seconds waited.

    ``check_alive()`` runs before every poll and raises the caller's own error when the server
    process or container has exited, so start-up fails fast. On timeout ServerNotReady carries
    ``not_ready(last answer)``. ``progress(elapsed, last answer)`` is called every ``note_every_s``.
    """
    start = time.monotonic()
    last, next_note = "no answer yet", start + note_every_s
    with httpx.Client(timeout=5.0) as http:
        while True:
            check_alive()
            try:
                response = http.get(f"{base_url}/health_generate")
                if response.status_code == 200:
                    return time.monotonic() - start
                last = f"/health_generate answered {response.status_code}"
            except httpx.HTTPError as exc:
                last = f"/health_generate: {type(exc).__name__}"
            now = time.monotonic()
            if now - start >= timeout_s:
                raise ServerNotReady(not_ready(last) if not_ready else
                                     f"{base_url} not ready after {timeout_s:g} s: {last}")
            if progress and now >= next_note:
                progress(now - start, last)
                next_note = now + note_every_s
            time.sleep(min(poll_s, max(0.05, start + timeout_s - now)))


class SimulatedServer:
    """The built-in simulator in a child process on 127.0.0.1, on a free port.

    The child runs in its own session, so a SIGTERM to pytest's group does not cut it off
    before teardown; its stdin is a pipe this process holds open, and with
    ``--sim-exit-with-parent`` it shuts down at EOF, so even a SIGKILLed pytest leaves no
    simulator listening (docs/simulator.md, "HTTP layer").
    """

    def __init__(self, profile: ServerProfile, *, time_scale: float, log_path: Path,
                 startup_timeout_s: float = 60.0) -> None:
        self.profile = profile
        self.time_scale = time_scale
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.base_url = ""
        self.bootstrap_port: int | None = None
        self.startup_s: float | None = None
        self._process: subprocess.Popen[str] | None = None
        self._tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._pump: threading.Thread | None = None

    def command(self) -> list[str]:
        """The profile's SGLang flags, then where to listen: 127.0.0.1 and a free port, whatever
        the profile's own --host/--port say (a twin carries its compose file's 0.0.0.0:8000)."""
        return [sys.executable, "-m", "pytest_glmperf.simulator", *self.profile.server_args,
                "--time-scale", str(self.time_scale), "--sim-exit-with-parent", "--host", "127.0.0.1", "--port", "0"]

    def start(self) -> SimulatedServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.profile.env, "PYTHONUNBUFFERED": "1"}
        began = time.monotonic()
        # stdin: the lifeline; its write end stays open here until stop() or this process dies.
        self._process = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        _register(self)  # its own session: a SIGTERM to pytest would not reach it
        port = self._read_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self._pump = threading.Thread(target=self._pump_log, daemon=True, name="glmperf-sim-log")
        self._pump.start()
        wait_until_ready(self.base_url, self.startup_timeout_s, check_alive=self._check_alive,
                         not_ready=lambda last: f"{self.base_url} not ready after {self.startup_timeout_s:g} s: "
                                                f"{last}.{self._death_note()}")
        self.startup_s = time.monotonic() - began
        return self

    def _read_port(self) -> int:
        """The simulator's first stdout line says where it listens."""
        assert self._process and self._process.stdout
        deadline = time.monotonic() + self.startup_timeout_s
        with self.log_path.open("w", encoding="utf-8") as log:
            for line in self._process.stdout:
                log.write(line)
                self._tail.append(line.rstrip("\n"))
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    event = None
                if isinstance(event, dict) and event.get("event") == "listening":
                    # a prefill worker (--disaggregation-mode prefill) also serves its KV bootstrap
                    self.bootstrap_port = event.get("bootstrap_port")
                    return int(event["port"])
                if time.monotonic() > deadline:
                    break
        with contextlib.suppress(subprocess.TimeoutExpired):  # its output ended: let it say how it exited
            self._process.wait(timeout=5)
        raise ServerStartError(f"simulator for profile {self.profile.name!r} did not start.{self._death_note()}")

    def _pump_log(self) -> None:
        assert self._process and self._process.stdout
        with self.log_path.open("a", encoding="utf-8") as log:
            for line in self._process.stdout:
                log.write(line)
                log.flush()
                self._tail.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _check_alive(self) -> None:
        if not self.alive():
            raise ServerStartError(f"simulator for profile {self.profile.name!r} exited during start-up."
                                   f"{self._death_note()}")

    def exit_reason(self, lines: int = 40) -> str | None:
        """None while the simulator runs; else its exit status and last log lines."""
        return None if self.alive() else f"the simulator process exited;{self._death_note()}"

    def _death_note(self) -> str:
        code = self._process.poll() if self._process else None
        if code is not None and self._pump is not None:
            self._pump.join(timeout=2.0)  # the process is gone: its last lines are on their way to the tail
        status = "" if code is None else f" exit code {code};"
        return f"{status} last log lines:\n{self.log_tail(40)}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def provenance(self) -> dict[str, Any]:
        return {"kind": "simulated", "command": self.command(), "startup_s": self.startup_s,
                "time_scale": self.time_scale}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s, then close the stdin pipe; idempotent."""
        _unregister(self)
        process, self._process = self._process, None
        if process is None:
            return
        try:
            terminate_group(process)
        finally:
            if process.stdin is not None:
                process.stdin.close()  # nothing is ever written: closing cannot fail on a dead reader


def terminate_group(process: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM to the process's own session (started with ``start_new_session``), SIGKILL after
    ``grace_s``; a process already gone is left alone."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class ExternalServer:
    """A server someone else runs (``--base-url``): checked for readiness, never started or stopped."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url must start with http:// or https://, got {redact_url(base_url)!r}")
        self.base_url = base_url.rstrip("/")
        self.headers = headers

    def check_reachable(self, timeout_s: float = 10.0) -> None:
        """Say so before any test runs when nothing answers at the URL."""
        try:
            with httpx.Client(timeout=timeout_s, headers=self.headers) as http:
                http.get(f"{self.base_url}/health_generate")
        except httpx.HTTPError as exc:
            raise ServerStartError(f"--base-url {redact_url(self.base_url)} is unreachable: "
                                   f"{type(exc).__name__}: {redact_url(str(exc))}") from None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return ""

    def provenance(self) -> dict[str, Any]:
        return {"kind": "external", "base_url": redact_url(self.base_url)}

    def stop(self) -> None:
        """Not ours to stop."""
