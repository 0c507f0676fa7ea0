"""Fault injection for the simulator: what can go wrong in a stream, and when.

Why: the plugin must prove that it counts every way a real SGLang server can fail a request
(an error payload under HTTP 200, a 503 before the stream, a stall, a stream cut without
``[DONE]``, a malformed SSE line, a crashed process, a slow warm-up). Each fault is a small
value object parsed from one spec string, so the same syntax works on the command line
(``--sim-fault``), in a request header (``x-glmperf-fault``) and at the admin endpoint
(``POST /glmperf/faults``).

Spec syntax: ``NAME[:KEY=VALUE[,KEY=VALUE...]]``, several joined by ``;``. Names:

==================  ===========================================================================
``mid_stream_error``  after ``after`` token chunks: ``data: {"error": {...}}`` (``code``, default
                      500; ``message``), then the usage chunk and ``[DONE]``, as SGLang does
``queue_full``        HTTP 503 JSON error before the stream starts
``stall``             after ``after`` token chunks: nothing is sent for ``seconds`` model seconds
``truncate``          after ``after`` token chunks: the response ends without ``[DONE]``
``malformed``         after ``after`` token chunks: one line of broken JSON, then the stream goes on
``crash``             after ``after`` token chunks: the whole server process exits (status 1)
==================  ===========================================================================

``after`` counts token-bearing chunks already sent (default 0: before the first one). A key
``p=0.25`` applies the fault to that fraction of requests (server-wide faults; default 1).
A fault whose ``after`` is never reached (the stream ends first) does not fire.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

from .driver import Pacer, Parts

KINDS = ("mid_stream_error", "queue_full", "stall", "truncate", "malformed", "crash")
_INT_KEYS = {"after", "code"}
_FLOAT_KEYS = {"seconds", "p"}
_STR_KEYS = {"message"}


class FaultSpecError(ValueError):
    """A fault spec string is wrong; the message names the bad part."""


@dataclass(frozen=True)
class Fault:
    """One injected fault (see the module docstring for the meaning of each field)."""

    kind: str
    after: int = 0
    seconds: float = 0.0
    code: int = 500
    message: str = ""
    p: float = 1.0

    def spec(self) -> str:
        """The fault written back in spec syntax (round-trips through parse_faults)."""
        parts = [f"after={self.after}"]
        if self.kind == "stall":
            parts.append(f"seconds={self.seconds:g}")
        if self.kind == "mid_stream_error":
            parts.append(f"code={self.code}")
            if self.message:
                parts.append(f"message={self.message}")
        if self.p != 1.0:
            parts.append(f"p={self.p:g}")
        return f"{self.kind}:{','.join(parts)}"

    def error_message(self) -> str:
        """Message text of an error payload for this fault."""
        if self.message:
            return self.message
        if self.kind == "queue_full":
            return "The request queue is full (injected fault)."
        return f"Injected mid-stream error ({self.code})."


def _parse_value(kind: str, key: str, raw: str) -> int | float | str:
    """Convert one KEY=VALUE of a fault spec, naming the fault and key on error."""
    try:
        if key in _INT_KEYS:
            return int(raw)
        if key in _FLOAT_KEYS:
            return float(raw)
    except ValueError:
        raise FaultSpecError(f"fault {kind!r}: {key}={raw!r} is not a number") from None
    if key in _STR_KEYS:
        return raw
    known = sorted(_INT_KEYS | _FLOAT_KEYS | _STR_KEYS)
    raise FaultSpecError(f"fault {kind!r}: unknown key {key!r} (known: {', '.join(known)})")


def _validate(fault: Fault) -> Fault:
    """Reject values that cannot mean anything."""
    if fault.after < 0:
        raise FaultSpecError(f"fault {fault.kind!r}: after must be >= 0")
    if fault.seconds < 0:
        raise FaultSpecError(f"fault {fault.kind!r}: seconds must be >= 0")
    if not 0.0 <= fault.p <= 1.0:
        raise FaultSpecError(f"fault {fault.kind!r}: p must be within [0, 1]")
    try:
        HTTPStatus(fault.code)
    except ValueError:
        raise FaultSpecError(f"fault {fault.kind!r}: code {fault.code} is no HTTP status") from None
    return fault


def parse_fault(spec: str) -> Fault:
    """Parse one ``NAME[:KEY=VALUE,...]`` spec."""
    name, _, params = spec.strip().partition(":")
    name = name.strip().lower().replace("-", "_")
    if name not in KINDS:
        raise FaultSpecError(f"unknown fault {name!r} (known: {', '.join(KINDS)})")
    values: dict[str, int | float | str] = {}
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, eq, raw = item.partition("=")
        if not eq:
            raise FaultSpecError(f"fault {name!r}: {item!r} is not KEY=VALUE")
        values[key.strip()] = _parse_value(name, key.strip(), raw.strip())
    if name == "queue_full":
        values.setdefault("code", 503)
    return _validate(Fault(kind=name, **values))  # type: ignore[arg-type]


def parse_faults(specs: str | list[str] | None) -> list[Fault]:
    """Parse ``;``-joined specs (or a list of them) into faults; empty input gives []."""
    if not specs:
        return []
    items = specs if isinstance(specs, list) else [specs]
    faults: list[Fault] = []
    for item in items:
        if not isinstance(item, str):
            raise FaultSpecError(f"fault spec must be a string, got {item!r}")
        faults.extend(parse_fault(s) for s in item.split(";") if s.strip())
    return faults


@dataclass
class StreamFaults:
    """The faults one stream will meet, in firing order; consumed as the stream advances."""

    queue_full: Fault | None = None
    pending: list[Fault] = field(default_factory=list)

    @classmethod
    def build(cls, faults: list[Fault]) -> StreamFaults:
        """Split a request's faults into the pre-stream one and the in-stream ones."""
        out = cls()
        for fault in faults:
            if fault.kind == "queue_full":
                out.queue_full = out.queue_full or fault
            else:
                out.pending.append(fault)
        out.pending.sort(key=lambda f: f.after)
        return out

    def due(self, chunks_sent: int) -> list[Fault]:
        """Faults that fire now, before token chunk number ``chunks_sent`` (0-based) goes out."""
        if not self.pending or self.pending[0].after > chunks_sent:
            return []
        fired = [f for f in self.pending if f.after <= chunks_sent]
        self.pending = [f for f in self.pending if f.after > chunks_sent]
        return fired


