"""Run the full seed-shaped suite on both simulated profiles and compare with the field report.

    python bench/suite_vs_brief.py [--quick] [--report-dir DIR] [--write-docs]
                                   [--profile sim-mtp] [--time-scale 30] [-- PYTEST_ARGS...]

Runs ``pytest perf_tests --profile sim-hicache,sim-mtp`` (the twins of the compose profiles;
5 levels x 240 s, extended while short of requests, + 600 s mixed per profile, in model time,
each window on a flushed cache), then the same suite in the field's mode (``--field-mode``: the
texts of levels 1, 2 and 4 and of the mixed run seen before, no flush: how the published results
were measured, docs/simulator.md), and prints the brief's mixed table beside both, the cache
counter deltas, and the per-level capacity verdicts beside the published ones, with the wall
time and achieved time scale. ``--no-field`` skips the field-mode run. ``--write-docs`` replaces the table
between the markers in docs/simulator.md (only from a full run of both profiles at the
default time scale). ``--profile`` and ``--time-scale`` are for quick iteration; arguments
after ``--`` go to pytest unchanged.
``--no-run`` re-prints the tables of an existing report.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from engine_replay import BRIEF_MIXED_RUN_S, TP_SIZE, little_reading  # noqa: E402

from pytest_glmperf.render import pacing_windows  # noqa: E402
from pytest_glmperf.scrape import merge_pacing  # noqa: E402
from pytest_glmperf.settings import BY_KEY  # noqa: E402
from pytest_glmperf.simulator.driver import LAG_WARN_S  # noqa: E402

BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"

# The field report (8x H200, 2026-06-07): mixed workload and capacity outcome.
BRIEF_MIXED = {
    "sim-hicache": {"client_tok_s": 119.28, "server_gen_throughput_mean": 118.89, "queue_mean": 1.94,
                    "queue_p95": 4.00, "ttft_p50_s": 23.51, "ttft_p95_s": 41.38, "gap_p50_s": 0.36,
                    "gap_p95_s": 0.61},
    "sim-mtp": {"client_tok_s": 168.96, "server_gen_throughput_mean": 319.17, "queue_mean": 0.49,
                "queue_p95": 2.00, "ttft_p50_s": 9.09, "ttft_p95_s": 31.78, "gap_p50_s": 11.95,
                "gap_p95_s": 12.84},
}
BRIEF_CACHE = {
    "sim-hicache": {"cached_device_tokens": 3_456_640, "cached_host_tokens": 2_900_096,
                    "evicted_tokens": 23_949_824, "load_back_tokens": 23_200_768, "host_used_after_tokens": 885_888},
    "sim-mtp": {"cached_device_tokens": 4_812_160, "cached_host_tokens": 0, "evicted_tokens": 17_915_904,
                "load_back_tokens": 0, "host_used_after_tokens": 0},
}
# What the field's device pool gained over its mixed run (computed + answers + loaded back -
# evicted, logical tokens; SGLang also caches the answers). The brief has no prompt-token count:
# ~100.8k per request, 64 requests for hicache (its 782.8 s run), 50-54 answers + 19 spikes for
# mtp (a 613-662 s run at 168.96 tok/s). docs/simulator.md, "Calibration in virtual time".
BRIEF_DEVICE_GAIN = {"sim-hicache": "~96,000", "sim-mtp": "~9,000-420,000"}
BRIEF_MAX_USABLE = {"sim-hicache": 4, "sim-mtp": 1}
BRIEF_LEVEL_TOK_S = {"sim-hicache": {4: 110.39, 12: 134.70}, "sim-mtp": {1: 44.80}}  # aggregate output tok/s
TARGETED = ("client_tok_s", "ttft_p50_s", "ttft_p95_s", "gap_p50_s", "gap_p95_s")


DEFAULT_TIME_SCALE = BY_KEY["time_scale"].default


def run_suite(report_dir: Path, quick: bool, profiles: str = "sim-hicache,sim-mtp",
              time_scale: float | None = None, extra: list[str] | None = None, tests: str = "perf_tests") -> float:
    command = [sys.executable, "-m", "pytest", tests, "--profile", profiles,
               f"--report-dir={report_dir}", "-q", "-p", "no:cacheprovider", "-rxX"]
    if quick:
        command.append("--quick")
    if time_scale is not None:
        command.append(f"--time-scale={time_scale:g}")
    command += extra or []
    began = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=False)
    return time.monotonic() - began


def session_wall(report: dict) -> float | None:
    """A finished report's session time (its start and finish stamps), for --no-run."""
    from datetime import datetime

    try:
        stamps = [datetime.strptime(report[key], "%Y-%m-%dT%H:%M:%S%z") for key in ("started_at", "finished_at")]
    except (KeyError, TypeError, ValueError):
        return None
    return (stamps[1] - stamps[0]).total_seconds()


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}"


