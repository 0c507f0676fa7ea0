"""Server-argument parsing and the memory model (pytest_glmperf.simulator.config)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from pytest_glmperf.profiles import load_registry
from pytest_glmperf.simulator.config import (
    ACCEPTED_UNMODELLED,
    check_server_args,
    modelled_flags,
    parse_server_args,
    server_args_dict,
)
from pytest_glmperf.simulator.hardware import GLM51_FP8, kv_bytes_per_token, latent_bytes_per_token


def test_kv_bytes_per_token_match_the_fact_sheet() -> None:
    assert kv_bytes_per_token(GLM51_FP8, "fp8_e4m3") == 61_464
    assert kv_bytes_per_token(GLM51_FP8, "bfloat16") == 100_152
    # The host tier is sized by the latent alone (656 / 1152 B per layer).
    assert latent_bytes_per_token(GLM51_FP8, "fp8_e4m3") == 51_168
    assert latent_bytes_per_token(GLM51_FP8, "bfloat16") == 89_856


def test_compose_profile_flags_parse() -> None:
    config = parse_server_args([
        "--model-path", "/models/GLM-5.1", "--tp-size", "8", "--served-model-name", "glm-5.1",
        "--reasoning-parser", "glm45", "--tool-call-parser", "glm47", "--host", "0.0.0.0",
        "--port", "8000", "--enable-metrics", "--enable-hierarchical-cache",
        "--hicache-size", "200", "--hicache-io-backend", "direct", "--hicache-mem-layout",
        "page_first", "--hicache-write-policy", "write_through", "--mem-fraction-static",
        "0.85", "--watchdog-timeout", "1800", "--trust-remote-code", "--log-level=info",
    ])
    assert config.tp_size == 8 and config.port == 8000
    assert config.enable_hierarchical_cache and config.hicache_size == 200
    assert config.unmodelled_args == ("--trust-remote-code", "--log-level=info")
    # SGLang's HostKVCache: 200 GB per rank // 51,168 latent bytes per token, + 1 page (the
    # indexer's host copy is a sidecar beside it).
    assert config.host_pool_tokens == (200e9 // 51_168 // 64 + 1) * 64 == 3_908_736
    # ~4.8 contexts of 100k (docs/simulator.md, "Memory").
    assert 475_000 < config.device_pool_tokens < 490_000
    # SGLang rewrites page_first + direct (no per-page copy of that layout) to page_first_direct.
    info = server_args_dict(config)
    assert (info["hicache_io_backend"], info["hicache_mem_layout"]) == ("direct",
                                                                       "page_first_direct")


def test_page_first_direct_layout_forces_the_direct_io_backend() -> None:
    """A kernel-copy setting on that layout would otherwise load back at the kernel's rate."""
    kernel = parse_server_args(["--enable-hierarchical-cache", "--hicache-mem-layout",
                                "page_first_direct", "--hicache-io-backend", "kernel"])
    assert kernel.resolved_hicache_io == ("direct", "page_first_direct")
    assert parse_server_args(["--enable-hierarchical-cache"]).resolved_hicache_io == (
        "kernel", "layer_first")  # SGLang's defaults


def test_memory_defaults_follow_sglang() -> None:
    plain = parse_server_args([])
    spec = parse_server_args(["--speculative-algorithm", "NEXTN"])
    assert plain.resolved_chunked_prefill_size == 8192
    assert plain.resolved_mem_fraction_static == pytest.approx(0.897, abs=1e-3)
    assert spec.speculative_algorithm == "EAGLE"
    assert spec.effective_max_running_requests == 48
    # The June-2026 image (0.5.11-0.5.13 server_args) reserved 4 GiB more with EAGLE ("eagle
    # draft models and cuda graphs") and still counted 512 decode graphs, since the
    # 48-request cap comes later: (143,771 - 14,848 - 4,096) / 143,771.
    assert spec.resolved_cuda_graph_max_bs == 512
    assert spec.resolved_mem_fraction_static == pytest.approx(0.868, abs=1e-3)
    # Calibrated bracket (docs/simulator.md): the field's mtp run queued requests but never
    # chained fresh prefills, i.e. four 100k contexts fit and a fifth (a spike) did not.
    assert 486_000 < spec.device_pool_tokens < 510_000
    assert (spec.spec_num_steps, spec.spec_topk, spec.spec_draft_tokens) == (3, 1, 4)
    bf16 = parse_server_args(["--kv-cache-dtype", "bfloat16", "--mem-fraction-static", "0.85"])
    assert 285_000 < bf16.device_pool_tokens < 305_000  # ~2.9 contexts of 100k
    sm_rule = parse_server_args(["--sim-dsa-kv-default", "sm"])
    assert sm_rule.resolved_kv_dtype == "bfloat16"  # 0.5.23's rule on Hopper
    # Chunking off: the activation reserve is sized by --max-prefill-tokens (16,384) instead,
    # (143,771 - 512 - 24,576 - 1,024 - 1,024) / 143,771.
    unchunked = parse_server_args(["--chunked-prefill-size", "-1"])
    assert unchunked.resolved_mem_fraction_static == pytest.approx(0.811, abs=1e-3)


