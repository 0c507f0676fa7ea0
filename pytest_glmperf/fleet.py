"""A fleet as one target: SGLang workers behind SGLang's own router (``sglang-router``).

The router is the real one (the SGLang Model Gateway, PyPI ``sglang-router``, installed by the
optional extra ``pytest-glmperf[router]``): a Rust binary this module starts with the profile's
``router_args``, on 127.0.0.1 and free ports, in front of the profile's ``workers`` (simulated
profiles, each a local simulator process, or URLs of workers someone else runs). The client
talks to the router only; the fleet is ready when the router's ``GET /workers`` lists every
worker as healthy (docs/scale.md). ``stop()`` stops the router, then the workers it started,
also from the SIGTERM/atexit teardown, so nothing is left listening after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from .errors import ConfigError, GlmperfError, ServerNotReady, ServerStartError
from .profiles import ServerProfile
from .provenance import fetch_server_info, redact, redact_url
from .scrape import ROUTER_SOURCE
from .server import LOG_TAIL_LINES, ExternalServer, ServerHandle, SimulatedServer, terminate_group
from .teardown import _register, _unregister

ROUTER_EXTRA = "pip install 'pytest-glmperf[router]' (PyPI sglang-router)"
WORKERS_POLL_S = 0.5


def router_executable() -> str:
    """The ``sglang-router`` command, or a usage error naming the extra that installs it."""
    found = shutil.which("sglang-router")
    if not found:
        raise ConfigError(f"a router profile needs SGLang's router, which is not installed: {ROUTER_EXTRA}")
    return found


def router_version() -> str | None:
    with contextlib.suppress(ImportError, AttributeError):
        from sglang_router import version

        return str(version.__version__)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RouterFleet:
    """``sglang-router launch`` in front of N workers, with the ``ServerHandle`` surface.

    ``info_url`` is the first worker's: the router answers ``/get_server_info`` about itself,
    while the time scale and the model's flags are the workers'.
    """

    def __init__(self, profile: ServerProfile, workers: list[ServerHandle], *, log_dir: Path,
                 startup_timeout_s: float = 120.0) -> None:
        self.profile, self.workers, self.log_dir = profile, workers, log_dir
        self.startup_timeout_s = startup_timeout_s
        self.base_url = self.metrics_url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._command: list[str] = []  # empty for a router someone else runs

    @property
    def info_url(self) -> str:
        return self.workers[0].base_url

    @property
    def metrics_sources(self) -> dict[str, str]:
        """Where the fleet's metrics are: each worker's /metrics (named 1, 2, …) and the router's."""
        sources = {str(n + 1): f"{w.base_url}/metrics" for n, w in enumerate(self.workers)}
        return {**sources, **({ROUTER_SOURCE: self.metrics_url} if self.metrics_url else {})}

    def attach(self, router_url: str, metrics_url: str | None) -> RouterFleet:
        """A router someone else runs: its workers are the ones its /workers lists; nothing is
        started here, and ``stop()`` stops nothing."""
        self.base_url, self.metrics_url = router_url, metrics_url or ""
        try:
            with httpx.Client(timeout=10.0) as http:
                listed = http.get(f"{router_url}/workers").json().get("workers") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise ServerStartError(f"router {redact_url(router_url)} (router_url of {self.profile.name!r}) "
                                   f"does not list its workers at /workers: {type(exc).__name__}") from None
        self.workers = [ExternalServer(str(w["url"])) for w in listed if w.get("url")]
        if not self.workers:
            raise ServerStartError(f"router {redact_url(router_url)} lists no workers")
        self.wait_for_workers()
        return self

    @property
    def log_path(self) -> Path:
        return self.log_dir / "router.log"

    def command(self, port: int, prometheus_port: int) -> list[str]:
        """The profile's router flags, then the workers and where to listen (always loopback).

        Workers in prefill/decode mode make it a disaggregated router: ``--pd-disaggregation
        --prefill URL BOOTSTRAP_PORT ... --decode URL ...``, as sglang-router takes them."""
        return [router_executable(), "launch", *self.profile.router_args, *self.worker_args(),
                "--host", "127.0.0.1", "--port", str(port),
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prometheus_port)]

    def env(self) -> dict[str, str]:
        """The router's environment: it looks for the model's tokenizer on the Hugging Face hub
        when it has none; offline, and with every worker on this host its traffic stays on
        loopback (a proxy on the discard port refuses anything else)."""
        loopback = "127.0.0.1,localhost"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": loopback, "no_proxy": loopback}
        if all(w.base_url.startswith("http://127.0.0.1:") for w in self.workers):
            env.update({name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                                                 "http_proxy", "https_proxy", "all_proxy")})
        return env

    def worker_args(self) -> list[str]:
        roles = [worker_role(w) for w in self.workers]
        if set(roles) == {"null"}:
            return ["--worker-urls", *(w.base_url for w in self.workers)]
        if "null" in roles or not {"prefill", "decode"} <= set(roles):
            raise ConfigError(f"profile {self.profile.name!r}: a disaggregated fleet needs prefill and decode "
                              "workers only (--disaggregation-mode prefill|decode on each worker profile)")
        args = [] if "--pd-disaggregation" in self.profile.router_args else ["--pd-disaggregation"]
        for worker, role in zip(self.workers, roles, strict=True):
            port = getattr(worker, "bootstrap_port", None)
            args += ["--prefill", worker.base_url, *([str(port)] if port else [])] if role == "prefill" \
                else ["--decode", worker.base_url]
        return args

    def start(self) -> RouterFleet:
        port, prometheus = free_port(), free_port()
        self._command = self.command(port, prometheus)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(self._command, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True, env=self.env())
        _register(self)
        self.base_url = f"http://127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{prometheus}/metrics"
        try:
            self.wait_for_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_workers(self) -> float:
        """Until the router lists every worker as healthy; seconds waited."""
        began = time.monotonic()
        wanted = {w.base_url for w in self.workers}
        last = "no answer yet"
        with httpx.Client(timeout=5.0) as http:
            while time.monotonic() - began < self.startup_timeout_s:
                if self._command and (self._process is None or self._process.poll() is not None):
                    raise ServerStartError("sglang-router exited during start-up; last log lines:\n"
                                           + self.log_tail(30))
                try:
                    listed = http.get(f"{self.base_url}/workers").json().get("workers") or []
                    healthy = {w.get("url") for w in listed if w.get("is_healthy")}
                    if wanted <= healthy:
                        return time.monotonic() - began
                    last = f"{len(healthy & wanted)} of {len(wanted)} workers healthy"
                except (httpx.HTTPError, ValueError, AttributeError):
                    last = "/workers not answering"
                time.sleep(WORKERS_POLL_S)
        raise ServerNotReady(f"router of profile {self.profile.name!r} not ready after "
                             f"{self.startup_timeout_s:g} s: {last}; last log lines:\n{self.log_tail(30)}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""

    def provenance(self) -> dict[str, Any]:
        """The router's version and flags, and each worker's own /server_info (secrets redacted)."""
        workers = []
        for worker in self.workers:
            _, info = fetch_server_info(worker.base_url)
            workers.append({**worker.provenance(), "base_url": redact_url(worker.base_url),
                            "version": (info or {}).get("version"),
                            "server_args": redact({k: v for k, v in (info or {}).items() if k != "internal_states"})})
        router = {"version": router_version(), "command": self._command[1:], "args": list(self.profile.router_args)} \
            if self._command else {"url": redact_url(self.base_url), "started": False}
        return {"kind": "router", "router": router, "workers": workers}

    def alive(self) -> bool:
        """The router and every worker this fleet started still run."""
        router = not self._command or (self._process is not None and self._process.poll() is None)
        return router and all(getattr(w, "alive", lambda: True)() for w in self.workers)

    def exit_reason(self, lines: int = 40) -> str | None:
        """None while the router and every worker run; else which one is gone (a worker by its
        number and URL, as the report's worker table names it)."""
        if self._command and (self._process is None or self._process.poll() is not None):
            return f"sglang-router exited; last log lines:\n{self.log_tail(lines)}"
        for n, worker in enumerate(self.workers):
            reason = getattr(worker, "exit_reason", lambda _lines: None)(lines)
            if reason:
                return f"worker {n + 1} ({worker.base_url}) is gone: {reason}"
        return None

    def stop(self) -> None:
        """The router first (SIGTERM, SIGKILL after 10 s), then the workers this fleet started."""
        _unregister(self)
        process, self._process = self._process, None
        if process is not None:
            terminate_group(process)
        for worker in self.workers:
            worker.stop()


def disaggregation_mode(args: tuple[str, ...] | list[str]) -> str:
    """``--disaggregation-mode`` as SGLang reads it (the last one given; ``null`` by default)."""
    mode = "null"
    for i, arg in enumerate(args):
        if arg == "--disaggregation-mode" and i + 1 < len(args):
            mode = args[i + 1]
        elif arg.startswith("--disaggregation-mode="):
            mode = arg.split("=", 1)[1]
    return mode


def worker_role(worker: ServerHandle) -> str:
    """prefill, decode or null (a regular worker); a URL someone else runs is a regular worker."""
    profile = getattr(worker, "profile", None)
    return disaggregation_mode(profile.server_args) if isinstance(profile, ServerProfile) else "null"


def start_fleet(profile: ServerProfile, resolve: Callable[[str], ServerProfile], *, time_scale: float,
                log_dir: Path, startup_timeout_s: float = 1800.0,
                progress: Callable[[str], None] = lambda _: None) -> RouterFleet:
    """Start the profile's workers (simulated profiles; URLs are attached to), then the router.

    A worker that does not become healthy within ``startup_timeout_s`` fails the start naming
    it; whatever started is stopped again when a later part fails to start."""
    if profile.router_url:  # someone else's router: attach, start nothing
        return RouterFleet(profile, [], log_dir=log_dir,
                           startup_timeout_s=startup_timeout_s).attach(profile.router_url, profile.router_metrics_url)
    router_executable()  # say what to install before any worker starts
    workers: list[ServerHandle] = []
    try:
        for n, name in enumerate(profile.workers):
            if name.startswith(("http://", "https://")):
                external = ExternalServer(name)
                external.check_reachable()
                workers.append(external)
                continue
            progress(f"starting worker {n + 1} of {len(profile.workers)} ({name}, time scale {time_scale:g})")
            spec = resolve(name)
            if disaggregation_mode(spec.server_args) == "prefill":  # its KV bootstrap on a free port too
                spec = replace(spec, server_args=(*spec.server_args, "--disaggregation-bootstrap-port", "0"))
            worker = SimulatedServer(spec, time_scale=time_scale, log_path=log_dir / f"worker-{n + 1}.log",
                                     startup_timeout_s=startup_timeout_s)
            workers.append(worker)
            try:
                worker.start()
            except GlmperfError as exc:
                raise type(exc)(f"worker {n + 1} of {profile.name!r} ({name}) did not become healthy: {exc}") from exc
            progress(f"worker {n + 1} ({name}) healthy after {worker.startup_s:.1f} s")
        progress(f"starting sglang-router {' '.join(profile.router_args)} in front of {len(workers)} workers")
        return RouterFleet(profile, workers, log_dir=log_dir, startup_timeout_s=startup_timeout_s).start()
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