def _mixed(report: dict | None, profile: str) -> dict:
    return ((report or {}).get("targets", {}).get(profile) or {}).get("mixed") or {}


def _delta(got: float | None, want: float) -> tuple[str, float | None]:
    off = None if got is None or not want else (got - want) / want
    return ("–" if off is None else f"{off:+.0%}"), off


def mixed_table(report: dict, field_run: dict | None = None) -> str:
    """The brief's mixed table beside the suite's (flushed) run and, if given, the field-mode run."""
    rows = []
    for profile, brief in BRIEF_MIXED.items():
        if profile not in report["targets"]:
            continue
        for key, want in brief.items():
            row = [profile, key, fmt(want)]
            for run in (report, field_run) if field_run else (report,):
                got = _mixed(run, profile).get(key)
                text, off = _delta(got, want)
                flag = "" if key not in TARGETED else ("ok" if off is not None and abs(off) <= 0.25 else "OFF")
                row += [fmt(got), text, flag]
            rows.append(row)
    headers = ["profile", "metric", "brief", "flushed", "delta", "±25 %"]
    if field_run:
        headers += ["field", "delta", "±25 %"]
    return tabulate(rows, headers=headers, tablefmt="github")


def cache_table(report: dict, field_run: dict | None = None) -> str:
    rows = []
    for profile, brief in BRIEF_CACHE.items():
        if profile not in report["targets"]:
            continue
        runs = (report, field_run) if field_run else (report,)
        rows += [[profile, key, f"{want:,}"] + [fmt((_mixed(run, profile).get("cache") or {}).get(key)) for run in runs]
                 for key, want in brief.items()]
        rows.append([profile, "device_gain_tokens", BRIEF_DEVICE_GAIN[profile]]
                    + [fmt(device_gain(_mixed(run, profile).get("cache") or {})) for run in runs])
    headers = ["profile", "counter delta", "brief", "flushed"] + (["field"] if field_run else [])
    return tabulate(rows, headers=headers, tablefmt="github")


def device_gain(cache: dict) -> float | None:
    """Tokens the simulator's device pool gained over the run: prefilled + answers + loaded
    back - evicted.

    Whatever is prefilled, answered (cache_finished_req keeps it) or loaded back stays until
    evicted, so a run that starts on a flushed cache ends up near a full pool, and one that
    starts warm (pool already full) near zero.
    """
    if cache.get("prompt_tokens") is None or cache.get("evicted_tokens") is None:
        return None
    computed = cache["prompt_tokens"] - (cache.get("cached_total_tokens") or 0)
    computed += cache.get("generation_tokens") or 0
    return computed + ((cache.get("load_back_tokens") or 0) - cache["evicted_tokens"]) / TP_SIZE


def capacity_table(report: dict, field_run: dict | None = None, names: tuple[str, ...] = ("flushed", "field")) -> str:
    """Per profile and run: the highest usable level, each level's verdict and aggregate tok/s,
    and the brief's aggregate tok/s where it gives one."""
    rows = []
    for profile, want in BRIEF_MAX_USABLE.items():
        for name, run in zip(names, (report, field_run), strict=False):
            if run is None or profile not in run["targets"]:
                continue
            capacity = (run["targets"].get(profile) or {}).get("capacity") or {}
            if not capacity.get("levels"):
                continue
            verdicts = []
            for lv in capacity.get("levels", []):
                verdict = "usable" if lv["usable"] else "usable?" if lv.get("status") == "inconclusive" else "no"
                text = f"c{lv['concurrency']}:{verdict} ({fmt(lv.get('aggregate_tok_s'))}"
                brief_tok_s = BRIEF_LEVEL_TOK_S[profile].get(lv["concurrency"])
                verdicts.append(text + (f" vs {brief_tok_s:g})" if brief_tok_s else ")"))
            got = capacity.get("max_usable")
            rows.append([profile, name, want, got, "ok" if got == want else "OFF", ", ".join(verdicts)])
    return tabulate(rows, headers=["profile", "run", "brief max usable", "simulator", "", "levels (tok/s vs brief)"],
                    tablefmt="github")


