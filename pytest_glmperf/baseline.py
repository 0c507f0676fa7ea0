"""Stored runs: save a finished run as a named baseline, load one back by name or path.

Layout (docs/baselines.md)::

    <store>/                          default .glmperf/
      <name>/                         one saved baseline, e.g. "prod" or "v0.5.2"
        <profile>/<image-slug>/       one target of the run ("_" when it had no image)
          report.json                 the run's report.json, narrowed to this target
          records.jsonl               this target's request records
          meta.json                   name, target, profile, image, saved_at, host, git commit, version

Keyed by name first so that one ``--save-baseline NAME`` is one folder to commit, share or
delete, and keyed by target below it so that a later run of one profile or image finds its
own part. Saving a name again replaces only the targets that run measured (each target folder
is swapped in whole, so a crash never leaves half a baseline). Like pytest-benchmark's file
storage, a baseline is plain JSON on disk: readable, diffable, and loadable by path.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .records import RequestRecord, read_records

if TYPE_CHECKING:
    from .report import RunReport

DEFAULT_STORE = Path(".glmperf")
REPORT, RECORDS, META = "report.json", "records.jsonl", "meta.json"
LATEST = "latest"  # a report folder's pointer to its newest run
NO_IMAGE = "_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")

__all__ = ["DEFAULT_STORE", "Baseline", "SavedBaseline", "list_baselines", "load_baseline", "save_baseline"]


@dataclass(frozen=True)
class SavedBaseline:
    """One target of one saved baseline, as ``list_baselines`` shows it."""

    name: str
    target: str
    profile: str
    image: str | None
    saved_at: str | None
    git_commit: str | None
    plugin_version: str | None
    path: Path


@dataclass
class Baseline:
    """A run to compare against: its report (the typed model, all targets found) and its records."""

    ref: str
    report: RunReport
    records: list[RequestRecord] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)

    @property
    def targets(self) -> list[str]:
        return [t.key for t in self.report.targets]

    def described(self) -> str:
        """'prod (saved 2026-12-01T10:00:00+0000, git abc1234)' for reports and messages."""
        meta = self.meta[0] if self.meta else {}
        parts = [f"saved {meta['saved_at']}" if meta.get("saved_at") else "",
                 f"git {str(meta['git_commit'])[:7]}" if meta.get("git_commit") else ""]
        extra = ", ".join(p for p in parts if p)
        return f"{self.ref} ({extra})" if extra else self.ref


def split_target(key: str) -> tuple[str, str | None]:
    """'hicache@lmsysorg/sglang:v0.5.3' -> ('hicache', 'lmsysorg/sglang:v0.5.3'); no '@' -> (key, None)."""
    profile, sep, image = key.partition("@")
    return profile, (image if sep else None)


def target_image(key: str, target: dict[str, Any]) -> str | None:
    """The image a target ran: its provenance first (compose runs), else the part after '@'."""
    from .provenance import image_reference

    return image_reference(target.get("provenance")) or split_target(key)[1]


def slug(text: str) -> str:
    """A safe single path component: 'lmsysorg/sglang:v0.5.3' -> 'lmsysorg_sglang_v0.5.3'."""
    cleaned = _SLUG.sub("_", text).strip("._") or NO_IMAGE
    return cleaned[:120]


def save_baseline(report_dir: Path, name: str, store: Path = DEFAULT_STORE) -> Path:
    """Copy a finished run (report.json, records.jsonl) into ``store/name``; returns that folder.

    Each target of the run lands in its own ``<profile>/<image-slug>`` folder with a meta.json
    saying when, where and from which commit it was measured.
    """
    _check_name(name)
    report = _read_report(Path(report_dir) / REPORT, name)
    lines = _record_lines(Path(report_dir) / RECORDS)
    targets = report.get("targets") or {}
    if not targets:
        raise ConfigError(f"cannot save baseline {name!r}: {Path(report_dir) / REPORT} has no measured targets")
    root = Path(store) / name
    common = _common_meta(name, Path(report_dir))
    for key, target in targets.items():
        narrowed = {**report, "targets": {key: target}}
        mine = [line for line, profile in lines if profile == key or (len(targets) == 1 and not profile)]
        meta = {**common, "target": key, "profile": split_target(key)[0], "image": target_image(key, target),
                "report_status": report.get("status"), "records": len(mine)}
        folder = root / split_target(key)[0] / slug(target_image(key, target) or NO_IMAGE)
        _write_folder(folder, {REPORT: json.dumps(narrowed, indent=2, default=str),
                               RECORDS: "".join(line + "\n" for line in mine),
                               META: json.dumps(meta, indent=2)})
    return root


def load_baseline(ref: str, store: Path = DEFAULT_STORE) -> Baseline:
    """A baseline by saved NAME, or by PATH to a report.json, a run folder, or a --report-dir
    (its ``latest`` run).

    A path wins when it exists (a run folder such as ``perf-report/latest`` works directly). A
    name gathers every target saved under it. Unknown refs raise ConfigError listing names.
    """
    path = Path(ref)
    if (path / LATEST / REPORT).is_file():  # a --report-dir: its newest run
        path = path / LATEST
    if path.is_file() or (path / REPORT).is_file():
        return _load_path(ref, path if path.is_file() else path / REPORT)
    if path.is_dir() and any(path.glob(f"*/*/{REPORT}")):
        return _load_saved(ref, sorted(path.glob(f"*/*/{REPORT}")))
    if _NAME.match(ref):
        reports = sorted((Path(store) / ref).glob(f"*/*/{REPORT}"))
        if reports:
            return _load_saved(ref, reports)
    saved = sorted({item.name for item in list_baselines(store)})
    listing = ", ".join(saved) if saved else "none yet (save one with --save-baseline NAME)"
    raise ConfigError(f"baseline {ref!r} not found: no such file or folder, and no baseline of that name "
                      f"under {Path(store)}/; saved baselines: {listing}")


def list_baselines(store: Path = DEFAULT_STORE) -> list[SavedBaseline]:
    """Every saved target of every baseline under ``store``, sorted by name then target."""
    found = []
    for meta_path in sorted(Path(store).glob(f"*/*/*/{META}")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        found.append(SavedBaseline(
            name=meta_path.parents[2].name, target=meta.get("target", meta_path.parents[1].name),
            profile=meta.get("profile", meta_path.parents[1].name), image=meta.get("image"),
            saved_at=meta.get("saved_at"), git_commit=meta.get("git_commit"),
            plugin_version=meta.get("plugin_version"), path=meta_path.parent))
    return sorted(found, key=lambda item: (item.name, item.target))


# -- helpers ---------------------------------------------------------------------------------

def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"baseline name {name!r} is not usable as a folder name: use letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit (e.g. prod, v0.5.2)")


def _read_report(path: Path, ref: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"baseline {ref!r}: {path} does not exist (is the run's --report-dir right?)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"baseline {ref!r}: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "targets" not in data:
        raise ConfigError(f"baseline {ref!r}: {path} is not a pytest-glmperf report.json (no 'targets')")
    return data


def _record_lines(path: Path) -> list[tuple[str, str]]:
    """(raw line, profile) per record, so saved records stay byte-identical; torn lines dropped."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            kept.append((line, str(data.get("profile") or "")))
    return kept


