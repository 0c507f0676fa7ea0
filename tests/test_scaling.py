"""Scaling sweeps read off max usable per worker count: efficiency, its bounds, the claim."""

from __future__ import annotations

from pytest_glmperf.scaling import scaling_claims, scaling_rows
from pytest_glmperf.thresholds import Thresholds
from pytest_glmperf.verdict import Claims, decide
from tests.builders import level, target

LEVELS = [1, 2, 4, 8, 12]


def swept(workers: int, usable_to: int, levels: list[int] = LEVELS) -> object:
    key = f"fleet-x{workers}"
    found = [level(c, "pass" if c <= usable_to else "xfail") for c in levels]
    settings = {"levels": levels, "thresholds": Thresholds().as_dict(), "require_concurrency": 1,
                "fleet": {"of": "fleet", "workers": workers, "swept": True}}
    return target(key, found, settings=settings)


def test_efficiency_is_max_usable_over_n_times_one_worker():
    rows = scaling_rows([swept(2, 4), swept(1, 2), swept(4, 4)])
    assert [(r.workers, r.max_usable, r.efficiency, r.bound) for r in rows] == [
        (1, 2, 1.0, "exact"), (2, 4, 1.0, "exact"), (4, 4, 0.5, "exact")]
    failures, unsure = scaling_claims(rows, 0.8)
    assert unsure == [] and failures == [
        "fleet-x4 scaling efficiency 50% vs --min-scaling-efficiency 80% (max usable 4 with 4 workers)"]
    assert scaling_claims(rows, None) == ([], [])


def test_a_fleet_usable_at_its_top_level_gives_only_a_bound():
    rows = scaling_rows([swept(1, 2), swept(2, 12)])     # 2 workers usable at every level tested
    assert rows[1].bound == "at least" and rows[1].efficiency_text == ">= 300%"
    low = scaling_rows([swept(1, 2), swept(8, 12)])       # 12 / (8 x 2) = 75 %, but 12 is the top level
    failures, unsure = scaling_claims(low, 0.8)
    assert failures == [] and "only a lower bound; add higher levels" in unsure[0]
    capped_base = scaling_rows([swept(1, 12), swept(2, 8)])  # 1 worker capped: at most 33 %
    failures, unsure = scaling_claims(capped_base, 0.8)
    assert capped_base[1].bound == "at most" and failures and not unsure


def test_the_verdict_holds_the_sweep_to_the_minimum_efficiency():
    targets = [swept(1, 4), swept(2, 4, [1, 2, 4, 8, 12, 16])]
    claims = Claims(capacity=frozenset(t.key for t in targets))
    assert decide(targets, claims).status == "PASS"
    verdict = decide(targets, claims, min_scaling_efficiency=0.75)
    assert verdict.status == "FAIL" and "fleet-x2 scaling efficiency 50%" in verdict.failures[0]
