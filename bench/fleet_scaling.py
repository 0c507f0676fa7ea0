"""Fleets behind SGLang's router on the simulator: scaling, routing policies, disaggregation.

    python bench/fleet_scaling.py [--workers 1,2,4] [--time-scale K] [--min-tok-s X]
                                  [--pd-time-scale K] [--skip-pd] [--only scaling|policies|pd]

Three runs of the real suite through the real ``sglang-router`` (pip install 'pytest-glmperf[router]'):

1. ``sim-router`` (hicache twins behind ``cache_aware``) at each worker count (``--workers``), the
   quick workload (20k-token contexts, 90 s levels) at levels 1..24 under a stricter tok/s bar
   (``--min-tok-s``, 35: at the default 4 one worker already holds 24 quick agents, so every
   count would sit at the top level and the efficiency would be unknown): max usable per count,
   the scaling efficiency, routing locality, wall time and how late the simulators delivered
   steps (the achieved time scale: every process shares this host's CPUs);
2. the mixed workload with two workers under ``cache_aware``, ``round_robin`` and
   ``power_of_two``: routing locality and cached-token share side by side;
3. prefill/decode disaggregation: ``sim-pd`` against the single server with the same flags
   (``sim-hicache``) on the default 100k-token workload, levels 1, 2, 4, 8, 12: max usable, gap
   P95 and TTFT P50 per level (what disaggregation buys, and its TTFT cost).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pytest_glmperf.render import pacing_windows  # noqa: E402
from pytest_glmperf.scrape import merge_pacing  # noqa: E402

QUICK = ["--quick", "--concurrency-levels=1,2,4,8,12,16,24", "--require-concurrency=1"]
POLICIES = ("cache_aware", "round_robin", "power_of_two")


def suite(out: Path, *args: str) -> tuple[dict, float]:
    command = [sys.executable, "-m", "pytest", *args, f"--report-dir={out}", "-q", "-p", "no:cacheprovider"]
    began = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
    return json.loads((out / "latest" / "report.json").read_text()), time.monotonic() - began


def verdict(level: dict) -> str:
    """usable, usable? (held the bar on too few requests to settle it) or no."""
    return "usable" if level["usable"] else "usable?" if level.get("status") == "inconclusive" else "no"


def lateness(target: dict) -> str:
    merged = merge_pacing(pacing_windows(target)) or {}
    return f"{merged.get('late_steps', 0):.0f} late, worst {merged.get('lag_max_since_start_s', 0):.2f} s"


def scaling(tmp: Path, workers: str, scale: str, min_tok_s: str) -> str:
    report, wall = suite(tmp / "scaling", "perf_tests/test_capacity.py", "perf_tests/test_mixed.py",
                         "--profile=sim-router", f"--workers={workers}", f"--time-scale={scale}",
                         f"--min-tok-s-p50={min_tok_s}", *QUICK)
    rows = [[r["workers"], r["max_usable"], f"{r['aggregate_tok_s'] or 0:.1f}",
             "–" if r["efficiency"] is None else f"{r['efficiency']:.0%} ({r['bound']})",
             "–" if r["locality"] is None else f"{r['locality']:.0%}", lateness(report["targets"][r["target"]])]
            for r in report["scaling"] or []]
    table = tabulate(rows, headers=["workers", "max usable", "agg tok/s", "efficiency", "locality",
                                    "simulator steps >0.1 s late"], tablefmt="github")
    return (f"{table}\n\nQuick workload, levels 1..24, bar tok/s P50 >= {min_tok_s}, time scale {scale}, "
            f"{wall:.0f} s wall for all counts.")


def policies(tmp: Path, scale: str) -> str:
    registry = tmp / "policies.yaml"
    registry.write_text(json.dumps({"profiles": {
        f"fleet-{p}": {"kind": "router", "require_concurrency": 1, "router_args": ["--policy", p],
                       "workers": ["sim-hicache", "sim-hicache"]} for p in POLICIES}}))
    rows = []
    for policy in POLICIES:
        report, wall = suite(tmp / policy, "perf_tests/test_mixed.py", f"--profiles-file={registry}",
                             f"--profile=fleet-{policy}", f"--time-scale={scale}", "--quick")
        mixed = report["targets"][f"fleet-{policy}"]["mixed"] or {}
        routing = mixed.get("routing") or {}
        rows.append([policy, routing.get("follow_ups"), f"{routing.get('locality') or 0:.0%}",
                     f"{routing.get('cached_share') or 0:.0%}", f"{mixed.get('ttft_p50_s') or 0:.2f}",
                     f"{mixed.get('client_tok_s') or 0:.1f}", f"{wall:.0f}"])
    return tabulate(rows, headers=["policy (2 workers)", "follow-ups", "locality", "cached-token share",
                                   "TTFT P50 s", "client tok/s", "wall s"], tablefmt="github")


def disaggregation(tmp: Path, scale: str) -> str:
    report, wall = suite(tmp / "pd", "perf_tests/test_capacity.py", "--profile=sim-hicache,sim-pd",
                         f"--time-scale={scale}", "--require-concurrency=1", "--max-level-duration=240")
    rows = []
    for key in ("sim-hicache", "sim-pd"):
        target = report["targets"][key]
        cells = [f"{verdict(lv)} (gap {lv['gap_p95_s'] or 0:.1f} s, TTFT {lv['ttft_p50_s'] or 0:.1f} s)"
                 for lv in target["capacity"]["levels"]]
        rows.append([key, *cells, target["capacity"]["max_usable"], lateness(target)])
    levels = [f"c={lv['concurrency']}" for lv in report["targets"]["sim-pd"]["capacity"]["levels"]]
    table = tabulate(rows, headers=["target", *levels, "max usable", "simulator lateness"], tablefmt="github")
    return (f"{table}\n\nDefault workload (100k-token contexts, fixed 240 s levels), time scale {scale}, "
            f"{wall:.0f} s wall. Cell: verdict (gap P95, TTFT P50); usable? = held the bar on too few requests.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--time-scale", default="5", help="model seconds per wall second (default 5: "
                        "four simulators, the router and the client share this host's CPUs)")
    parser.add_argument("--pd-time-scale", default="10", help="for the two-process disaggregation runs")
    parser.add_argument("--min-tok-s", default="35", help="the scaling run's tok/s P50 bar")
    parser.add_argument("--only", choices=("scaling", "policies", "pd"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="glmperf-fleet-") as tmp:
        if args.only in (None, "scaling"):
            print("## Scaling with workers (sim-router)\n\n"
                  + scaling(Path(tmp), args.workers, args.time_scale, args.min_tok_s), flush=True)
        if args.only in (None, "policies"):
            print("\n## Routing policies, mixed workload\n\n" + policies(Path(tmp), args.time_scale), flush=True)
        if args.only in (None, "pd") and not args.skip_pd:
            print("\n## Prefill/decode disaggregation\n\n" + disaggregation(Path(tmp), args.pd_time_scale),
                  flush=True)


if __name__ == "__main__":
    main()