def _write_folder(folder: Path, files: dict[str, str]) -> None:
    """Write files into a fresh sibling folder, then swap it in place of ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    for filename, text in files.items():
        (fresh / filename).write_text(text, encoding="utf-8")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(fresh, folder)
    shutil.rmtree(old, ignore_errors=True)


def _common_meta(name: str, report_dir: Path) -> dict[str, Any]:
    return {
        "name": name,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "git_commit": _git(report_dir, "rev-parse", "HEAD") or None,
        "git_dirty": _git_dirty(report_dir),
        "plugin_version": _plugin_version(),
        "source": str(report_dir.resolve()),
    }


def _git(cwd: Path, *args: str) -> str | None:
    """A git answer from the run's folder (or the current one); None outside a repository."""
    where = cwd if cwd.is_dir() else Path.cwd()
    try:
        done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()


def _git_dirty(cwd: Path) -> bool | None:
    """True when tracked files differ from the commit; None outside a repository."""
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def _plugin_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("pytest-glmperf")
    except PackageNotFoundError:
        from . import __version__
        return __version__


def _load_path(ref: str, report_path: Path) -> Baseline:
    from .report import RunReport

    data = _read_report(report_path, ref)
    try:
        report = RunReport.from_dict(data)
    except (TypeError, ValueError, KeyError, ConfigError) as exc:
        raise ConfigError(f"baseline {ref!r}: {report_path} is not a report this version can read: {exc}") from None
    records_path = report_path.parent / RECORDS
    records = read_records(records_path) if records_path.is_file() else []
    meta_path = report_path.parent / META
    meta = [json.loads(meta_path.read_text(encoding="utf-8"))] if meta_path.is_file() else []
    return Baseline(ref=ref, report=report, records=records, sources=[report_path], meta=meta)


def _load_saved(ref: str, report_paths: list[Path]) -> Baseline:
    """Merge the target folders of one saved name into one report and one record list."""
    parts = [_load_path(ref, path) for path in report_paths]
    merged = parts[0].report.but(targets=tuple(t for part in parts for t in part.report.targets))
    return Baseline(ref=ref, report=merged, records=[r for part in parts for r in part.records],
                    sources=[path for part in parts for path in part.sources],
                    meta=[m for part in parts for m in part.meta])
