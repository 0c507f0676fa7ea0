"""Full capacity sweep versus --capacity-search, on a simulated profile.

    python bench/capacity_search.py [--profile sim-hicache] [--quick]

Runs the capacity suite twice through pytest (every level to its full duration, then the
bisection with early stops) and prints both answers (max usable concurrency) and both server
times (model seconds the server was under load, drains included). Target: the same answer
in at most 40 % of the full sweep's server time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(profile: str, report_dir: Path, extra: list[str]) -> tuple[dict, float]:
    command = [sys.executable, "-m", "pytest", "perf_tests/test_capacity.py", f"--profile={profile}",
               f"--report-dir={report_dir}", "-q", "-p", "no:cacheprovider", *extra]
    began = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - began
    return json.loads((report_dir / "latest" / "report.json").read_text())["targets"][profile]["capacity"], wall


def server_time(capacity: dict) -> float:
    return sum(level.get("duration_s") or 0.0 for level in capacity["levels"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="sim-hicache")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    extra = ["--quick"] if args.quick else []
    out = ROOT / "perf-report" / "bench-capacity-search"
    full, full_wall = run(args.profile, out / "full", extra)
    search, search_wall = run(args.profile, out / "search", [*extra, "--capacity-search"])
    full_s, search_s = server_time(full), server_time(search)
    print(f"profile {args.profile}{' (quick)' if args.quick else ''}")
    print(f"full sweep     : max usable {full['max_usable']}, server time {full_s:7.0f} s, "
          f"levels {[lv['concurrency'] for lv in full['levels']]}, wall {full_wall:.0f} s")
    print(f"capacity search: max usable {search['max_usable']}, server time {search_s:7.0f} s, "
          f"levels {[lv['concurrency'] for lv in search['levels']]}"
          f" (cut short: {[lv['concurrency'] for lv in search['levels'] if lv.get('cut_short')]}), "
          f"wall {search_wall:.0f} s")
    ratio = search_s / full_s if full_s else float("nan")
    same = full["max_usable"] == search["max_usable"]
    print(f"search / full server time: {ratio:.0%} (target <= 40 %) · same answer: {same}")


if __name__ == "__main__":
    main()
