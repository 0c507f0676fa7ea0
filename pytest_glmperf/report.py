"""The run report: typed, frozen, and what report.json serialises.

Data flows one way: each judged ``LevelResult`` (and regression ``Check``) joins a
``TargetReport``; the targets and the ``SessionVerdict`` make the ``RunReport``; renderers
(``render.py``, ``ci_summary.py``, ``charts.py``, ``htmlreport.py``) only turn it into text.
``RunReport.from_dict`` reads any saved report.json back (schema 1 or 2), so baselines load
through this same model and any report re-renders. Schema: docs/report-schema.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .provenance import image_id, image_reference, redact_command, server_version
from .regression import Check
from .results import CAPACITY, MIXED, LevelResult
from .scaling import scaling_rows
from .thresholds import Thresholds
from .verdict import SessionVerdict

SCHEMA_VERSION = 2


def now_iso() -> str:
    """Local wall-clock time with its offset, as every report stamp is written."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class TargetReport:
    """Everything measured on one target (a profile, or a profile on one image)."""

    key: str
    settings: Mapping[str, Any] = field(default_factory=dict)   # RunSettings.as_dict()
    provenance: Mapping[str, Any] | None = None
    start_error: str | None = None
    chars_per_token: float | None = None
    levels: tuple[LevelResult, ...] = ()        # capacity levels, by concurrency
    search: Mapping[str, Any] | None = None     # --capacity-search: what it probed and skipped
    mixed: LevelResult | None = None
    scenarios: tuple[LevelResult, ...] = ()
    checks: tuple[Check, ...] = ()              # --compare / candidate-vs-reference checks
    baseline: str | None = None                 # what the checks compared with
    reference: Mapping[str, Any] | None = None  # that reference's provenance (reference_provenance)

    @property
    def profile(self) -> str:
        return self.key.split("@", 1)[0]

    @property
    def image(self) -> str | None:
        return image_reference(self.provenance) or (self.key.split("@", 1)[1] if "@" in self.key else None)

    @property
    def image_id(self) -> str | None:
        return image_id(self.provenance)

    @property
    def server_version(self) -> str | None:
        return server_version(self.provenance)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds.from_mapping(self.settings.get("thresholds") or {})

    @property
    def require_concurrency(self) -> int | None:
        return self.settings.get("require_concurrency")

    def level(self, concurrency: int) -> LevelResult | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)

    @property
    def best(self) -> LevelResult | None:
        """The highest level that passed (with --capacity-search, levels it skipped are not in)."""
        usable = [lv for lv in self.levels if lv.usable]
        return max(usable, key=lambda lv: lv.concurrency) if usable else None

    @property
    def max_usable(self) -> int | None:
        return self.best.concurrency if self.best else None

    def as_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "profile": self.profile, "image": self.image, "settings": dict(self.settings),
            "provenance": self.provenance, "start_error": self.start_error, "chars_per_token": self.chars_per_token,
            "capacity": {"levels": [lv.as_dict() for lv in self.levels], "max_usable": self.max_usable,
                         "max_usable_aggregate_tok_s": best.stats.as_dict().get("aggregate_tok_s") if best else None,
                         "search": self.search},
            "mixed": self.mixed.as_dict() if self.mixed else None,
            "scenarios": [s.as_dict() for s in self.scenarios],
            "regression": {"baseline": self.baseline, "reference": self.reference,
                           "checks": [c.as_dict() for c in self.checks]}
            if self.checks or self.baseline else None,
        }

    @classmethod
    def from_dict(cls, key: str, data: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> TargetReport:
        capacity = data.get("capacity") or {}
        regression = data.get("regression") or {}
        return cls(
            key=key, settings=dict(data.get("settings") or settings or {}), provenance=data.get("provenance"),
            start_error=data.get("start_error"), chars_per_token=data.get("chars_per_token"),
            levels=tuple(LevelResult.from_dict(key, lv, CAPACITY) for lv in capacity.get("levels") or ()),
            search=capacity.get("search"),
            mixed=LevelResult.from_dict(key, data["mixed"], MIXED) if data.get("mixed") else None,
            scenarios=tuple(LevelResult.from_dict(key, s, s.get("workload") or "scenario")
                            for s in data.get("scenarios") or ()),
            checks=tuple(Check.from_dict(c) for c in regression.get("checks") or ()),
            baseline=regression.get("baseline"), reference=regression.get("reference"),
        )

    def but(self, **changes: Any) -> TargetReport:
        return replace(self, **changes)


@dataclass(frozen=True)
class RunReport:
    """One session: its targets in the order they ran, its status and its verdict."""

    targets: tuple[TargetReport, ...] = ()
    status: str = "running"               # running | complete | interrupted
    verdict: SessionVerdict | None = None
    started_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    host: str = field(default_factory=platform.node)
    command: tuple[str, ...] = field(default_factory=lambda: tuple(redact_command(sys.argv)))
    notes: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def target(self, key: str) -> TargetReport | None:
        return next((t for t in self.targets if t.key == key), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "tool": "pytest-glmperf", "plugin_version": _version(),
            "started_at": self.started_at, "finished_at": self.finished_at, "host": self.host,
            "python": platform.python_version(), "command": list(self.command), "status": self.status,
            "verdict": self.verdict.as_dict() if self.verdict else None, "notes": list(self.notes),
            "targets": {t.key: t.as_dict() for t in self.targets},
            "scaling": [row.as_dict() for row in scaling_rows(self.targets)] or None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """A saved report.json as the model; schema 1 kept settings beside the targets, by profile."""
        settings = data.get("settings") or {}
        targets = tuple(
            TargetReport.from_dict(key, entry or {}, settings.get(key) or settings.get(key.split("@", 1)[0]))
            for key, entry in (data.get("targets") or {}).items())
        verdict = data.get("verdict")
        return cls(targets=targets, status=data.get("status") or "complete",
                   verdict=SessionVerdict.from_dict(verdict) if isinstance(verdict, Mapping) else None,
                   started_at=data.get("started_at") or "", finished_at=data.get("finished_at"),
                   host=data.get("host") or "", command=tuple(data.get("command") or ()),
                   notes=tuple(data.get("notes") or ()), schema_version=int(data.get("schema_version") or 1))

    def but(self, **changes: Any) -> RunReport:
        return replace(self, **changes)


def reference_provenance(target: TargetReport, measured_at: str | None) -> dict[str, Any]:
    """What a reviewer needs to trust the other side of a comparison: which target, which build
    (server version, image and its digest) and when it was measured."""
    image = (target.provenance or {}).get("image")
    digests = image.get("repo_digests") if isinstance(image, Mapping) else None
    levels = [{key: lv.as_dict().get(key) for key in REFERENCE_LEVEL_KEYS} for lv in target.levels]
    return {"target": target.key, "server_version": target.server_version, "image": target.image,
            "image_id": target.image_id, "image_digest": digests[0] if digests else None,
            "measured_at": measured_at,
            "capacity": {"levels": levels, "max_usable": target.max_usable} if levels else None}


# What of the reference's levels a report keeps, to draw them under this run's (charts.capacity_chart).
REFERENCE_LEVEL_KEYS = ("concurrency", "status", "usable", "tok_s_p50", "ttft_p95_s", "gap_p95_s", "aggregate_tok_s")


def write_json(path: Path, report: RunReport) -> None:
    atomic_write(path, json.dumps(report.as_dict(), indent=2, default=str))


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` whole: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_report(path: Path) -> RunReport:
    return RunReport.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _version() -> str:
    from . import __version__
    return __version__


def levels_of(targets: Sequence[TargetReport]) -> list[int]:
    """Every capacity level measured on any of ``targets``, ascending."""
    return sorted({lv.concurrency for t in targets for lv in t.levels})
