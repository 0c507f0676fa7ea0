"""Options: declared once, read once, validated into frozen settings.

Every option has three spellings: the command line flag (``--level-duration``), the ini key
(``glmperf_level_duration`` in ``[tool.pytest.ini_options]`` or pytest.ini) and the profile
YAML key (``level_duration`` under a profile's ``options:``). Precedence, highest first:
command line, ini, the ``--quick`` preset, the profile's options, the built-in default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .profiles import DEFAULT_REGISTRY, ServerProfile
from .thresholds import Thresholds, parse_threshold
from .workloads import SPIKE_MODES, CapacitySpec, MixedSpec


def parse_levels(key: str, value: Any) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); sorted, unique, positive, or a ConfigError naming the key."""
    levels = _sorted_list(key, value, int, "integers")
    if not levels or levels[0] < 1:
        raise ConfigError(f"{key} needs at least one level and all levels >= 1, got {value!r}")
    return levels


def parse_percentiles(key: str, value: Any) -> tuple[float, ...]:
    """'50,95,99' -> (50.0, 95.0, 99.0); each in (0, 100), or a ConfigError naming the key."""
    found = _sorted_list(key, value, float, "numbers")
    if not found or not all(0 < p < 100 for p in found):
        raise ConfigError(f"{key} needs percentiles between 0 and 100 (exclusive), got {value!r}")
    return found