def little_table(report: dict, field_run: dict | None = None) -> str:
    """Each mixed run read through Little's law (engine_replay.little_reading): how many
    answers decoded at a time and how fast, beside the gauge's num_running_reqs mean and
    the server's measured queue time (sglang:queue_time_seconds), which checks the
    reading's mean wait, the figure it gives for the field's runs."""
    rows = []
    for profile, brief in BRIEF_MIXED.items():
        if profile not in report["targets"]:
            continue
        runs = [("brief", brief["client_tok_s"], brief["queue_mean"], BRIEF_MIXED_RUN_S.get(profile), None, None)]
        for name, run in (("flushed", report), ("field", field_run)):
            mixed = _mixed(run, profile) if run else {}
            if mixed.get("client_tok_s") is not None:
                runs.append((name, mixed["client_tok_s"], mixed["queue_mean"], mixed["duration_s"],
                             mixed.get("running_mean"), mixed.get("server_queue_mean_s")))
        for name, tok_s, queue, run_s, gauge, measured in runs:
            if run_s is None:
                continue
            reading = little_reading(tok_s, queue, run_s)
            rows.append([profile, name, fmt(reading["wait_s"]), fmt(measured), fmt(reading["long_streams"]),
                         fmt(reading["per_stream_tok_s"]), fmt(gauge)])
    return tabulate(rows, headers=["profile", "mixed run", "mean wait (s)", "server queue mean (s)",
                                   "decoding streams", "per-stream tok/s", "gauge running mean"],
                    tablefmt="github")


def lag_note(report_dir: Path, report: dict, scale: float) -> str:
    """The achieved time scale: the pacing loop keeps absolute deadlines, so the set scale holds
    over a run and only steps delivered late stretch timings. Counted from each window's
    ``simulator`` block in report.json (older reports: the rate-limited server.log warnings)."""
    notes = []
    for profile, target in report["targets"].items():
        if merged := merge_pacing(pacing_windows(target)):
            notes.append(f"{profile}: {merged['late_steps']:.0f} steps late, worst "
                         f"{merged['lag_max_since_start_s']:.2f} model s")
            continue
        log = report_dir / profile / "server.log"
        lines = [ln for ln in log.read_text(errors="replace").splitlines()
                 if "behind wall time" in ln] if log.exists() else []
        worst = max((float(m.group(1)) for ln in lines
                     if (m := re.search(r"\(max ([0-9.]+) s", ln))), default=0.0)
        notes.append(f"{profile}: {len(lines)} lag warnings, worst {worst:.2f} model s")
    return (f"Achieved time scale: {scale:g} on absolute deadlines; steps delivered more than "
            f"{LAG_WARN_S:g} model s late: " + "; ".join(notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report-dir", type=Path, default=ROOT / "perf-report" / "calibration")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--no-run", action="store_true", help="only print tables from an existing report")
    parser.add_argument("--profile", default="sim-hicache,sim-mtp",
                        help="simulated profile(s), comma-separated (default both)")
    parser.add_argument("--time-scale", type=float, default=None,
                        help=f"simulator time scale (default the plugin's, {DEFAULT_TIME_SCALE:g})")
    parser.add_argument("--no-field", action="store_true", help="skip the --field-mode run")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args()
    if args.write_docs and (args.quick or args.profile != "sim-hicache,sim-mtp"
                            or args.time_scale not in (None, DEFAULT_TIME_SCALE)):
        parser.error("--write-docs needs the full run: both profiles, default time scale, no --quick")
    field_dir = args.report_dir / "field"
    wall = field_wall = None
    if not args.no_run:
        wall = run_suite(args.report_dir, args.quick, args.profile, args.time_scale, args.pytest_args)
        if not args.no_field:
            field_wall = run_suite(field_dir, args.quick, args.profile, args.time_scale,
                                   ["--field-mode", *args.pytest_args])
    report = json.loads((args.report_dir / "latest" / "report.json").read_text())
    wall = wall or session_wall(report)
    field_file = field_dir / "latest" / "report.json"
    field = json.loads(field_file.read_text()) if not args.no_field and field_file.exists() else None
    field_wall = field_wall or (session_wall(field) if field else None)
    scale = next(iter(report["targets"].values()))["settings"]["time_scale"]
    timing = f" · wall {wall:.0f} s for both profiles" if wall else ""
    timing += f" + {field_wall:.0f} s in the field's mode" if field_wall else ""
    text = "\n\n".join([
        f"Suite: `python bench/suite_vs_brief.py{' --quick' if args.quick else ''}` · time scale {scale:g}" + timing,
        mixed_table(report, field), little_table(report, field), cache_table(report, field),
        capacity_table(report, field),
        lag_note(args.report_dir / "latest", report, scale)])
    print(text)
    if args.write_docs:
        doc = ROOT / "docs" / "simulator.md"
        body = doc.read_text()
        if BEGIN in body and END in body:
            head, rest = body.split(BEGIN, 1)
            doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")
        else:
            doc.write_text(f"{body.rstrip()}\n\n## Calibration against the field report\n\n{BEGIN}\n{text}\n{END}\n")


if __name__ == "__main__":
    main()
