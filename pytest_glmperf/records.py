"""RequestRecord: everything observed about one streamed request, and the JSONL log of them.

A record keeps raw monotonic stamps (``time.perf_counter_ns()``, taken when bytes arrive,
before any JSON parsing). Every derived figure is a property in *model seconds*: the wall
interval times ``time_scale`` (1.0 on a real server; K when the simulator runs K times faster
than real time). A figure that cannot be computed is ``None``, never 0.
See docs/metrics.md for the exact definitions.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from .errors import RecordWriteError

OK = "ok"
FAILED = "failed"
CUT = "cut"  # in flight when a level was stopped early on purpose: neither success nor failure


@dataclass
class RequestRecord:
    """One request, from the moment it was sent until the stream closed."""

    request_id: str
    scenario: str = "user"          # capacity | mixed | user-chosen name
    kind: str = "request"           # agent | spike | revisit | decode | request
    profile: str = ""
    level: int | None = None        # concurrency level (capacity) or None
    context_id: int | None = None
    time_scale: float = 1.0
    max_tokens: int | None = None
    send_ns: int = 0                # just before the request bytes went out
    first_byte_ns: int | None = None  # first response body bytes
    first_token_ns: int | None = None  # first chunk with content or reasoning_content
    first_content_ns: int | None = None  # first chunk with non-empty content
    done_ns: int | None = None      # stream closed ([DONE], error or drop)
    chunk_ns: list[int] = field(default_factory=list)     # arrival of each token-bearing chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens each of those chunks carried
    status_code: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    outcome: str = OK
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- derived figures, model seconds ------------------------------------------------------
    def _seconds(self, start_ns: int | None, end_ns: int | None) -> float | None:
        if start_ns is None or end_ns is None:
            return None
        return (end_ns - start_ns) / 1e9 * self.time_scale

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def counted(self) -> bool:
        """Whether the record takes part in statistics (cut records do not)."""
        return self.outcome != CUT

    @property
    def ttft_s(self) -> float | None:
        """Send to the first chunk carrying content or reasoning_content."""
        return self._seconds(self.send_ns, self.first_token_ns)

    @property
    def ttfc_s(self) -> float | None:
        """Send to the first chunk carrying (non-reasoning) content."""
        return self._seconds(self.send_ns, self.first_content_ns)

    @property
    def e2e_s(self) -> float | None:
        """Send to the close of the stream."""
        return self._seconds(self.send_ns, self.done_ns)

    @property
    def gaps_s(self) -> list[float]:
        """Intervals between consecutive token-bearing chunks (first token onwards)."""
        scale = self.time_scale / 1e9
        stamps = self.chunk_ns
        return [(b - a) * scale for a, b in itertools.pairwise(stamps)]

    @property
    def max_gap_s(self) -> float | None:
        """The longest silence once tokens started flowing; None with fewer than 2 chunks."""
        gaps = self.gaps_s
        return max(gaps) if gaps else None

    @property
    def output_tokens(self) -> int:
        """Completion tokens from usage (reasoning included), else the sum of chunk tokens."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return sum(self.chunk_tokens)

    @property
    def output_tok_s(self) -> float | None:
        """What an agent feels: completion tokens over the request's whole time (send..close)."""
        e2e = self.e2e_s
        if not self.ok or not e2e or e2e <= 0:
            return None
        return self.output_tokens / e2e

    @property
    def decode_tok_s(self) -> float | None:
        """Decode-only speed: tokens after the first chunk over first..last chunk."""
        if not self.ok or len(self.chunk_ns) < 2:
            return None
        span = self._seconds(self.chunk_ns[0], self.chunk_ns[-1])
        after_first = self.output_tokens - self.chunk_tokens[0]
        return after_first / span if span and span > 0 else None

    @property
    def tpot_s(self) -> float | None:
        """(e2e - TTFT) / (completion_tokens - 1), as SGLang's bench_serving defines it."""
        if not self.ok or self.e2e_s is None or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def summary(self) -> dict[str, Any]:
        """The derived figures, for reports and JSONL readers."""
        return {
            "ttft_s": self.ttft_s,
            "ttfc_s": self.ttfc_s,
            "e2e_s": self.e2e_s,
            "max_gap_s": self.max_gap_s,
            "output_tok_s": self.output_tok_s,
            "decode_tok_s": self.decode_tok_s,
        }

    def as_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready data, with its derived figures.

        Shallow on purpose: ``dataclasses.asdict`` deep-copies the 2048-entry chunk lists,
        ~8 ms per finished answer on the client's event loop (chunks of other streams
        arriving meanwhile were stamped that late); serialising the lists as they are
        takes ~1 ms.
        """
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["extra"] = dict(self.extra)
        data["derived"] = self.summary()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


class RecordLog:
    """Appends each record to a JSONL file the moment it completes (flushed, thread-safe).

    Nothing measured is lost on Ctrl-C: every finished request is already on disk.
    """

    def __init__(self, path: Path, *, fresh: bool = False) -> None:
        """``fresh`` starts a new file (one run, one log); otherwise records are appended."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("w" if fresh else "a", encoding="utf-8")
        self._lock = threading.Lock()
        self.count = 0

    def append(self, record: RequestRecord) -> None:
        """Write one record now; a failed write raises RecordWriteError naming the file."""
        line = json.dumps(record.as_dict(), separators=(",", ":"))
        with self._lock:
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
                raise RecordWriteError(f"cannot write {self.path}: {exc}") from exc
            self.count += 1

    def close(self) -> None:
        """Close the file; a write that already failed was reported then (RecordWriteError), and
        the bytes it left in the buffer cannot be written now either."""
        with self._lock, contextlib.suppress(OSError):
            self._file.close()


def read_records(path: Path) -> list[RequestRecord]:
    """Load a records.jsonl; a torn last line (killed mid-write) is skipped, not fatal."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(RequestRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return records