def test_fewer_decode_graphs_leave_more_static_memory() -> None:
    # 2 MiB per captured decode batch size: 512 -> 64 graphs frees 896 MiB of the reserve.
    default = parse_server_args([])
    small = parse_server_args(["--cuda-graph-max-bs", "64"])
    assert small.resolved_mem_fraction_static == pytest.approx(
        round((143_771 - 14_848 + 896) / 143_771, 3), abs=1e-3)
    assert small.device_pool_tokens > default.device_pool_tokens
    assert (small.resolved_max_running_requests_hint,
            default.resolved_max_running_requests_hint) == (64, 512)  # graphs captured


@pytest.mark.parametrize(("argv", "flag"), [
    (["--mem-fraction-static", "1.5"], "--mem-fraction-static"),
    (["--tp-size", "zero"], "--tp-size"),
    (["--hicache-write-policy", "sometimes"], "--hicache-write-policy"),
    (["--speculative-algorithm", "MAGIC"], "--speculative-algorithm"),
    (["--page-size", "16"], "--page-size"),
    (["--sim-hardware", "tpu"], "--sim-hardware"),
    (["--sim-spec-accept-prob", "2"], "--sim-spec-accept-prob"),
    (["--context-length"], "--context-length"),
    (["--enable-metrics=maybe"], "--enable-metrics"),
    (["--sim-hardware", "h100x8"], "--mem-fraction-static"),  # weights do not fit at tp 8
    # SGLang asserts a host tier larger than the device pool.
    (["--enable-hierarchical-cache", "--hicache-size", "20"], "--hicache-size"),
    (["--enable-hierarchical-cache", "--hicache-ratio", "0.5"], "--hicache-ratio"),
])
def test_bad_values_name_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        parse_server_args(argv)


def test_server_args_dict_uses_sglang_names() -> None:
    info = server_args_dict(parse_server_args(["--served-model-name", "glm-5.1",
                                               "--speculative-algorithm", "EAGLE"]))
    assert info["served_model_name"] == "glm-5.1"
    assert info["speculative_num_draft_tokens"] == 4
    assert info["chunked_prefill_size"] == 8192
    assert info["max_running_requests"] == 48
    assert info["sim_hardware"] == "h200x8"
    assert "hardware" not in info


def test_mixed_chunk_follows_sglangs_flag_and_is_off_under_eagle(
        caplog: pytest.LogCaptureFixture) -> None:
    """Decode rides along with prefill chunks only where SGLang would let it."""
    assert parse_server_args([]).interleave == "prefill-first"
    assert parse_server_args(["--enable-mixed-chunk"]).interleave == "mixed"
    # with chunked prefill off there are no chunks to mix with (scheduler.is_mixed_chunk)
    assert parse_server_args(["--enable-mixed-chunk", "--chunked-prefill-size",
                              "-1"]).interleave == "prefill-first"
    with caplog.at_level("WARNING", logger="glmperf.sim"):
        eagle = parse_server_args(["--enable-mixed-chunk", "--speculative-algorithm", "EAGLE"])
    assert eagle.interleave == "prefill-first"
    assert server_args_dict(eagle)["enable_mixed_chunk"] is False
    assert "--enable-mixed-chunk" in caplog.text and "speculative" in caplog.text
    # --sim-decode-interleave overrides the flag, for exploring either rule.
    assert parse_server_args(["--enable-mixed-chunk", "--sim-decode-interleave",
                              "prefill-first"]).interleave == "prefill-first"


def test_max_total_tokens_caps_the_device_pool(caplog: pytest.LogCaptureFixture) -> None:
    """A user cap, page-aligned; a cap above what memory holds is ignored with a warning."""
    hicache = ["--enable-hierarchical-cache", "--hicache-ratio", "2"]
    capped = parse_server_args([*hicache, "--max-total-tokens", "300000"])
    assert capped.device_pool_tokens == 299_968 < capped.profiled_pool_tokens
    assert capped.host_pool_tokens > 2 * 299_968 - 64  # the ratio applies to the capped pool
    with caplog.at_level("WARNING", logger="glmperf.sim"):
        loose = parse_server_args(["--max-total-tokens", "10000000"])
    assert loose.device_pool_tokens == parse_server_args([]).device_pool_tokens
    assert "--max-total-tokens" in caplog.text
    with pytest.raises(ValueError, match="--max-total-tokens"):
        parse_server_args(["--max-total-tokens", "10"])


