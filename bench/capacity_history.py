"""The field's capacity verdicts end to end, on a server that had already run some levels.

    python bench/capacity_history.py [--profile sim-hicache,sim-mtp] [--seen-levels 1,2,4]
                                     [--rule prefill-first] [--time-scale 10] [--report-dir DIR]

docs/simulator.md ("Reading the calibration", point 4) reads the field's capacity outcome
(hicache usable up to 4, mtp only at 1) as SGLang's own prefill-first rule on texts the
server had seen before: an earlier, shorter run of the same script. ``bench/engine_replay.py
--seen-levels`` shows that in virtual time; this runs it through HTTP, the plugin's client and
its workloads. Per profile, one simulator (the profile's flags plus
``--sim-decode-interleave RULE``) serves two pytest sessions in a row:

1. ``perf_tests/test_capacity.py --warm-cache`` at the seen levels: every context and spike
   text of those levels sent once, then the levels run (the earlier run);
2. every level with ``--flush-cache false``: the cache as the earlier run left it.

It prints the second session's verdicts beside the brief's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from suite_vs_brief import DEFAULT_TIME_SCALE, capacity_table, run_suite  # noqa: E402

from pytest_glmperf.profiles import load_registry  # noqa: E402
from pytest_glmperf.server import SimulatedServer  # noqa: E402

LEVELS = "1,2,4,8,12"


def capacity_session(profile: str, base_url: str, levels: str, report_dir: Path, *cache: str) -> float:
    """One pytest session of the capacity test against the running simulator; its wall time."""
    return run_suite(report_dir, False, profile, extra=[f"--base-url={base_url}", f"--concurrency-levels={levels}",
                                                        *cache], tests="perf_tests/test_capacity.py")


def run_profile(name: str, seen: str, rule: str, time_scale: float, report_dir: Path) -> dict:
    """Start the simulator, run the seen levels warm, then every level as the cache stands."""
    profile = load_registry(ROOT / "compose" / "profiles.yaml").get(name)
    profile = dataclasses.replace(profile, server_args=(*profile.server_args, "--sim-decode-interleave", rule))
    server = SimulatedServer(profile, time_scale=time_scale, log_path=report_dir / name / "server.log").start()
    try:
        seen_s = capacity_session(name, server.base_url, seen, report_dir / name / "seen", "--warm-cache",
                                  f"--require-concurrency={max(int(c) for c in seen.split(','))}")
        run_s = capacity_session(name, server.base_url, LEVELS, report_dir / name / "history",
                                 "--flush-cache", "false")
    finally:
        server.stop()
    print(f"{name}: seen levels {seen} in {seen_s:.0f} s, then {LEVELS} in {run_s:.0f} s (wall)")
    return json.loads((report_dir / name / "history" / "latest" / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="sim-hicache,sim-mtp", help="simulated profile(s), comma-separated")
    parser.add_argument("--seen-levels", default="1,2,4", help="levels the server ran before (warm)")
    parser.add_argument("--rule", default="prefill-first", choices=("prefill-first", "mixed"),
                        help="--sim-decode-interleave for every profile")
    parser.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE)
    parser.add_argument("--report-dir", type=Path, default=ROOT / "perf-report" / "capacity-history")
    args = parser.parse_args()
    merged: dict = {"targets": {}}
    for name in args.profile.split(","):
        report = run_profile(name, args.seen_levels, args.rule, args.time_scale, args.report_dir)
        merged["targets"].update(report["targets"])
    print(f"\nCapacity after levels {args.seen_levels} were seen, rule {args.rule}, "
          f"time scale {args.time_scale:g}:\n")
    print(capacity_table(merged, names=(f"seen {args.seen_levels}",)))


if __name__ == "__main__":
    main()
