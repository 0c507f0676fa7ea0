"""What the simulator tells a HiCache user, in one table (the README's "What the simulator knows").

    python bench/simulator_story.py [--time-scale K] [--markdown]

Runs the capacity suite (``perf_tests/test_capacity.py``, default levels and windows) three
ways and prints, per level, usable or not with the gap P95 that decides it:

1. ``sim-hicache`` (the twin of the ``hicache`` compose profile) on fresh repositories, the
   suite's default start (each window flushed, fresh 100k-token spikes);
2. the same twin in the field's mode (``--field-mode``: levels 1, 2, 4 seen before, never
   flushed), the way the published capacity verdicts were measured;
3. the what-if ``sim-hicache-mixed-chunk`` (the twin plus ``--enable-mixed-chunk``) on fresh
   repositories.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pytest_glmperf.settings import BY_KEY  # noqa: E402

WAYS = (
    ("twin `sim-hicache`, fresh repositories", "sim-hicache", []),
    ("twin `sim-hicache`, field's mode (`--field-mode`)", "sim-hicache", ["--field-mode"]),
    ("what-if `sim-hicache-mixed-chunk`, fresh repositories", "sim-hicache-mixed-chunk", []),
)


def capacity(profile: str, extra: list[str], time_scale: float, out: Path) -> tuple[dict, float]:
    command = [sys.executable, "-m", "pytest", "perf_tests/test_capacity.py", f"--profile={profile}",
               f"--report-dir={out}", f"--time-scale={time_scale:g}", "-q", "-p", "no:cacheprovider", *extra]
    began = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
    report = json.loads((out / "latest" / "report.json").read_text())
    return report["targets"][profile]["capacity"], time.monotonic() - began


def cell(level: dict) -> str:
    gap = level.get("gap_p95_s")
    mark = {"pass": "usable", "inconclusive": "usable?"}.get(level["status"], "no")
    return f"{mark} ({gap:.1f} s)" if gap is not None else mark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=BY_KEY["time_scale"].default)
    args = parser.parse_args()
    rows, walls = [], []
    with tempfile.TemporaryDirectory(prefix="glmperf-story-") as tmp:
        for n, (name, profile, extra) in enumerate(WAYS):
            found, wall = capacity(profile, extra, args.time_scale, Path(tmp) / str(n))
            levels = {lv["concurrency"]: lv for lv in found["levels"]}
            rows.append((name, levels, found.get("max_usable")))
            walls.append(wall)
    concurrency = sorted({c for _, levels, _ in rows for c in levels})
    print("| server, start | " + " | ".join(f"c={c}" for c in concurrency) + " | max usable |")
    print("|---|" + "---|" * (len(concurrency) + 1))
    for name, levels, best in rows:
        cells = [cell(levels[c]) if c in levels else "–" for c in concurrency]
        print(f"| {name} | " + " | ".join(cells) + f" | {best if best is not None else '–'} |")
    print("\nCell: verdict (gap P95, bar 8 s); 'usable?' = held the bar on too few requests to settle it. "
          f"Time scale {args.time_scale:g}, {sum(walls):.0f} s wall.")


if __name__ == "__main__":
    main()
