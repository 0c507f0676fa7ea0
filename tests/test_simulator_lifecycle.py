"""The embedded simulator dies with the process that started it, even one killed by SIGKILL.

Real processes only: a parent Python process starts ``SimulatedServer`` as the plugin does,
is SIGKILLed, and the simulator (in its own session, so no signal reaches it) must notice
the EOF on its stdin pipe, stop, and free its port.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pytest_glmperf.profiles import load_registry
from pytest_glmperf.server import SimulatedServer, wait_until_ready

REGISTRY = Path(__file__).resolve().parents[1] / "compose" / "profiles.yaml"
GONE_WITHIN_S = 15.0

PARENT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from pytest_glmperf.profiles import load_registry
    from pytest_glmperf.server import SimulatedServer

    registry, log_path = Path(sys.argv[1]), Path(sys.argv[2])
    server = SimulatedServer(load_registry(registry).get("sim-mtp"), time_scale=50.0, log_path=log_path).start()
    listening = next(json.loads(line) for line in log_path.read_text().splitlines() if '"listening"' in line)
    print(server.base_url, listening["pid"], flush=True)
    time.sleep(600)
""")


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (it no longer runs or listens)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def _first_line(process: subprocess.Popen[str], timeout_s: float = 60.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, f"no line from pid {process.pid} within {timeout_s:g} s"
    return process.stdout.readline()


def _kill(pid: int) -> None:
    if not _gone(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids this test started; whichever still run at the end are SIGKILLed."""
    started: list[int] = []
    yield started
    for pid in started:
        _kill(pid)


def test_sigkill_of_the_parent_stops_the_simulator_and_frees_its_port(tmp_path: Path, pids: list[int]) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(REGISTRY), str(tmp_path / "sim.log")],
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    pids.append(parent.pid)
    line = _first_line(parent)
    assert line, f"the parent exited ({parent.poll()}) before the simulator was up"
    base_url, sim_pid = line.split()[0], int(line.split()[1])
    pids.append(sim_pid)
    port = int(base_url.rsplit(":", 1)[1])
    wait_until_ready(base_url, 30.0)

    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    assert parent.stdout is not None
    parent.stdout.close()

    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline and not (_gone(sim_pid) and _refused(port)):
        time.sleep(0.1)
    assert _gone(sim_pid), f"simulator {sim_pid} still runs {GONE_WITHIN_S:g} s after its parent was killed"
    assert _refused(port), f"port {port} still accepts connections after the simulator exited"


def _by_hand(*flags: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "pytest_glmperf.simulator", "--host", "127.0.0.1", "--port", "0",
           "--time-scale", "1", "--sim-timer-spin-ms", "0", *flags]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    announce = json.loads(_first_line(process))
    base_url = f"http://127.0.0.1:{announce['port']}"
    wait_until_ready(base_url, 30.0)
    return process, base_url


def test_with_the_flag_eof_on_stdin_stops_it_as_sigterm_does(pids: list[int]) -> None:
    process, base_url = _by_hand("--sim-exit-with-parent")
    pids.append(process.pid)
    lines: list[str] = []

    def long_stream() -> None:
        body = {"model": "glm-5.1", "stream": True, "max_tokens": 5000,
                "messages": [{"role": "user", "content": "Write a long essay."}]}
        with contextlib.suppress(httpx.HTTPError), httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body,
                                                      timeout=30.0) as response:
            lines.extend(line for line in response.iter_lines() if line)

    reader = threading.Thread(target=long_stream, daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while len(lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(lines) >= 3, "the stream never started"

    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=GONE_WITHIN_S) == 0
    reader.join(timeout=10)
    assert not reader.is_alive(), "the open stream did not end"
    assert lines[-1] != "data: [DONE]"  # cut off, as on a real server going down


def test_without_the_flag_stdin_is_not_watched(pids: list[int]) -> None:
    process, base_url = _by_hand()
    pids.append(process.pid)
    assert process.stdin is not None
    process.stdin.close()
    time.sleep(1.0)
    assert process.poll() is None
    wait_until_ready(base_url, 5.0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=GONE_WITHIN_S) == 0


def test_stop_still_stops_the_simulator_and_closes_the_pipe(tmp_path: Path) -> None:
    server = SimulatedServer(load_registry(REGISTRY).get("sim-mtp"), time_scale=50.0, log_path=tmp_path / "sim.log")
    assert "--sim-exit-with-parent" in server.command()
    try:
        server.start()
        port = int(server.base_url.rsplit(":", 1)[1])
    finally:
        server.stop()
    assert not server.alive()
    assert _refused(port)
    server.stop()  # idempotent

