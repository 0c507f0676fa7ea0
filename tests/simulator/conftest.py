"""Fixtures that run the real simulator as a subprocess on 127.0.0.1 and talk HTTP to it.

Why a subprocess and not an in-process ASGI transport: streaming timing, send stamps,
crashes and SIGTERM only mean something across a real socket and a real process boundary,
exactly as the plugin uses the simulator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

# A small, fast profile: high time scale so engine-driven streams finish in milliseconds.
FAST_ARGS = [
    "--served-model-name", "glm-5.1", "--reasoning-parser", "glm45", "--enable-metrics",
    "--enable-cache-report", "--time-scale", "50",
]


class SimProcess:
    """One simulator child process; ``stop()`` returns its exit status."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        cmd = [sys.executable, "-m", "pytest_glmperf.simulator", "--host", "127.0.0.1",
               "--port", "0", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"simulator did not start: {err[-2000:]}")
        self.listening: dict[str, Any] = json.loads(line)
        self.base_url = f"http://127.0.0.1:{self.listening['port']}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.base_url}/health_generate").status_code == 200:
                return
            time.sleep(0.01)
        raise TimeoutError("simulator not ready")


@pytest.fixture
def start_sim() -> Iterator[Any]:
    """Factory: start a simulator with the given flags; all are stopped at teardown."""
    started: list[SimProcess] = []

    def start(*args: str) -> SimProcess:
        sim = SimProcess(list(args))
        started.append(sim)
        return sim

    yield start
    for sim in started:
        if sim.proc.poll() is None:
            sim.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def sim() -> Iterator[SimProcess]:
    """The shared fast simulator (time scale 50, metrics and cache report on)."""
    proc = SimProcess(FAST_ARGS)
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def sim_realtime() -> Iterator[SimProcess]:
    """A simulator at time scale 1, for timing comparisons in (model = wall) seconds."""
    proc = SimProcess([*FAST_ARGS[:-2], "--time-scale", "1"])
    proc.wait_ready()
    yield proc
    proc.stop()


@dataclass
class Stream:
    """A streamed response: status, each SSE data payload with its arrival stamp."""

    status: int
    payloads: list[str] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)
    body: bytes = b""

    def chunks(self) -> list[dict[str, Any]]:
        """Parsed JSON payloads (everything but [DONE])."""
        return [json.loads(p) for p in self.payloads if p != "[DONE]"]

    def token_chunks(self) -> list[dict[str, Any]]:
        """Chunks with non-empty reasoning_content or content."""
        return [c for c in self.chunks() for ch in c.get("choices", [])
                if ch["delta"].get("content") or ch["delta"].get("reasoning_content")]

    def token_stamps(self) -> list[int]:
        """Arrival stamps of the token-bearing chunks."""
        out = []
        for payload, stamp in zip(self.payloads, self.stamps, strict=True):
            if payload == "[DONE]":
                continue
            for ch in json.loads(payload).get("choices", []):
                if ch["delta"].get("content") or ch["delta"].get("reasoning_content"):
                    out.append(stamp)
        return out

    @property
    def done(self) -> bool:
        return bool(self.payloads) and self.payloads[-1] == "[DONE]"

    @property
    def rid(self) -> str:
        return str(self.chunks()[0]["id"])


class SimClient(httpx.Client):
    """httpx client for one simulator, with chat helpers."""

    @staticmethod
    def body(max_tokens: int | None = 8, **extra: Any) -> dict[str, Any]:
        """A minimal streaming chat request with usage reporting on."""
        body: dict[str, Any] = {
            "model": "glm-5.1", "messages": [{"role": "user", "content": "Write a function."}],
            "stream": True, "ignore_eos": True, "temperature": 0,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        body.update(extra)
        return body

    def chat(self, body: dict[str, Any], headers: dict[str, str] | None = None,
             path: str = "/v1/chat/completions") -> Stream:
        """POST a generation request (chat unless *path* says otherwise) and collect its SSE
        payloads with per-line arrival stamps."""
        with self.stream("POST", path, json=body, headers=headers) as resp:
            out = Stream(resp.status_code)
            if resp.status_code != 200 or not body.get("stream"):
                out.body = resp.read()
                return out
            for line in resp.iter_lines():
                stamp = time.perf_counter_ns()
                if line.startswith("data: "):
                    out.payloads.append(line[len("data: "):])
                    out.stamps.append(stamp)
        return out

    def sends(self, rid: str) -> dict[str, Any]:
        """The server's send record of a request."""
        resp = self.get(f"/glmperf/sends/{rid}")
        resp.raise_for_status()
        return dict(resp.json())


@pytest.fixture
def client_for() -> Iterator[Any]:
    """Factory: a SimClient bound to a given simulator (closed at teardown)."""
    clients: list[SimClient] = []

    def make(proc: SimProcess) -> SimClient:
        client = SimClient(base_url=proc.base_url, timeout=30)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def http(sim: SimProcess) -> Iterator[SimClient]:
    """A client bound to the shared simulator; its server-wide faults are cleared after use."""
    with SimClient(base_url=sim.base_url, timeout=30) as client:
        yield client
        client.delete("/glmperf/faults")