class FaultBoard:
    """Server-wide faults (from the command line or the admin endpoint) plus per-request ones.

    ``p`` is drawn from a seeded generator so a run with the same seed and request order
    meets the same faults.
    """

    def __init__(self, faults: list[Fault] | None = None, seed: int = 0) -> None:
        self.faults: list[Fault] = list(faults or [])
        self._rng = random.Random(seed)

    def replace(self, faults: list[Fault]) -> None:
        """Swap the server-wide fault list (admin endpoint)."""
        self.faults = list(faults)

    def for_request(self, header: str | None) -> StreamFaults:
        """Faults for one request: server-wide ones that win their draw, then the header's.

        Raises FaultSpecError when the header does not parse.
        """
        chosen = [f for f in self.faults if f.p >= 1.0 or self._rng.random() < f.p]
        chosen += parse_faults(header) if header else []
        return StreamFaults.build([replace(f, p=1.0) for f in chosen])

    def specs(self) -> list[str]:
        """Current server-wide faults in spec syntax."""
        return [f.spec() for f in self.faults]


def error_type(code: int) -> str:
    """SGLang's ``type`` for an in-stream error: the HTTPStatus name, e.g. SERVICE_UNAVAILABLE."""
    try:
        return HTTPStatus(code).name
    except ValueError:
        return "INTERNAL_SERVER_ERROR"


# -- scripted streams --------------------------------------------------------------------------
#
# A request body may carry ``glmperf_script`` (an SGLang-style extension field); the server then
# bypasses the engine and plays exactly this stream, times in model seconds:
#
#   {"ttft_s": 0.2, "chunks": [{"gap_s": 0.05, "tokens": 1, "channel": "content"}, ...],
#    "error_after": N?, "error_code": 500?, "error_message": "..."?, "truncate_after": N?,
#    "malformed_after": N?, "prompt_tokens": P?, "cached_tokens": K?, "finish_reason": "..."?}
#
# Chunk i is sent at ttft_s + sum(gap_s of chunks 0..i) after the request was read (so with
# chunks[0].gap_s == 0 the first token arrives at exactly ttft_s); an injected stall delays
# every later chunk by its length. The *_after keys are the faults above with after=N.