# ---- flags the simulator does not know are an error ----------------------------------------

def test_a_misspelt_flag_is_refused_with_the_nearest_spelling() -> None:
    """--hicache-sise would otherwise start a simulator without HiCache."""
    with pytest.raises(ValueError, match=r"unknown SGLang flag --hicache-sise \(did you mean --hicache-size\?\)"):
        parse_server_args(["--enable-hierarchical-cache", "--hicache-sise", "200"])
    with pytest.raises(ValueError, match=r"unknown SGLang flag --foo;.*ACCEPTED_UNMODELLED") as info:
        parse_server_args(["--foo=bar"])
    assert len(str(info.value)) < 300  # says where the list lives instead of reciting it
    with pytest.raises(ValueError, match="did you mean --trust-remote-code"):
        parse_server_args(["--trust-remote-cod"])   # accepted-but-unmodelled flags are suggested too


def test_accepted_unmodelled_flags_are_recorded_with_their_values() -> None:
    config = parse_server_args([
        "--log-level", "warning", "--cuda-graph-bs", "1", "2", "4", "--disable-cuda-graph",
        "--random-seed", "-1", "--api-key=secret", "--attention-backend", "dsa",
        "--enable-metrics",
    ])
    assert config.enable_metrics
    assert config.unmodelled_args == ("--log-level", "warning", "--cuda-graph-bs", "1", "2", "4",
                                      "--disable-cuda-graph", "--random-seed", "-1", "--api-key=secret",
                                      "--attention-backend", "dsa")
    assert server_args_dict(config)["sim_unmodelled_args"] == list(config.unmodelled_args)


@pytest.mark.parametrize(("argv", "message"), [
    (["--trust-remote-code", "yes"], "unexpected argument 'yes'"),  # a switch takes no value
    (["--log-level"], "--log-level: expects a value"),
    (["--cuda-graph-bs", "--disable-cuda-graph"], "--cuda-graph-bs: expects a value"),
    (["--disable-cuda-graph=maybe"], "--disable-cuda-graph: expects true or false"),
    (["glm-5.1"], "unexpected argument 'glm-5.1'"),
])
def test_accepted_flags_take_what_sglang_gives_them(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_server_args(argv)


def test_the_accepted_list_and_the_modelled_flags_do_not_overlap() -> None:
    assert not set(ACCEPTED_UNMODELLED) & set(modelled_flags())
    assert all(flag.startswith("--") and flag == flag.lower() for flag in ACCEPTED_UNMODELLED)
    assert set(ACCEPTED_UNMODELLED.values()) <= {0, 1, "+"}


def test_check_server_args_takes_the_command_line_without_starting_anything() -> None:
    given = check_server_args(["--time-scale", "5", "--sim-fault", "stall:after=3", "--sim-exit-with-parent",
                               "--host", "127.0.0.1", "--port", "0", "--enable-metrics", "--trust-remote-code"])
    assert given == ("--trust-remote-code",)
    with pytest.raises(ValueError, match=r"unknown simulator flag --sim-faults \(did you mean --sim-fault\?\)"):
        check_server_args(["--sim-faults", "stall"])
    with pytest.raises(ValueError, match=r"did you mean --time-scale\?"):
        check_server_args(["--time-scal", "5"])
    with pytest.raises(ValueError, match="--time-scale"):
        check_server_args(["--time-scale", "-3"])
    with pytest.raises(ValueError, match="--hicache-size"):
        check_server_args(["--enable-hierarchical-cache", "--hicache-size", "lots"])


def test_every_shipped_simulated_profile_and_the_sim_compose_command_parse() -> None:
    root = Path(__file__).resolve().parents[2] / "compose"
    simulated = [p for p in load_registry(root / "profiles.yaml").profiles.values() if p.is_simulated]
    assert simulated
    for profile in simulated:  # what-ifs included, with the flags they add to what they extend
        assert check_server_args(list(profile.server_args)) == (), profile.name
    command = yaml.safe_load((root / "compose-sim.yaml").read_text())["services"]["sglang"]["command"]
    command = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", command)   # ${VAR:-default}: the default
    argv = shlex.split(command)
    assert argv[:3] == ["python3", "-m", "pytest_glmperf.simulator"]
    assert check_server_args(argv[3:]) == ()