def _sorted_list(key: str, value: Any, kind: type, what: str) -> tuple[Any, ...]:
    """A comma-separated list (or a YAML list) as sorted unique numbers of ``kind``."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        return tuple(sorted({kind(str(item).strip()) for item in items if str(item).strip()}))
    except ValueError:
        raise ConfigError(f"{key} must be a comma-separated list of {what}, got {value!r}") from None


def _number(kind: type, minimum: float, strict: bool) -> Callable[[str, Any], Any]:
    def parse(key: str, value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if number < minimum or (strict and number == minimum):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise ConfigError(f"{key} must be {bound}, got {value!r}")
        return number
    return parse


def parse_fraction(key: str, value: Any) -> float:
    """'0.8' or '80%' -> 0.8, within [0, 1]."""
    text = str(value).strip()
    number = _number(float, 0.0, False)(key, text[:-1] if text.endswith("%") else text)
    number = number / 100 if text.endswith("%") else number
    if number > 1:
        raise ConfigError(f"{key} must be a fraction in [0, 1] (or a percentage), got {value!r}")
    return number


def _text(key: str, value: Any) -> str:
    return str(value)


def _names(key: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    if not names:
        raise ConfigError(f"{key} needs at least one name")
    return names


def parse_base_urls(key: str, value: Any) -> tuple[tuple[str | None, str], ...]:
    """'http://a:1,cand=http://b:2' -> ((None, 'http://a:1'), ('cand', 'http://b:2')): servers
    someone else runs, each optionally labelled ``NAME=``; the first is the reference."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    found = []
    for item in (str(i).strip() for i in items if str(i).strip()):
        label, _, url = item.rpartition("=") if not item.startswith(("http://", "https://")) else ("", "", item)
        if not url.startswith(("http://", "https://")) or (label and not label.replace("-", "").replace("_", "")
                                                             .replace(".", "").isalnum()):
            raise ConfigError(f"{key} takes URL or NAME=URL (http:// or https://), comma-separated; got {item!r}")
        found.append((label or None, url.rstrip("/")))
    if not found:
        raise ConfigError(f"{key} needs at least one URL")
    return tuple(found)


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _mapping(key: str, value: Any) -> dict[str, str]:
    """'tok_s_p50=10%,ttft_p95_s=0.2' -> {'tok_s_p50': '10%', 'ttft_p95_s': '0.2'}."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs = [item.strip() for item in str(value).split(",") if item.strip()]
    if any("=" not in pair for pair in pairs):
        raise ConfigError(f"{key} must look like metric=10%,metric=0.2, got {value!r}")
    return dict(pair.split("=", 1) for pair in pairs)


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(key: str, value: Any) -> str:
        if str(value) not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return str(value)
    return parse


positive_int = _number(int, 0, strict=True)
non_negative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0, strict=True)
non_negative_float = _number(float, 0, strict=False)


@dataclass(frozen=True)
class Option:
    key: str
    parse: Callable[[str, Any], Any]
    default: Any
    help: str
    quick: Any = None
    flag: bool = False
    metavar: str | None = None
    env: str | None = None  # an environment variable that sets it (below the command line, above ini)
    many: bool = False      # a list: comma-separated, and the flag may be repeated

    @property
    def cli(self) -> str:
        return "--" + self.key.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("profile", _names, ("sim-hicache-mixed-chunk",), "server profile(s), comma-separated; several run one after another", metavar="NAME[,NAME...]"),
    Option("profiles_file", _text, str(DEFAULT_REGISTRY), "your own profiles YAML, layered over the built-in ones by name (relative to the rootdir; write --profiles-file=PATH)", metavar="PATH"),
    Option("base_url", parse_base_urls, None, "test servers already running at URL, named from their /server_info (or NAME=URL); several (comma-separated or repeated) are compared with the first", metavar="[NAME=]URL", many=True),
    Option("concurrency_levels", parse_levels, (1, 2, 4, 8, 12), "capacity levels", quick=(1, 2, 4), metavar="N,N,..."),
    Option("level_duration", positive_float, 240.0, "seconds of load per capacity level", quick=90.0, metavar="S"),
    Option("max_level_duration", positive_float, None, "a level whose agents finished fewer than --min-requests requests by --level-duration goes on (spikes too) until they have, up to S seconds (default 4x --level-duration; equal to it: never extend)", metavar="S"),
    Option("contexts", positive_int, 8, "repository contexts of the capacity workload", quick=4, metavar="N"),
    Option("context_tokens", positive_int, 100_000, "tokens per context (both workloads)", quick=20_000, metavar="N"),
    Option("max_output_tokens", positive_int, 1024, "output tokens per capacity request", quick=128, metavar="N"),
    Option("spike_interval", non_negative_float, 25.0, "seconds between long-prefill spikes in a capacity level (0: none)", quick=15.0, metavar="S"),
    Option("spike_output_tokens", positive_int, 64, "output tokens of a prefill spike", metavar="N"),
    Option("spike_mode", _choice(*SPIKE_MODES), "slot", "capacity spikes: 'slot' = the next free agent sends a due spike (N bounds every request in flight); 'extra' = on time, beside the N agents", metavar="slot|extra"),
    Option("mixed_duration", positive_float, 600.0, "seconds of the mixed workload's load window", quick=90.0, metavar="S"),
    Option("mixed_contexts", positive_int, 4, "repository contexts of the mixed workload", quick=3, metavar="N"),
    Option("decode_workers", positive_int, 3, "decode workers of the mixed workload", metavar="N"),
    Option("mixed_max_output_tokens", positive_int, 2048, "output tokens per mixed decode request", quick=512, metavar="N"),
    Option("mixed_spike_interval", non_negative_float, 30.0, "seconds between mixed prefill spikes (0: none)", quick=20.0, metavar="S"),
    Option("revisit_interval", non_negative_float, 45.0, "seconds between revisits of an old context (0: none)", quick=30.0, metavar="S"),
    Option("max_failure_rate", parse_threshold, 0.05, "usable: failed requests fraction at most", metavar="F"),
    Option("min_tok_s_p50", parse_threshold, 4.0, "usable: per-request output tok/s P50 at least", metavar="X"),
    Option("max_ttft_p95", parse_threshold, 180.0, "usable: TTFT P95 seconds at most", metavar="S"),
    Option("max_gap_p95", parse_threshold, 8.0, "usable: per-request max chunk gap P95 seconds at most", metavar="S"),
    Option("require_concurrency", positive_int, None, "level that must be usable (default: the profile's); higher levels xfail", metavar="N"),
    Option("time_scale", positive_float, 16.0, "simulator only: model time runs K times faster than wall time", metavar="K"),
    Option("request_timeout", positive_float, 1800.0, "seconds before a request counts as failed (model time)", metavar="S"),
    Option("first_token_timeout", positive_float, None, "seconds (model time) a request may wait for its first token before it fails (default: twice --max-ttft-p95, at least 60)", metavar="S"),
    Option("stall_timeout", positive_float, None, "seconds (model time) a stream may stay silent once tokens flow before it fails (default: ten times --max-gap-p95, at least 60)", metavar="S"),
    Option("percentiles", parse_percentiles, (50.0, 90.0, 95.0, 99.0), "percentiles reported beside the mean for TTFT, e2e, chunk gaps, ITL, TPOT and tok/s (report.md, report.json, levels.csv); the bar's own are fixed", metavar="P,P,..."),
    Option("min_requests", non_negative_int, 20, "a verdict whose statistics rest on fewer requests is inconclusive (below 20 a P95 is mostly the sample's maximum)", metavar="N"),
    Option("temperature", non_negative_float, 0.0, "sampling temperature sent with every request", metavar="T"),
    Option("report_dir", _text, "perf-report", "where each session writes its own run folder (<DIR>/<started>, with <DIR>/latest pointing at the newest)", metavar="DIR", env="GLMPERF_REPORT_DIR"),
    Option("flush_cache", _flag, True, "POST /flush_cache before each level and the mixed run (with --base-url only when set: a shared server's cache serves others too)", metavar="BOOL"),
    Option("clear_storage", _flag, False, "with the flush, also POST /hicache/storage-backend/clear: an L3 disk tier keeps what earlier windows wrote (clears a shared backend for every server on it)", flag=True),
    Option("field_mode", _flag, False, "run as the field's scripts did: the server has already seen the repositories and spike texts of --field-seen-levels (sent once before the first level) and of the mixed workload (before it), and no window is flushed", flag=True),
    Option("field_seen_levels", parse_levels, (1, 2, 4), "--field-mode: the levels whose texts the server saw before (an earlier, shorter run)", metavar="N,N,..."),
    Option("field_seen_run", _text, None, "--field-mode: the server saw what this earlier run sent (a saved baseline NAME or a report PATH: its levels' and mixed run's texts), instead of --field-seen-levels", metavar="NAME|PATH"),
    Option("warm_cache", _flag, False, "instead of flushing, send every context and spike text of a window once before it (a server that has seen these repositories)", flag=True),
    Option("capacity_search", _flag, False, "find the highest usable level by bisection, stopping failed levels early", flag=True),
    Option("quick", _flag, False, "small preset: levels 1,2,4, 90 s levels of 128-token answers (enough requests for --min-requests), 20k-token contexts (about a minute on the simulator)", flag=True),
    Option("save_baseline", _text, None, "keep this run's report and records as baseline NAME", metavar="NAME"),
    Option("compare", _text, None, "compare with a saved baseline NAME or a report PATH; adds regression checks", metavar="NAME|PATH"),
    Option("baseline_dir", _text, ".glmperf", "folder of saved baselines (relative to the rootdir); keep it outside a CI workspace, which checkout cleans", metavar="DIR", env="GLMPERF_BASELINE_DIR"),
    Option("tolerances", _mapping, None, "regression tolerances, e.g. tok_s_p50=10%,ttft_p95_s=15%,confidence=0.95 (default 10 % each)", metavar="K=V,..."),
    Option("inconclusive", _choice("pass", "fail"), "pass", "how an inconclusive verdict or regression check counts: pass (exit 0, the verdict still says INCONCLUSIVE) or fail", metavar="pass|fail"),
    Option("repeats", positive_int, 1, "run each capacity level N times; statistics and the gate pool them", metavar="N"),
    Option("images", _names, None, "run the suite on each image in turn (compose profiles)", metavar="REF[,REF...]"),
    Option("workers", parse_levels, None, "router profiles: run the suite with N workers each (the profile's first worker, N times), one target per count named <profile>-x<N>, and report the scaling", metavar="N,N,..."),
    Option("min_scaling_efficiency", parse_fraction, None, "with --workers: fail when max usable at N workers falls below this share of N x max usable at 1 (e.g. 0.8 or 80%)", metavar="F"),
    Option("startup_timeout", positive_float, 1800.0, "seconds to wait for GET /health_generate == 200", metavar="S"),
    Option("keep_running", _flag, False, "leave compose servers up at the end", flag=True),
    Option("reuse_running", _flag, False, "use an already healthy server of the profile", flag=True),
)
BY_KEY = {option.key: option for option in OPTIONS}
LEVEL_EXTENSION_X = 4.0       # default --max-level-duration, in multiples of --level-duration
FIRST_TOKEN_TIMEOUT_X = 2.0   # default first-token timeout, in multiples of --max-ttft-p95
STALL_TIMEOUT_X = 10.0        # default silence timeout, in multiples of --max-gap-p95
MIN_DERIVED_TIMEOUT_S = 60.0  # a derived limit never cuts a request sooner (a bar set near 0 is a probe, not a limit)
GLOBAL_KEYS = {"profile", "profiles_file", "base_url", "report_dir", "quick", "images", "workers",
               "min_scaling_efficiency",
               "startup_timeout", "keep_running", "reuse_running", "save_baseline", "compare",
               "baseline_dir", "tolerances", "inconclusive", "min_requests"}


@dataclass(frozen=True)
class RunSettings:
    """Everything one profile's run needs, resolved and validated."""

    profile: ServerProfile
    levels: tuple[int, ...]
    capacity: CapacitySpec
    mixed: MixedSpec
    thresholds: Thresholds
    require_concurrency: int
    time_scale: float
    request_timeout_s: float
    temperature: float
    flush_cache: bool
    first_token_timeout_s: float | None = None
    stall_timeout_s: float | None = None
    warm_cache: bool = False
    clear_storage: bool = False
    capacity_search: bool = False
    field_seen_levels: tuple[int, ...] | None = None  # --field-mode
    field_seen_run: str | None = None                 # --field-seen-run: the earlier run named
    # (context keys, tokens) the server saw before (--field-seen-run), filled in by the session
    field_texts: tuple[tuple[tuple[str, ...], int], ...] = ()
    repeats: int = 1
    percentiles: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "levels": list(self.levels),
            "capacity": self.capacity.as_dict(),
            "mixed": self.mixed.as_dict(),
            "thresholds": self.thresholds.as_dict(),
            "require_concurrency": self.require_concurrency,
            "time_scale": self.time_scale,
            "request_timeout_s": self.request_timeout_s,
            "first_token_timeout_s": self.first_token_timeout_s,
            "stall_timeout_s": self.stall_timeout_s,
            "temperature": self.temperature,
            "cache_start": self.cache_start,
            "capacity_search": self.capacity_search,
            "percentiles": list(self.percentiles),
            **({"fleet": self.fleet} if self.profile.is_router else {}),
        }

    @property
    def fleet(self) -> dict[str, Any]:
        """A router profile's shape: which profile it is (or was swept from), its worker count."""
        profile = self.profile
        return {"of": profile.scales or profile.name, "workers": len(profile.workers), "swept": bool(profile.scales),
                "router_args": list(profile.router_args), "worker_profiles": list(profile.workers)}

    @property
    def cache_start(self) -> str:
        """How each window finds the server's prefix cache: "warm" (primed), "cold" (flushed,
        L3 storage cleared), "flushed" or "as-is"."""
        if self.field_seen_run is not None:
            return f"field (run {self.field_seen_run} seen, no flush)"
        if self.field_seen_levels is not None:
            return f"field (levels {','.join(map(str, self.field_seen_levels))} seen, no flush)"
        if self.warm_cache:
            return "warm"
        if not self.flush_cache:
            return "as-is"
        return "cold" if self.clear_storage else "flushed"


