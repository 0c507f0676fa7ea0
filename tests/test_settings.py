"""Options: precedence (command line > ini > --quick > profile > default) and clear errors."""

from pathlib import Path

import pytest

from pytest_glmperf.errors import ConfigError
from pytest_glmperf.profiles import ServerProfile, external_profile, load_registry
from pytest_glmperf.settings import resolve

REPO = Path(__file__).resolve().parents[1]
PROFILE = ServerProfile(name="p", kind="simulated", require_concurrency=2,
                        options={"level_duration": 30, "concurrency_levels": "1,2"})


def test_defaults_are_the_brief():
    run = resolve({}, {}).for_profile(ServerProfile(name="x", kind="simulated"))
    assert run.levels == (1, 2, 4, 8, 12)
    assert run.capacity.level_duration_s == 240
    assert run.capacity.spike_interval_s == 25
    assert run.capacity.spike_mode == "slot"
    assert run.mixed.duration_s == 600
    assert run.mixed.decode_workers == 3
    assert run.thresholds.max_gap_p95 == 8
    assert run.require_concurrency == 12


def test_profile_options_apply_under_user_settings():
    run = resolve({}, {}).for_profile(PROFILE)
    assert run.capacity.level_duration_s == 30
    assert run.levels == (1, 2)
    assert run.require_concurrency == 2
    run = resolve({"level_duration": "10"}, {"level_duration": "20"}).for_profile(PROFILE)
    assert run.capacity.level_duration_s == 10
    run = resolve({}, {"level_duration": "20"}).for_profile(PROFILE)
    assert run.capacity.level_duration_s == 20


def test_quick_preset_beats_profile_but_not_command_line():
    run = resolve({"quick": True, "contexts": "2"}, {}).for_profile(PROFILE)
    assert run.levels == (1, 2, 4)
    assert run.capacity.level_duration_s == 90
    assert run.capacity.contexts == 2


