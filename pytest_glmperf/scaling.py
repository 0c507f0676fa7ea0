"""Scaling sweeps: one router profile at several worker counts (``--workers 1,2,4``).

Each count is its own target (``sim-router-x2``: the profile's first worker, twice, behind the
same router flags). What a buyer of the next servers asks is read off their max usable levels:
scaling efficiency at N workers = max usable at N / (N x max usable at 1), 1.0 for perfect
scaling (docs/scale.md). ``--min-scaling-efficiency`` turns it into a claim of the verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import TargetReport

__all__ = ["ScalingRow", "scaled_name", "scaling_claims", "scaling_rows"]


def scaled_name(profile: str, workers: int) -> str:
    """The target name of ``profile`` run with ``workers`` workers: 'sim-router-x2'."""
    return f"{profile}-x{workers}"


@dataclass(frozen=True)
class ScalingRow:
    """One worker count of one fleet, and how far it scales from one worker."""

    fleet: str                      # the router profile swept
    workers: int
    target: str
    max_usable: int | None
    aggregate_tok_s: float | None   # at the max usable level
    efficiency: float | None        # max usable / (workers x max usable at 1); None without a 1-worker answer
    locality: float | None          # the mixed run's follow-ups found cached where they landed
    # A max usable at the top level tested is only a lower bound: efficiency is then at least
    # (this count capped), at most (1 worker capped) or unknown (both).
    bound: str = "exact"            # exact | at least | at most | unknown

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def efficiency_text(self) -> str:
        if self.efficiency is None:
            return "–"
        return {"at least": ">= ", "at most": "<= ", "unknown": "? "}.get(self.bound, "") + f"{self.efficiency:.0%}"


def scaling_rows(targets: Sequence[TargetReport]) -> list[ScalingRow]:
    """A row per swept target (settings ``fleet`` with ``swept``), by fleet then worker count."""
    swept = [(t, t.settings["fleet"]) for t in targets if (t.settings.get("fleet") or {}).get("swept")]
    one = {fleet["of"]: t for t, fleet in swept if fleet["workers"] == 1}
    rows = []
    for target, fleet in sorted(swept, key=lambda item: (item[1]["of"], item[1]["workers"])):
        base = one.get(fleet["of"])
        best = target.max_usable
        efficiency = (best or 0) / (fleet["workers"] * base.max_usable) if base and base.max_usable else None
        bound = {(False, False): "exact", (True, False): "at least", (False, True): "at most",
                 (True, True): "unknown"}[(_capped(target), bool(base) and _capped(base) and fleet["workers"] > 1)]
        routing = (target.mixed.details.get("routing") if target.mixed else None) or {}
        aggregate = target.best.stats.as_dict().get("aggregate_tok_s") if target.best else None
        rows.append(ScalingRow(fleet["of"], fleet["workers"], target.key, best, aggregate, efficiency,
                               routing.get("locality"), bound if fleet["workers"] > 1 else "exact"))
    return rows


def _capped(target: TargetReport) -> bool:
    """Usable at the highest level it was run at: its real capacity may lie above."""
    levels = target.settings.get("levels") or [lv.concurrency for lv in target.levels]
    return target.max_usable is not None and target.max_usable >= max(levels, default=0)


def scaling_claims(rows: Sequence[ScalingRow], min_efficiency: float | None) -> tuple[list[str], list[str]]:
    """(failures, inconclusive) of ``--min-scaling-efficiency`` over every swept count above one."""
    if min_efficiency is None:
        return [], []
    failures, unsure = [], []
    for row in rows:
        if row.workers == 1:
            continue
        where = f"{row.target} scaling efficiency"
        if row.efficiency is None:
            unsure.append(f"{where}: no usable level with 1 worker of {row.fleet} to scale from")
            continue
        below = row.efficiency < min_efficiency
        settled = row.bound == "exact" or (row.bound == "at most" and below) or (row.bound == "at least" and not below)
        text = (f"{where} {row.efficiency_text} vs --min-scaling-efficiency {min_efficiency:.0%} (max usable "
                f"{row.max_usable if row.max_usable is not None else '–'} with {row.workers} workers)")
        if not settled:
            unsure.append(f"{text}: a max usable at the top level tested is only a lower bound; add higher levels")
        elif below:
            failures.append(text)
    return failures, unsure
