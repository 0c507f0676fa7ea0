"""Shared test set-up: pytester for running the plugin on inner test projects."""

import gc
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "compose" / "profiles.yaml"
IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _no_docker(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI needs a Docker engine for the compose tests (run .ci/setup-docker.sh): {reason}")
    pytest.skip(f"no Docker engine here: {reason}")


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """A real Docker engine with Compose v2 and the simulator image, or a skip (a failure in CI)."""
    try:
        import docker

        from pytest_glmperf.compose import find_compose

        client = docker.from_env(timeout=60)
        client.ping()
        find_compose()
    except Exception as exc:
        _no_docker(f"{type(exc).__name__}: {exc}")
    from pytest_glmperf.sim_image import ensure_sim_image

    ensure_sim_image(progress=lambda msg: print(f"[sim-image] {msg}"))
    return client


def pytest_configure() -> None:
    """Give the Ctrl-C tests an interruptible child even when the run itself was started in the
    background (`.ci/run &`, nohup): a non-interactive shell then starts it with SIGINT ignored,
    every child inherits that, and Python installs no KeyboardInterrupt handler in them. A Python
    handler here is reset to the default on exec, so the children get theirs back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def no_gc_pauses() -> Iterator[None]:
    """For tests that time arrivals in this process to the millisecond: no cyclic garbage
    collection while they run. A full collection of the test process's heap stops it for tens
    of ms here (17 in one run of tests/simulator, the longest 64 ms), stamping whatever
    arrives meanwhile late by as much: the test process's pause, not what is measured."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