@pytest.mark.parametrize(("key", "value", "message"), [
    ("concurrency_levels", "1,x", "concurrency_levels must be a comma-separated list"),
    ("concurrency_levels", "0,2", "concurrency_levels needs at least one level and all levels >= 1"),
    ("max_gap_p95", "-3", "threshold max_gap_p95"),
    ("min_tok_s_p50", "abc", "threshold min_tok_s_p50 must be a number"),
    ("level_duration", "0", "level_duration must be > 0"),
    ("contexts", "2.5", "contexts must be an integer"),
    ("spike_mode", "beside", "spike_mode must be one of slot, extra, got 'beside'"),
    ("request_timeout", "nan", "request_timeout must be a finite number"),
    ("time_scale", "inf", "time_scale must be a finite number"),
    ("min_requests", "-1", "min_requests must be >= 0"),
    ("concurrency_levels", "", "--concurrency-levels was given an empty value"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve({key: value}, {})


def test_timeouts_follow_from_the_bar_unless_given():
    run = resolve({"max_ttft_p95": "100", "max_gap_p95": "8"}, {}).for_profile(PROFILE)
    assert (run.first_token_timeout_s, run.stall_timeout_s) == (200.0, 80.0)
    probe = resolve({"max_ttft_p95": "1", "max_gap_p95": "0.000001"}, {}).for_profile(PROFILE)
    assert (probe.first_token_timeout_s, probe.stall_timeout_s) == (60.0, 60.0)  # a bar near 0 cuts nothing
    run = resolve({"first_token_timeout": "30", "stall_timeout": "7"}, {}).for_profile(PROFILE)
    assert (run.first_token_timeout_s, run.stall_timeout_s) == (30.0, 7.0)


def test_a_server_someone_else_runs_is_flushed_only_when_asked():
    external = external_profile("glm-5.1@0.5.6", "http://127.0.0.1:1", like=PROFILE)
    assert resolve({}, {}).for_profile(PROFILE).flush_cache is True
    assert resolve({"base_url": "http://127.0.0.1:1"}, {}).for_profile(external).flush_cache is False
    assert resolve({"base_url": "http://127.0.0.1:1", "flush_cache": "true"}, {}).for_profile(external).flush_cache
    assert resolve({"base_url": "http://127.0.0.1:1"}, {}).for_profile(external).cache_start == "as-is"
    assert external.require_concurrency == PROFILE.require_concurrency  # a --profile lends its bar, not its name


@pytest.mark.parametrize(("value", "expected"), [
    ("http://a:1", ((None, "http://a:1"),)),
    ("http://a:1/,candidate=http://b:2", ((None, "http://a:1"), ("candidate", "http://b:2"))),
    (["prod=https://x/v1", "http://y:3"], (("prod", "https://x/v1"), (None, "http://y:3"))),
])
def test_base_urls_take_optional_names(value, expected):
    assert resolve({"base_url": value}, {}).base_urls == expected


@pytest.mark.parametrize("value", ["127.0.0.1:30000", "prod=ftp://x", "my prod=http://x", ","])
def test_a_base_url_that_is_not_one_is_refused(value):
    with pytest.raises(ConfigError, match="base_url"):
        resolve({"base_url": value}, {})


def test_the_baseline_and_report_folders_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("GLMPERF_BASELINE_DIR", "/srv/glmperf/baselines")
    assert resolve({}, {"baseline_dir": ".glmperf"}).get("baseline_dir") == "/srv/glmperf/baselines"  # env > ini
    assert resolve({"baseline_dir": "here"}, {}).get("baseline_dir") == "here"  # the command line wins
    monkeypatch.setenv("GLMPERF_BASELINE_DIR", "")
    assert resolve({}, {}).get("baseline_dir") == ".glmperf"


def test_unknown_profile_lists_known_ones():
    registry = load_registry(REPO / "compose" / "profiles.yaml")
    with pytest.raises(ConfigError, match=r"unknown profile 'nope'.*sim-hicache.*sim-mtp"):
        registry.get("nope")


def test_registry_errors_name_file_and_profile(tmp_path):
    bad = tmp_path / "profiles.yaml"
    bad.write_text("profiles:\n  x:\n    kind: teleport\n")
    with pytest.raises(ConfigError, match=r"profile 'x' in .*profiles.yaml: kind must be one of"):
        load_registry(bad)
    bad.write_text("profiles:\n  x:\n    kind: simulated\n    server_arg: [--tp-size, '8']\n")
    with pytest.raises(ConfigError, match=r"profile 'x' .*unknown key 'server_arg' \(did you mean 'server_args'\?\)"):
        load_registry(bad)
    bad.write_text("profiles: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry(bad)


def _registry(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    return path


def test_a_profile_extends_another_with_one_change(tmp_path: Path):
    from pytest_glmperf.profiles import load_profiles

    path = _registry(tmp_path, "profiles:\n  bigger:\n    extends: sim-hicache\n    description: 400 GB\n"
                               "    extra_args: [--hicache-size, '400']\n    require_concurrency: 2\n")
    registry = load_profiles(path)  # a project's profile extends a built-in one
    base, bigger = registry.get("sim-hicache"), registry.get("bigger")
    assert bigger.server_args == (*base.server_args, "--hicache-size", "400")
    assert (bigger.kind, bigger.require_concurrency, bigger.source) == ("simulated", 2, path.resolve())


@pytest.mark.parametrize(("text", "message"), [
    ("profiles:\n  a:\n    extends: nope\n", "extends 'nope', which is not a profile"),
    ("profiles:\n  a:\n    extends: b\n  b:\n    extends: a\n", "part of a cycle"),
    ("profiles:\n  a:\n    kind: simulated\n    extra_args: [--x]\n", "give 'extends' too"),
])
def test_a_bad_extends_names_the_profile(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_registry(_registry(tmp_path, text))


def test_field_mode_never_flushes_and_refuses_the_options_it_replaces():
    run = resolve({"field_mode": True}, {}).for_profile(PROFILE)
    assert run.flush_cache is False and run.field_seen_levels == (1, 2, 4)
    assert run.cache_start == "field (levels 1,2,4 seen, no flush)"
    seen = resolve({"field_mode": True, "field_seen_levels": "1,2"}, {}).for_profile(PROFILE).field_seen_levels
    assert seen == (1, 2)
    for clash in ({"warm_cache": True}, {"flush_cache": "true"}):
        with pytest.raises(ConfigError, match="--field-mode never flushes"):
            resolve({"field_mode": True, **clash}, {}).for_profile(PROFILE)


def test_levels_extend_to_four_times_their_duration_by_default():
    default = resolve({}, {}).for_profile(PROFILE).capacity  # PROFILE sets 30 s levels
    assert (default.level_duration_s, default.max_level_duration_s, default.min_agent_requests) == (30, 120, 20)
    chosen = resolve({"field_mode": True, "max_level_duration": "600"}, {}).for_profile(PROFILE).capacity
    assert chosen.longest_s == 600
    fixed = resolve({"max_level_duration": "30"}, {}).for_profile(PROFILE).capacity
    assert fixed.longest_s == 30
    with pytest.raises(ConfigError, match=r"max_level_duration \(10 s\) must be at least level_duration \(30 s\)"):
        resolve({"max_level_duration": "10"}, {}).for_profile(PROFILE)