class ScriptError(ValueError):
    """A glmperf_script that cannot be played; the message names the bad field."""


class ScriptSource:
    """Exactly the chunks of a ``glmperf_script``, at their model-time instants."""

    def __init__(self, script: dict[str, Any], t0_ns: int, scale: float, pacer: Pacer) -> None:
        self.chunks: list[dict[str, Any]] = script.get("chunks") or []
        self.ttft_s = float(script.get("ttft_s", 0.0))
        self.t0_ns = t0_ns
        self.scale = scale
        self.pacer = pacer
        self.i = 0
        self.model_s = self.ttft_s
        self.offset_ns = 0
        self.aborted = False
        self._wait: asyncio.Future[None] | None = None  # the pending pacer wait

    async def next(self) -> tuple[Parts, bool] | None:
        """The next chunk ``([(is_reasoning, tokens)], finished)`` at its instant; None when
        aborted or played out."""
        if self.aborted or (self.i >= len(self.chunks) and self.i > 0):
            return None
        if not self.chunks:  # no chunks at all: finish at TTFT
            self.i = 1
            await self._until(self._deadline())
            return None if self.aborted else ([], True)
        chunk = self.chunks[self.i]
        self.model_s += float(chunk.get("gap_s", 0.0))
        await self._until(self._deadline())
        if self.aborted:
            return None
        self.i += 1
        reasoning = chunk.get("channel", "content") == "reasoning"
        return [(reasoning, int(chunk.get("tokens", 1)))], self.i >= len(self.chunks)

    async def _until(self, deadline_ns: int) -> None:
        self._wait = self.pacer.until(deadline_ns)
        await self._wait

    def _deadline(self) -> int:
        return self.t0_ns + self.offset_ns + round(self.model_s / self.scale * 1e9)

    def shift(self, ns: int) -> None:
        """A stall delays every later scripted chunk by its length."""
        self.offset_ns += ns

    def abort(self) -> None:
        """Stop playing (fault, client gone, shutdown); a pending wait ends at once."""
        self.aborted = True
        if self._wait is not None and not self._wait.done():
            self._wait.set_result(None)


def validate_script(script: dict[str, Any]) -> dict[str, Any]:
    """Reject scripts that cannot be played; returns the script."""
    def number(value: Any, name: str, integer: bool = False) -> None:
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or value < 0:
            raise ScriptError(f"glmperf_script.{name} must be a non-negative "
                              f"{'integer' if integer else 'number'}")
    number(script.get("ttft_s", 0.0), "ttft_s")
    chunks = script.get("chunks", [])
    if not isinstance(chunks, list):
        raise ScriptError("glmperf_script.chunks must be a list")
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, dict):
            raise ScriptError(f"glmperf_script.chunks[{i}] must be an object")
        number(chunk.get("gap_s", 0.0), f"chunks[{i}].gap_s")
        number(chunk.get("tokens", 1), f"chunks[{i}].tokens", integer=True)
        if chunk.get("tokens", 1) < 1 or chunk.get("channel", "content") not in (
                "content", "reasoning"):
            raise ScriptError(f"glmperf_script.chunks[{i}]: tokens >= 1, channel "
                              "content|reasoning")
    for key in ("error_after", "truncate_after", "malformed_after", "prompt_tokens",
                "cached_tokens", "error_code"):
        if script.get(key) is not None:
            number(script[key], key, integer=True)
    return script


def script_faults(script: dict[str, Any]) -> list[Fault]:
    """The faults a script asks for, as ordinary Fault objects."""
    out: list[Fault] = []
    if script.get("error_after") is not None:
        out.append(Fault("mid_stream_error", after=script["error_after"],
                         code=int(script.get("error_code") or 500),
                         message=str(script.get("error_message") or "")))
    if script.get("truncate_after") is not None:
        out.append(Fault("truncate", after=script["truncate_after"]))
    if script.get("malformed_after") is not None:
        out.append(Fault("malformed", after=script["malformed_after"]))
    return out
