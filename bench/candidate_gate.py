"""Candidate against prod: two full sweeps versus one gate session, same decision?

    python bench/candidate_gate.py [--profile sim-hicache] [--candidate-args "--sim-decode-floor-us 350"]
                                   [--time-scale 20] [--quick] [-- extra pytest options]

Starts two simulators with a simulated profile's flags on loopback: "prod" and a "candidate"
with extra flags (by default a decode step 40 % slower, as a new image's kernel regression
would make it; ``--candidate-args ""`` makes it a repeat of prod). Both are flushed before
every window (``--flush-cache=true``), as the default suite does with servers it starts. Then

1. the two full sweeps a user would otherwise run: every level and the mixed workload on prod
   (saved as a baseline), then on the candidate compared with it (``--compare``);
2. the gate: one session, ``--base-url prod=… --base-url candidate=… --capacity-search``, the
   candidate compared with prod as it is measured, its search starting at prod's answer.

Prints each way's decision (per server: max usable, mixed verdict; the comparison's outcome;
the session verdict) and its server time (model seconds of load, summed over every capacity
window and mixed run), and whether the decisions match.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SUITE = ["perf_tests/test_capacity.py", "perf_tests/test_mixed.py", "perf_tests/test_regression.py"]


def start_simulator(port: int, profile: str, extra: list[str], time_scale: float, log: Path) -> subprocess.Popen:
    flags = yaml.safe_load((ROOT / "compose" / "profiles.yaml").read_text())["profiles"][profile]["server_args"]
    command = [sys.executable, "-m", "pytest_glmperf.simulator", *flags, *extra, "--time-scale", str(time_scale),
               "--host", "127.0.0.1", "--port", str(port)]  # last: a twin's flags say 0.0.0.0:8000
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    import httpx

    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health_generate", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"simulator on port {port} did not start; see {log}")


def pytest_run(out: Path, profile: str, *args: str) -> tuple[dict, float]:
    command = [sys.executable, "-m", "pytest", *SUITE, f"--report-dir={out}", "-q", "-p", "no:cacheprovider",
               f"--profile={profile}", "--flush-cache=true", *args]
    began = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
    return json.loads((out / "latest" / "report.json").read_text()), time.monotonic() - began


def server_time(report: dict) -> float:
    total = 0.0
    for target in report["targets"].values():
        total += sum(lv.get("duration_s") or 0.0 for lv in target["capacity"]["levels"])
        total += (target.get("mixed") or {}).get("duration_s") or 0.0
    return total


def decision(reports: dict[str, dict]) -> dict:
    """Per server: max usable and the mixed verdict; the comparison's outcome; the verdicts."""
    found: dict = {}
    for name, report in reports.items():
        target = report["targets"][name]
        found[name] = (target["capacity"].get("max_usable"), (target.get("mixed") or {}).get("status"))
    candidate = reports["candidate"]["targets"]["candidate"]["regression"]["checks"]
    outcomes = {c["outcome"] for c in candidate if c["outcome"] not in ("warning", "skipped")}
    found["comparison"] = "fail" if "fail" in outcomes else ("pass" if outcomes == {"pass"} else "inconclusive")
    found["verdict"] = reports["candidate"]["verdict"]["status"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="sim-hicache", help="simulated profile whose flags both servers take")
    parser.add_argument("--candidate-args", default="--sim-decode-floor-us 350",
                        help="the candidate's extra simulator flags ('' for a repeat of prod)")
    parser.add_argument("--time-scale", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("pytest_args", nargs="*", help="more suite options for all three runs, after --")
    args = parser.parse_args()
    extra = (["--quick"] if args.quick else []) + args.pytest_args
    with tempfile.TemporaryDirectory(prefix="glmperf-gate-") as tmp:
        work = Path(tmp)
        prod = start_simulator(31101, args.profile, [], args.time_scale, work / "prod.log")
        cand = start_simulator(31102, args.profile, args.candidate_args.split(), args.time_scale,
                               work / "candidate.log")
        urls = {"prod": "http://127.0.0.1:31101", "candidate": "http://127.0.0.1:31102"}
        try:
            full_prod, wall_a = pytest_run(work / "full-prod", args.profile, f"--base-url=prod={urls['prod']}",
                                           *extra, "--save-baseline=prod", f"--baseline-dir={work / 'store'}")
            full_cand, wall_b = pytest_run(work / "full-cand", args.profile,
                                           f"--base-url=candidate={urls['candidate']}", *extra, "--compare=prod",
                                           f"--baseline-dir={work / 'store'}")
            gate, gate_wall = pytest_run(work / "gate", args.profile, f"--base-url=prod={urls['prod']}",
                                         f"--base-url=candidate={urls['candidate']}", "--capacity-search", *extra)
        finally:
            for process in (prod, cand):
                process.terminate()
                process.wait(30)
    full = decision({"prod": full_prod, "candidate": full_cand})
    fast = decision({"prod": gate, "candidate": gate})
    full_s, gate_s = server_time(full_prod) + server_time(full_cand), server_time(gate)
    print(f"profile {args.profile}, candidate {args.candidate_args or '(a repeat of prod)'}, "
          f"time scale {args.time_scale:g}, suite options {' '.join(extra) or '(defaults)'}")
    print(f"two full sweeps: {full}  server time {full_s:6.0f} s (wall {wall_a + wall_b:.0f} s)")
    print(f"gate session   : {fast}  server time {gate_s:6.0f} s (wall {gate_wall:.0f} s)")
    print(f"gate / two full sweeps: {gate_s / full_s:.0%} of the server time · same decision: {full == fast}")


if __name__ == "__main__":
    main()