@dataclass(frozen=True)
class Settings:
    """Options as given (command line and ini), before any profile is applied."""

    given: Mapping[str, Any] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    api_key: str | None = None

    def get(self, key: str) -> Any:
        if key in self.given:
            return self.given[key]
        option = BY_KEY[key]
        if self.given.get("quick") and option.quick is not None:
            return option.quick
        return option.default

    def _flush_asked(self, profile: ServerProfile) -> bool:
        """Whether --flush-cache was set (command line, ini or profile): a server someone else
        runs (--base-url) is never flushed otherwise."""
        return "flush_cache" in self.given or "flush_cache" in profile.options

    @property
    def profile_names(self) -> tuple[str, ...]:
        return self.get("profile")

    @property
    def report_dir(self) -> Path:
        return Path(self.get("report_dir"))

    @property
    def base_urls(self) -> tuple[tuple[str | None, str], ...]:
        return self.get("base_url") or ()

    def for_profile(self, profile: ServerProfile) -> RunSettings:
        """Apply the profile's own option defaults under whatever the user set."""
        unknown = set(profile.options) - (set(BY_KEY) - GLOBAL_KEYS)
        if unknown:
            raise ConfigError(f"profile {profile.name!r}: option {sorted(unknown)[0]!r} is unknown or "
                              "session-wide (set it on the command line or in the ini file)")

        def value(key: str) -> Any:
            option = BY_KEY[key]
            if key in self.given or (self.given.get("quick") and option.quick is not None):
                return self.get(key)
            if key in profile.options:
                return option.parse(key, profile.options[key])
            return option.default

        require = value("require_concurrency") or profile.require_concurrency
        levels = value("concurrency_levels")
        thresholds = Thresholds(**{k: value(k) for k in Thresholds().as_dict()})
        return RunSettings(
            profile=profile,
            levels=levels,
            capacity=CapacitySpec(
                contexts=value("contexts"), context_tokens=value("context_tokens"),
                max_output_tokens=value("max_output_tokens"),
                level_duration_s=value("level_duration"), spike_interval_s=value("spike_interval"),
                spike_output_tokens=value("spike_output_tokens"), spike_mode=value("spike_mode"),
                min_agent_requests=self.get("min_requests"),
                max_level_duration_s=value("max_level_duration") or LEVEL_EXTENSION_X * value("level_duration")),
            mixed=MixedSpec(
                contexts=value("mixed_contexts"), context_tokens=value("context_tokens"),
                decode_workers=value("decode_workers"),
                max_output_tokens=value("mixed_max_output_tokens"),
                duration_s=value("mixed_duration"), spike_interval_s=value("mixed_spike_interval"),
                spike_output_tokens=value("spike_output_tokens"),
                revisit_interval_s=value("revisit_interval")),
            thresholds=thresholds,
            require_concurrency=require or max(levels),
            time_scale=value("time_scale"),
            request_timeout_s=value("request_timeout"),
            # Waits that follow from the bar: a request this late can only break it.
            first_token_timeout_s=value("first_token_timeout") or _derived(FIRST_TOKEN_TIMEOUT_X * thresholds.max_ttft_p95),
            stall_timeout_s=value("stall_timeout") or _derived(STALL_TIMEOUT_X * thresholds.max_gap_p95),
            temperature=value("temperature"),
            flush_cache=(value("flush_cache") if self._flush_asked(profile) else not profile.is_someone_elses)
            and not value("field_mode"),
            warm_cache=value("warm_cache"),
            clear_storage=value("clear_storage"),
            capacity_search=value("capacity_search"),
            field_seen_levels=self._field(profile, value),
            field_seen_run=value("field_seen_run") if value("field_mode") else None,
            repeats=value("repeats"),
            percentiles=value("percentiles"),
        )


    def _field(self, profile: ServerProfile, value: Callable[[str], Any]) -> tuple[int, ...] | None:
        """--field-mode's seen levels; the cache options it replaces may not be set beside it."""
        if not value("field_mode"):
            return None
        clash = [key for key in ("warm_cache", "clear_storage") if value(key)]
        if value("flush_cache") and self._flush_asked(profile):
            clash.append("flush_cache")
        if clash:
            raise ConfigError(f"--field-mode never flushes and primes the seen levels itself: drop "
                              f"{', '.join(BY_KEY[k].cli for k in clash)}")
        if value("field_seen_run") and "field_seen_levels" in self.given:
            raise ConfigError("--field-seen-run and --field-seen-levels both say what the server saw: give one")
        return value("field_seen_levels")


def _derived(limit_s: float) -> float:
    return max(limit_s, MIN_DERIVED_TIMEOUT_S)


def resolve(cli: Mapping[str, Any], ini: Mapping[str, Any],
            images: tuple[str, ...] = ()) -> Settings:
    """Parse what the user gave (None means "not given") into Settings; errors name the key."""
    given: dict[str, Any] = {}
    env = {o.key: os.environ[o.env] for o in OPTIONS if o.env and os.environ.get(o.env, "").strip()}
    for source in (ini, env, cli):  # command line last, so it wins
        for key, raw in source.items():
            if raw is None or (raw is False and BY_KEY[key].flag):
                continue
            if isinstance(raw, str) and not raw.strip():
                raise ConfigError(f"{BY_KEY[key].cli} was given an empty value; leave it out to use its default")
            given[key] = BY_KEY[key].parse(key, raw)
    all_images = tuple(images) + tuple(given.pop("images", ()) or ())
    return Settings(given=given, images=all_images, api_key=os.environ.get("GLMPERF_API_KEY"))
