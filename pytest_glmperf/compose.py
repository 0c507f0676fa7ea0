"""Compose profiles: bring an SGLang server up through Docker Compose, wait until it really
serves, stream its log, and take it down again, leaving nothing behind.

    with ComposeServer(profile, report_dir=Path("perf-report")) as server:
        ...  # server.base_url == "http://127.0.0.1:30001"

Lifecycle of ``start()``:

1. find Compose v2 (``docker compose``, else ``docker-compose``) and a Docker engine;
2. validate the compose file (YAML, then ``compose config``); errors name the file;
3. look at the host port: a container this plugin started for *this* profile (its project
   ``glmperf-<profile>-…``) is reused when ``reuse_running`` and healthy, else taken down (a
   restart). Anything else is never stopped: a server of the same compose file that someone
   started by hand is reused with ``reuse_running`` (and left up), else refused with its name,
   as is whatever else holds the port;
4. make sure the image is local, pulling it if the file allows (a failed pull fails at once);
5. ``up -d`` under a unique project name ``glmperf-<profile>-<8 hex>``;
6. poll ``GET /health_generate`` until 200 (SGLang answers 503 until its warm-up generation
   ran), failing fast with the last 200 log lines when the container exits.

``stop()`` runs ``down --volumes --remove-orphans`` without ``-t``, so the file's
``stop_grace_period`` applies. Every started server is in a module registry torn down at
interpreter exit; SIGTERM is turned into ``KeyboardInterrupt`` (what Ctrl-C raises) so that
context managers and pytest's finalizers run, then the registry catches what is left.

Finding Compose and the engine lives in :mod:`.compose_cli`, the registry in :mod:`.teardown`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from .compose_cli import _docker_client, find_compose
from .errors import ConfigError, ServerStartError
from .profiles import ServerProfile
from .provenance import collect_compose_provenance, fetch_server_info, redact
from .server import wait_until_ready
from .teardown import _register, _unregister, teardown_all

__all__ = ["ComposeServer", "find_compose", "teardown_all"]

LOG_TAIL_LINES = 200
CONTAINER_PORT = 8000
PROJECT_LABEL = "com.docker.compose.project"
CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"
_IMAGE_VARIABLE = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}$|^\$(?P<bare>[A-Za-z_]\w*)$")

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- the server


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    return slug or "profile"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class ComposeServer:
    """One compose profile, brought up on this host's Docker engine and reached on 127.0.0.1."""

    def __init__(
        self,
        profile: ServerProfile,
        *,
        report_dir: Path,
        image: str | None = None,
        startup_timeout_s: float = 1800,
        keep_running: bool = False,
        reuse_running: bool = False,
        env: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        if profile.kind != "compose" or profile.compose_file is None:
            raise ConfigError(
                f"profile {profile.name!r} is of kind {profile.kind!r}; only kind 'compose' profiles "
                "(with a compose_file) can be run through Docker Compose"
            )
        if startup_timeout_s <= 0:
            raise ConfigError(f"--startup-timeout must be > 0 seconds, got {startup_timeout_s!r}")
        self.profile = profile
        self.compose_file = Path(profile.compose_file).resolve()
        self.report_dir = Path(report_dir)
        self.log_path = self.report_dir / profile.name / "server.log"
        self.image_override = image
        self.startup_timeout_s = float(startup_timeout_s)
        self.keep_running = keep_running
        self.reuse_running = reuse_running
        self.extra_env = dict(env or {})
        self._progress = progress
        self.project = f"glmperf-{_slug(profile.name)}-{uuid.uuid4().hex[:8]}"
        self.base_url = ""
        self.host_port: int | None = None
        self.image = ""
        self.service = ""
        self.startup_s: float | None = None
        self.started_at: str | None = None
        self.reused = False
        self._env_overrides: dict[str, str] = {}
        self._config: dict[str, Any] = {}
        self._compose: list[str] = []
        self._docker: Any = None
        self._container_id: str | None = None
        self._gpu_reserved: int | str | None = None
        self._server_info: tuple[str | None, dict[str, Any] | None] | None = None
        self._logs: subprocess.Popen[bytes] | None = None
        self._log_thread: threading.Thread | None = None
        self._state = "new"  # new -> starting -> running -> stopped

    # ------------------------------------------------------------------ public surface

    def __enter__(self) -> ComposeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ComposeServer {self.profile.name} {self.project} {self._state} {self.base_url or '-'}>"

    def start(self) -> ComposeServer:
        """Bring the profile up and return once ``/health_generate`` answers 200."""
        if self._state != "new":
            raise ServerStartError(f"{self!r} was already started; make a new ComposeServer")
        self._state = "starting"
        began = time.monotonic()
        try:
            self._compose = find_compose()
            self._docker = _docker_client()
            self._resolve_config()
            if self._clear_the_port():  # adopted a healthy running server of this profile
                self._finish_start(began)
                return self
            self._ensure_image()
            began = time.monotonic()  # the start-up timeout and time count from `up`, not the pull
            _register(self)
            try:
                self._up()
                self._follow_logs()
                self._wait_until_ready(began)
            except BaseException:
                self._say(f"start-up of profile {self.profile.name!r} failed; taking project {self.project} down")
                self._down()
                raise
            self._finish_start(began)
        except BaseException:
            self._state = "failed"
            self._stop_logs()
            _unregister(self)
            raise
        return self

    def stop(self) -> None:
        """``down`` (honouring the stop grace period) unless kept running or reused; idempotent."""
        if self._state in ("new", "stopped", "failed"):
            if self._state == "new":
                self._state = "stopped"
            return
        leave_up = (self.keep_running or self.reused) and self._state == "running"
        self._state = "stopped"
        try:
            if leave_up:
                why = "--keep-running" if self.keep_running else "it was already running (--reuse-running)"
                self._say(f"leaving profile {self.profile.name!r} up at {self.base_url} ({why}); stop it with: "
                          f"{' '.join(self._compose)} -p {self.project} -f {self.compose_file} down")
            else:
                self._down()
        finally:
            self._stop_logs(wait_s=0.0 if leave_up else 5.0)
            _unregister(self)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log (the container's own log if it is fresher)."""
        text = self._container_log_tail(lines)
        if text:
            return text
        try:
            with self.log_path.open(encoding="utf-8", errors="replace") as handle:
                return "".join(deque(handle, maxlen=lines)).rstrip("\n")
        except OSError:
            return ""

    def alive(self) -> bool:
        """True while the server's container runs (false once it exited, was killed or removed)."""
        return (self._container_state().get("State") or {}).get("Status") == "running"

    def exit_reason(self, lines: int = 40) -> str | None:
        """None while running; else why the container stopped, with its last log lines."""
        attrs = self._container_state()
        state = attrs.get("State") or {}
        if state.get("Status") == "running":
            return None
        return (f"the container of profile {self.profile.name!r} is {state.get('Status', 'gone')} "
                f"({_describe_exit(state, attrs.get('RestartCount') or 0)}); last {lines} log lines:\n"
                f"{self.log_tail(lines)}")

    def provenance(self) -> dict[str, Any]:
        """Image, compose file, server version/args, host, GPUs, start-up time (secrets redacted)."""
        container: dict[str, Any] = {}
        if self._container_id and self._docker is not None:
            with contextlib.suppress(Exception):
                attrs = self._docker.containers.get(self._container_id).attrs
                container = {
                    "id": attrs.get("Id"),
                    "name": (attrs.get("Name") or "").lstrip("/"),
                    "image_id": attrs.get("Image"),
                    "command": [*((attrs.get("Config") or {}).get("Entrypoint") or []),
                                *((attrs.get("Config") or {}).get("Cmd") or [])],
                    "started_at": (attrs.get("State") or {}).get("StartedAt"),
                }
        if self._server_info is None and self.base_url:
            self._server_info = fetch_server_info(self.base_url)
        return collect_compose_provenance(
            profile=self.profile.name,
            compose_file=self.compose_file,
            project=self.project,
            image_reference=self.image,
            docker_client=self._docker,
            base_url=self.base_url,
            started_at=self.started_at,
            startup_s=self.startup_s,
            env_overrides=self._env_overrides,
            gpu_reserved=self._gpu_reserved,
            container=container,
            server_info=self._server_info or (None, None),
            reused=self.reused,
        )

    # ------------------------------------------------------------------ helpers

    def _say(self, message: str) -> None:
        if self._progress is not None:
            with contextlib.suppress(Exception):
                self._progress(message)

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self._env_overrides}

    def _run(self, *args: str, timeout: float, check_what: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [*self._compose, "-p", self.project, "-f", str(self.compose_file), *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self._env(),
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise ServerStartError(f"`{' '.join(command)}` did not finish within {timeout:g} s "
                                   f"(profile {self.profile.name!r})") from None
        if check_what and done.returncode != 0:
            raise ServerStartError(f"{check_what} failed for profile {self.profile.name!r} "
                                   f"({self.compose_file}):\n{_tail(done.stderr or done.stdout, 40)}")
        return done

    def _resolve_config(self) -> None:
        path = self.compose_file
        if not path.is_file():
            raise ConfigError(f"compose file {path} of profile {self.profile.name!r} does not exist "
                              "(compose_file in the profile registry)")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"compose file {path} is not valid YAML: {exc}") from None
        services = raw.get("services") if isinstance(raw, dict) else None
        if not isinstance(services, dict) or not services:
            raise ConfigError(f"compose file {path} declares no services")
        overrides = {**self.profile.env, **self.extra_env}
        if self.image_override:
            overrides[self._image_variable(services)] = self.image_override
        self._env_overrides = {str(k): str(v) for k, v in overrides.items()}
        done = self._run("config", "--format", "json", timeout=60)
        if done.returncode != 0:
            raise ConfigError(f"compose file {path} is invalid: {_tail(done.stderr or done.stdout, 20)}")
        try:
            self._config = json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"`compose config` gave no JSON for {path}: {exc}") from None
        name, service = self._pick_service(self._config.get("services") or {})
        self.service = name
        self.image = str(service.get("image") or "")
        if not self.image:
            raise ConfigError(f"compose file {path}: service {name!r} has no image (builds are not supported)")
        for port in service.get("ports") or []:
            if int(port.get("target", 0)) == CONTAINER_PORT and port.get("published"):
                self.host_port = int(str(port["published"]).split("-")[0])
        if self.host_port is None:
            raise ConfigError(f"compose file {path}: service {name!r} publishes no host port for container port "
                              f"{CONTAINER_PORT} (ports: - \"${{SGLANG_HOST_PORT:-30001}}:8000\")")
        self.base_url = f"http://127.0.0.1:{self.host_port}"
        devices = ((((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {})
                   .get("devices") or [])
        counts = [device.get("count") for device in devices if "gpu" in (device.get("capabilities") or [])]
        self._gpu_reserved = counts[0] if counts else None

    def _image_variable(self, services: Mapping[str, Any]) -> str:
        """The variable that sets the image (``image: ${SGLANG_IMAGE:-...}``), for ``image=``."""
        images = [str((spec or {}).get("image", "")) for spec in services.values() if isinstance(spec, dict)]
        for image in images:
            match = _IMAGE_VARIABLE.match(image.strip())
            if match:
                return match.group("name") or match.group("bare")
        raise ConfigError(
            f"--image cannot be applied: compose file {self.compose_file} fixes its image ({', '.join(images)}); "
            "write it as image: ${SGLANG_IMAGE:-lmsysorg/sglang:latest}"
        )

    def _pick_service(self, services: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        for name, service in services.items():
            if any(int(port.get("target", 0)) == CONTAINER_PORT for port in service.get("ports") or []):
                return name, service
        if len(services) == 1:
            return next(iter(services.items()))
        raise ConfigError(f"compose file {self.compose_file}: no service publishes container port {CONTAINER_PORT}")

    # ---- the host port and what already runs there

    def _is_ours(self, labels: Mapping[str, str]) -> bool:
        """A container this plugin started for this profile (its project prefix): ours to restart."""
        return labels.get(PROJECT_LABEL, "").startswith(f"glmperf-{_slug(self.profile.name)}-")

    def _same_file(self, labels: Mapping[str, str]) -> bool:
        """Started from this profile's compose file, by someone else (``docker compose up`` by hand)."""
        files = [Path(item) for item in labels.get(CONFIG_FILES_LABEL, "").split(",") if item]
        return self.compose_file in files

    def _clear_the_port(self) -> bool:
        """Refuse strangers on the port, restart or adopt our own profile; True when adopted."""
        assert self.host_port is not None
        port = str(self.host_port)
        fixed_names = self._fixed_container_names()
        for container in self._docker.containers.list(all=True):
            labels = container.labels or {}
            project = labels.get(PROJECT_LABEL)
            on_port = container.status == "running" and port in _host_ports(container)
            if not (on_port or container.name in fixed_names):
                continue  # other servers of this profile on other ports are someone else's business
            if not self._is_ours(labels):
                what = f"container {container.name!r} ({container.status}, image {_image_name(container)}"
                what += f", compose project {project!r})" if project else ")"
                fix = f"docker rm -f {container.name}" + (f" or docker compose -p {project} down" if project else "")
                if self._same_file(labels):
                    if on_port and self.reuse_running and self._healthy():
                        return self._adopt(container, project)
                    raise ServerStartError(
                        f"{what} runs this profile's compose file but was not started by pytest-glmperf, so it is "
                        f"left alone: test it with --reuse-running (it stays up afterwards), or stop it yourself "
                        f"({fix}) to let the run start its own")
                if on_port:
                    raise ServerStartError(
                        f"host port {port} (profile {self.profile.name!r}) is already taken by {what}, which is not "
                        f"this profile; stop it ({fix}) or publish another port with SGLANG_HOST_PORT"
                    )
                raise ServerStartError(
                    f"container name {container.name!r} of profile {self.profile.name!r} is already used by {what}; "
                    f"remove it ({fix}) or set SGLANG_CONTAINER_NAME"
                )
            if on_port and self.reuse_running and self._healthy():
                return self._adopt(container, project)
            self._say(f"taking down the earlier server of profile {self.profile.name!r} "
                      f"(project {project}, {container.status}) before starting a fresh one")
            self._down(project=project or None, container=container)
        if self._port_in_use(self.host_port):
            raise ServerStartError(
                f"host port {port} (profile {self.profile.name!r}) is already in use by a process that is not a "
                f"container of this profile; free it (`ss -ltnp 'sport = :{port}'` shows who holds it) or "
                "publish another port with SGLANG_HOST_PORT"
            )
        return False

    def _adopt(self, container: Any, project: str | None) -> bool:
        """Test the healthy server already running there, and leave it up at the end."""
        self.project = project or self.project
        self.reused = True
        self._container_id = container.id
        self._say(f"reusing the healthy server of profile {self.profile.name!r} already running in "
                  f"project {self.project} at {self.base_url} (--reuse-running)")
        return True

    def _fixed_container_names(self) -> set[str]:
        services = self._config.get("services") or {}
        return {str(spec["container_name"]) for spec in services.values() if spec.get("container_name")}

    @staticmethod
    def _port_in_use(port: int) -> bool:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET, "127.0.0.1")):
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, port))
                except OSError:
                    return True
        return False

    def _healthy(self, timeout_s: float = 20.0) -> bool:
        try:
            with httpx.Client(timeout=timeout_s) as http:
                return http.get(f"{self.base_url}/health_generate").status_code == 200
        except httpx.HTTPError:
            return False

    # ---- image, up, logs, readiness

    def _ensure_image(self) -> None:
        import docker.errors

        try:
            self._docker.images.get(self.image)
            return
        except docker.errors.ImageNotFound:
            pass
        service = (self._config.get("services") or {}).get(self.service) or {}
        if service.get("pull_policy") == "never":
            raise ServerStartError(
                f"image {self.image} of profile {self.profile.name!r} is not present locally and "
                f"{self.compose_file.name} says pull_policy: never; build it first "
                "(python3 -m pytest_glmperf.sim_image for the simulator, or .ci/setup-docker.sh)"
            )
        self._say(f"image {self.image} is not present locally; pulling it")
        done = self._run("pull", "--quiet", self.service, timeout=self.startup_timeout_s)
        if done.returncode != 0:
            raise ServerStartError(
                f"image {self.image} of profile {self.profile.name!r} is not present locally and could not be "
                f"pulled: {_tail(done.stderr or done.stdout, 10)}\nCheck the reference (--image), the registry "
                f"login, or pull/load it by hand (docker pull {self.image})."
            )

    def _up(self) -> None:
        self._say(f"{' '.join(self._compose)} -p {self.project} -f {self.compose_file} up -d "
                  f"(image {self.image}, port {self.host_port})")
        self.started_at = _now()
        self._run("up", "--detach", "--pull", "never", "--no-build", "--remove-orphans",
                  timeout=max(300.0, min(self.startup_timeout_s, 1800.0)), check_what="`compose up -d`")
        ids = self._project_containers()
        if not ids:
            raise ServerStartError(f"`compose up -d` started no container for profile {self.profile.name!r}")
        self._container_id = ids[0]

    def _project_containers(self) -> list[str]:
        containers = self._docker.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={self.project}"})
        return [container.id for container in containers]

    def _follow_logs(self) -> None:
        """``compose logs --follow`` into ``log_path`` (appended: one file per profile per run)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"=== glmperf {_now()} profile {self.profile.name} project {self.project} "
                      f"image {self.image} ===\n")
        args = ["logs", "--follow", "--no-color", "--no-log-prefix"]
        if self.reused:
            args += ["--tail", str(LOG_TAIL_LINES)]
        self._logs = subprocess.Popen(
            [*self._compose, "-p", self.project, "-f", str(self.compose_file), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(),
            start_new_session=True,
        )
        self._log_thread = threading.Thread(target=_pump_log, args=(self._logs, self.log_path), daemon=True,
                                            name=f"glmperf-log-{self.project}")
        self._log_thread.start()

    def _stop_logs(self, *, wait_s: float = 5.0) -> None:
        process, self._logs = self._logs, None
        if process is None:
            return
        try:
            process.wait(timeout=wait_s)  # ends by itself once the containers are gone
        except subprocess.TimeoutExpired:
            # its own session: signal the group (`docker compose` runs the plugin as a child)
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)

    def _container_state(self) -> dict[str, Any]:
        if not self._container_id:
            return {}
        try:
            return self._docker.api.inspect_container(self._container_id)
        except Exception:
            return {"State": {"Status": "removed"}}

    def _wait_until_ready(self, began: float) -> None:
        url = f"{self.base_url}/health_generate"

        def check_alive() -> None:
            attrs = self._container_state()
            state = attrs.get("State") or {}
            if state.get("Status") in ("exited", "dead", "removed", "restarting") or attrs.get("RestartCount"):
                self._raise_exited(state, attrs.get("RestartCount") or 0)

        def status() -> str:
            return (self._container_state().get("State") or {}).get("Status", "?")

        def not_ready(last: str) -> str:
            return (f"profile {self.profile.name!r} ({self.image}) was not ready at {self.base_url} after "
                    f"{self.startup_timeout_s:g} s (--startup-timeout; last: {last}; container "
                    f"{status()}). A cold start can take 30 min: raise --startup-timeout if the "
                    f"log shows it still loading. Last log lines:\n{self.log_tail(LOG_TAIL_LINES)}")

        def note(elapsed: float, last: str) -> None:
            self._say(f"waiting for profile {self.profile.name!r} at {url}: {time.monotonic() - began:.0f} s of "
                      f"{self.startup_timeout_s:g} s, container {status()}, {last}")

        # The deadline counts from `up`, not from the first poll.
        remaining = self.startup_timeout_s - (time.monotonic() - began)
        wait_until_ready(self.base_url, remaining, check_alive=check_alive, not_ready=not_ready,
                         progress=note, poll_s=1.0, note_every_s=15.0)

    def _raise_exited(self, state: Mapping[str, Any], restarts: int) -> None:
        raise ServerStartError(
            f"the container of profile {self.profile.name!r} ({self.image}) exited during start-up "
            f"({_describe_exit(state, restarts)}); last {LOG_TAIL_LINES} log lines:\n{self.log_tail(LOG_TAIL_LINES)}"
        )

    def _finish_start(self, began: float) -> None:
        self.startup_s = time.monotonic() - began
        if self.reused:
            _register(self)
            self._follow_logs()
        self._state = "running"
        self._server_info = fetch_server_info(self.base_url)
        version = (self._server_info[1] or {}).get("version", "?")
        self._say(f"profile {self.profile.name!r} ready at {self.base_url} after {self.startup_s:.1f} s "
                  f"(server version {version})")

    def _container_log_tail(self, lines: int) -> str:
        if not self._container_id or self._docker is None:
            return ""
        try:
            raw = self._docker.containers.get(self._container_id).logs(tail=lines)
        except Exception:
            return ""
        return raw.decode("utf-8", errors="replace").rstrip("\n")

    # ---- teardown

    def _down(self, *, project: str | None = None, container: Any = None) -> None:
        """``compose down`` for our (or an earlier) project; falls back to the SDK if Compose fails."""
        project = project or self.project
        grace = _grace_seconds((self._config.get("services") or {}).get(self.service, {}))
        command = [*self._compose, "-p", project, "-f", str(self.compose_file), "down", "--volumes", "--remove-orphans"]
        self._say(f"{' '.join(command)} (stop grace {grace:g} s)")
        interrupted: BaseException | None = None
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=self._env(), stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self._say(f"`compose down` for project {project} could not run ({exc}); removing by label")
            process = None
        deadline = time.monotonic() + grace + 120
        while process is not None:
            try:
                _out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
                if process.returncode != 0:
                    self._say(f"`compose down` for project {project} failed: {_tail(err, 5)}; removing by label")
                break
            except subprocess.TimeoutExpired:
                self._say(f"`compose down` for project {project} took over {grace + 120:g} s; removing by label")
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM while taking down
                if interrupted is None:
                    interrupted = exc
                    self._say("interrupted while taking the server down: finishing `down` first "
                              "(interrupt again to force-remove the containers)")
                    continue
                self._say("interrupted twice: force-removing the containers")
            _signal_group(process, signal.SIGKILL)
            process.wait()
            break
        self._remove_leftovers(project, extra=container)
        if interrupted is not None:
            raise interrupted

    def _remove_leftovers(self, project: str, extra: Any = None) -> None:
        if self._docker is None:
            return
        label = {"label": f"{PROJECT_LABEL}={project}"}
        with contextlib.suppress(Exception):
            for container in self._docker.containers.list(all=True, filters=label):
                container.remove(force=True, v=True)
            if extra is not None and not (extra.labels or {}).get(PROJECT_LABEL):
                extra.remove(force=True, v=True)
            for network in self._docker.networks.list(filters=label):
                network.remove()
            for volume in self._docker.volumes.list(filters=label):
                volume.remove(force=True)


def _describe_exit(state: Mapping[str, Any], restarts: int) -> str:
    code = state.get("ExitCode")
    detail = f"exit code {code}" if code is not None else str(state.get("Status", "removed"))
    if state.get("OOMKilled"):
        detail += ", killed for memory (OOMKilled)"
    if state.get("Error"):
        detail += f", {state['Error']}"
    if restarts:
        detail += f", restarted {restarts}x by its restart policy"
    return detail


def _signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signum)


_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def _pump_log(process: subprocess.Popen[bytes], path: Path) -> None:
    """Copy the log follower's output to the file, line by line, without terminal escapes."""
    assert process.stdout is not None
    with process.stdout, path.open("ab") as log:
        for line in process.stdout:
            log.write(_ANSI.sub(b"", line).replace(b"\r", b""))
            log.flush()


def _grace_seconds(service: Mapping[str, Any]) -> float:
    """``stop_grace_period`` in seconds (Compose's default is 10 s)."""
    text = str(service.get("stop_grace_period") or "10s")
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(h|ms|m|s|us|ns)", text):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total or 10.0


def _host_ports(container: Any) -> set[str]:
    ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    return {binding.get("HostPort") for bindings in ports.values() for binding in bindings or []}


def _image_name(container: Any) -> str:
    with contextlib.suppress(Exception):
        return str((container.attrs.get("Config") or {}).get("Image") or container.image.id[:19])
    return "?"


def _tail(text: str, lines: int) -> str:
    return "\n".join(redact(line) for line in text.strip().splitlines()[-lines:])
