"""Engine configuration: the SGLang launch flags the simulator models, parsed like SGLang.

A profile's ``server_args`` (the same flags as the compose files) become an
``EngineConfig``. Real SGLang flags the model does not use (``ACCEPTED_UNMODELLED``) are
kept in ``unmodelled_args`` so ``/server_info`` can still show them; any other flag is an
error, as in SGLang, so a misspelt flag cannot quietly test another configuration.
Simulator-only knobs are ``--sim-*`` flags.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from .hardware import (
    GIB,
    GLM51_FP8,
    MIB,
    HardwareSpec,
    ModelSpec,
    get_hardware,
    kv_bytes_per_token,
    latent_bytes_per_token,
)
from .schedule_policy import MODELLED_POLICIES
from .storage import (
    MODELLED_BACKENDS,
    PREFETCH_CAPACITY_SHARE,
    PREFETCH_POLICIES,
    STORAGE_BACKENDS,
    StorageSettings,
    parse_extra_config,
)

log = logging.getLogger("glmperf.sim")

# SGLang constants (python/sglang/srt/...; 0.5.23 wheel unless noted).
CLIP_MAX_NEW_TOKENS = 4096          # schedule_policy.py: decode reservation clip per request
# How much of its remaining output a running request is expected to still claim
# (scheduler.py, environ.py): 0.7 x --schedule-conservativeness at start and when idle,
# decaying over 600 decode steps to 0.14 of that; after a retraction, re-estimated from
# the batch as (tokens decoded + 20 per request) / max_new_tokens.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
RETRACT_DECODE_STEPS = 20
SPEC_MAX_RUNNING_REQUESTS = 48      # speculative_hook.py: "reset to 48 for speculative decoding"
DEFAULT_DECODE_GRAPH_MAX_BS = 512   # decode CUDA-graph max batch on H200 at tp >= 4
# Device memory taken outside weights/KV before the pool is sized: NCCL communicators,
# custom all-reduce IPC buffers, DeepGEMM/FlashInfer workspaces (typically 1-2 GiB at TP8).
RUNTIME_BUFFERS_BYTES = int(1.5 * GIB)
# Memory resident when the KV pool is profiled that the itemisation above and the weight
# arithmetic (hardware.py) do not name: allocator fragmentation after FP8 weight
# post-processing (DeepGEMM scale re-layout), MoE/DSA workspaces created at model init,
# BF16 modules of the FP8 checkpoint beyond embedding/lm_head. No source itemises it; it is
# CALIBRATED (docs/simulator.md, "Memory"): the field's mtp run queued requests (queue
# mean 0.49, TTFT P50 9 s) yet never chained two fresh prefills (gap P95 12.84 s), which
# brackets its pool between ~486k and ~510k tokens; 1.3 GiB puts it at ~500k.
UNITEMISED_RESIDENT_BYTES = int(1.3 * GIB)
# The June-2026 image (0.5.11 to 0.5.13 wheels, server_args._handle_gpu_memory_settings)
# reserved 4 GiB more for EAGLE-family speculative decoding: "eagle draft models and cuda
# graphs". Its 48-request cap for speculative decoding is applied later
# (_handle_speculative_decoding), so the reservation still counts 512 decode graphs.
SPEC_RESERVED_MIB = 4 * 1024

SPEC_ALGORITHMS = ("EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM")
WRITE_POLICIES = ("write_back", "write_through", "write_through_selective")
IO_BACKENDS = ("direct", "kernel", "kernel_ascend")
MEM_LAYOUTS = ("layer_first", "page_first", "page_first_direct", "page_first_kv_split",
               "page_head")
SCHEDULE_POLICIES = ("fcfs", "lpm", "random", "dfs-weight", "lof", "priority", "routing-key")
KV_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2", "bf16", "bfloat16")
INTERLEAVE = ("auto", "prefill-first", "mixed")
DSA_KV_DEFAULTS = ("fp8_e4m3", "bfloat16", "sm")
# EAGLE + HiCache on a DSA model: the June image (0.5.12, Scheduler._maybe_register_hicache_draft)
# gives the draft layer a host mirror of its MLA latent only, so a load-back leaves the
# draft's DSA indexer K stale (sglang#28895, fix in #28896). "restored" models an image
# that carries the draft indexer too.
DRAFT_INDEXER_RESTORE = ("stale", "restored")
# PD disaggregation (server_args.py: disaggregation_mode, DISAGG_TRANSFER_BACKEND_CHOICES).
DISAGGREGATION_MODES = ("null", "prefill", "decode")
TRANSFER_BACKENDS = ("mooncake", "nixl", "ascend", "fake", "mori", "mooncake_tcp")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine model needs; field names follow SGLang's ServerArgs."""

    model_path: str = "zai-org/GLM-5.1-FP8"
    served_model_name: str | None = None
    tp_size: int = 8
    page_size: int = 64
    context_length: int | None = None
    chunked_prefill_size: int | None = None
    max_prefill_tokens: int = 16384
    max_running_requests: int | None = None
    cuda_graph_max_bs: int | None = None
    max_queued_requests: int | None = None
    mem_fraction_static: float | None = None
    max_total_tokens: int | None = None
    kv_cache_dtype: str = "auto"
    schedule_policy: str = "fcfs"
    schedule_conservativeness: float = 1.0
    enable_mixed_chunk: bool = False
    disable_radix_cache: bool = False
    decode_log_interval: int = 40
    stream_interval: int = 1
    incremental_streaming_output: bool = False      # /generate chunks carry deltas
    stream_response_default_include_usage: bool = False
    watchdog_timeout: float = 300.0
    enable_metrics: bool = False
    enable_cache_report: bool = False
    speculative_algorithm: str | None = None
    speculative_num_steps: int | None = None
    speculative_eagle_topk: int | None = None
    speculative_num_draft_tokens: int | None = None
    enable_hierarchical_cache: bool = False
    hicache_ratio: float = 2.0
    hicache_size: float = 0.0            # GB (1e9 bytes) per rank; overrides the ratio if > 0
    hicache_write_policy: str = "write_through"
    hicache_io_backend: str = "kernel"
    hicache_mem_layout: str = "layer_first"
    hicache_storage_backend: str | None = None
    hicache_storage_prefetch_policy: str = "timeout"
    hicache_storage_backend_extra_config: str | None = None
    host: str = "127.0.0.1"
    port: int = 30000
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    # PD disaggregation (disaggregation.py models it; names and defaults as server_args.py)
    disaggregation_mode: str = "null"
    disaggregation_transfer_backend: str = "mooncake"
    disaggregation_bootstrap_port: int = 8998
    num_reserved_decode_tokens: int = 512
    disaggregation_decode_polling_interval: int = 1
    # Simulator-only knobs (--sim-*).
    hardware: HardwareSpec = field(default_factory=lambda: get_hardware("h200x8"))
    model: ModelSpec = GLM51_FP8
    seed: int = 0
    spec_accept_prob: float = 0.87       # per-draft acceptance probability (see speculative.py)
    # EAGLE + HiCache: what a load-back restores for the draft layer's DSA indexer (below).
    hicache_draft_indexer: str = "stale"
    spec_stale_accept_prob: float = 0.37  # per-draft acceptance over a stale draft indexer
    dsa_kv_default: str = "fp8_e4m3"     # what kv_cache_dtype=auto resolves to (see below)
    decode_interleave: str = "auto"      # see engine.py: how decode shares steps with prefill
    decode_floor_us: float | None = None  # per-layer decode floor; None: costs.py's constant
    storage_read_gbps: float | None = None   # L3 file backend; None: the hardware's figure
    storage_write_gbps: float | None = None
    # PD KV transfer (disaggregation.py): GB/s per TP rank, a 400 Gb/s NIC at an assumed
    # 80 %; fixed latency per request, assumed (docs/simulator.md, "Prefill/decode").
    kv_link_gbps: float = 40.0
    kv_setup_ms: float = 1.0
    unmodelled_args: tuple[str, ...] = ()

    # ---- resolved values (what SGLang decides when a flag is left unset) ----

    @property
    def spec_enabled(self) -> bool:
        return self.speculative_algorithm is not None

    @property
    def spec_num_steps(self) -> int:
        """(3, 1, 4) is SGLang's auto choice for GlmMoeDsaForCausalLM (speculative_hook.py)."""
        return self.speculative_num_steps or 3

    @property
    def spec_topk(self) -> int:
        return self.speculative_eagle_topk or 1

    @property
    def spec_draft_tokens(self) -> int:
        """With topk=1 SGLang forces num_draft_tokens = num_steps + 1."""
        if self.spec_topk == 1:
            return self.spec_num_steps + 1
        return self.speculative_num_draft_tokens or self.spec_num_steps + 1

    @property
    def init_new_token_ratio(self) -> float:
        return min(INIT_NEW_TOKEN_RATIO * self.schedule_conservativeness, 1.0)

    @property
    def min_new_token_ratio(self) -> float:
        return min(self.init_new_token_ratio * MIN_NEW_TOKEN_RATIO_FACTOR, 1.0)

    @property
    def new_token_ratio_decay(self) -> float:
        return (self.init_new_token_ratio - self.min_new_token_ratio) / NEW_TOKEN_RATIO_DECAY_STEPS

    @property
    def resolved_context_length(self) -> int:
        return self.context_length or self.model.context_length

    @property
    def chunked_prefill_enabled(self) -> bool:
        """``--chunked-prefill-size`` 0 or -1 turns chunking off (the scheduler then holds None)."""
        return self.chunked_prefill_size is None or self.chunked_prefill_size > 0

    @property
    def resolved_chunked_prefill_size(self) -> int:
        """server_args: <35 GiB 2048, <160 GiB 8192 (H100/H200), else 16384; -1 disables."""
        if self.chunked_prefill_size is not None:
            return self.chunked_prefill_size if self.chunked_prefill_size > 0 else 1 << 30
        gib = self.hardware.hbm_gib
        if gib < 35:
            return 2048
        return 8192 if gib < 160 else 16384

    @property
    def resolved_kv_dtype(self) -> str:
        """What ``--kv-cache-dtype auto`` means for a DSA model: ``dsa_kv_default``.

        SGLang 0.5.23 (arg_groups/overrides.py) picks fp8_e4m3 on SM>=100 and bfloat16 on
        Hopper; its own warning text still says "DeepSeek V3.2 defaults to FP8 KV cache",
        and the field report's cache counters fit an FP8 pool (docs/simulator.md), so the
        simulator defaults to the image the field ran: fp8_e4m3 everywhere.
        ``--sim-dsa-kv-default sm`` selects 0.5.23's rule.
        """
        if self.kv_cache_dtype in ("bf16", "bfloat16"):
            return "bfloat16"
        if self.kv_cache_dtype != "auto":
            return self.kv_cache_dtype
        if self.dsa_kv_default == "sm":
            return "fp8_e4m3" if self.hardware.sm_major >= 10 else "bfloat16"
        return self.dsa_kv_default

    @property
    def resolved_hicache_io(self) -> tuple[str, str]:
        """(io backend, memory layout) after SGLang's layout/io normalisation (0.5.12
        ``_resolve_layout_io_compatibility``): ``page_first`` cannot be copied page by page,
        so with ``direct`` it becomes ``page_first_direct``; that layout has no kernel path,
        so with ``kernel`` the backend becomes ``direct``. (The FA3 decode-backend step does
        not apply to DSA's attention backend.)"""
        io, layout = self.hicache_io_backend, self.hicache_mem_layout
        if layout == "page_first_direct" and io == "kernel":
            io = "direct"
        if layout == "page_first" and io == "direct":
            layout = "page_first_direct"
        return io, layout

    @property
    def resolved_mem_fraction_static(self) -> float:
        """SGLang's auto value, in MiB of GPU memory, as the June-2026 image computed it
        (server_args._handle_gpu_memory_settings, 0.5.11 to 0.5.13): reserved = 512 + 1.5 x
        max(chunked_prefill_size, or max_prefill_tokens with chunking off, 2048) + 2 x
        cuda_graph_max_bs + tp/8 x 1024, at least 10 GiB on GPUs over 60 GB, + 4 GiB with
        EAGLE; fraction = (gpu - reserved) / gpu. No piecewise-CUDA-graph term: that is off
        for GlmMoeDsaForCausalLM."""
        if self.mem_fraction_static is not None:
            return self.mem_fraction_static
        gpu_mib = self.hardware.hbm_bytes / MIB
        prefill = (self.resolved_chunked_prefill_size if self.chunked_prefill_enabled
                   else self.max_prefill_tokens)   # activations of the largest prefill
        reserved = 512 + 1.5 * max(prefill, 2048)
        reserved += self.tp_size / 8 * 1024 + 2 * self.resolved_cuda_graph_max_bs
        if gpu_mib > 60 * 1024:
            reserved = max(reserved, 10 * 1024)
        if self.spec_enabled:
            reserved += SPEC_RESERVED_MIB
        return round((gpu_mib - reserved) / gpu_mib, 3)

    @property
    def resolved_cuda_graph_max_bs(self) -> int:
        """``--cuda-graph-max-bs``, else SGLang's default where GLM-5.1 fits at all (80 GB
        and larger GPUs at tp >= 4): 512. Set before any speculative-decoding cap."""
        return self.cuda_graph_max_bs or DEFAULT_DECODE_GRAPH_MAX_BS

    @property
    def resolved_max_running_requests_hint(self) -> int:
        """Decode CUDA-graph batches captured: ``resolved_cuda_graph_max_bs`` capped at
        max_running_requests (48 with spec)."""
        cap = self.max_running_requests or (SPEC_MAX_RUNNING_REQUESTS if self.spec_enabled else None)
        return min(self.resolved_cuda_graph_max_bs, cap or self.resolved_cuda_graph_max_bs)

    @property
    def kv_bytes_per_token(self) -> int:
        """Per-rank device KV bytes per token (target model; the layout is in hardware.py)."""
        return kv_bytes_per_token(self.model, self.resolved_kv_dtype)

    @property
    def cell_bytes_per_token(self) -> int:
        """Pool cell size: the EAGLE draft (MTP) layer keeps its own KV at the same token
        count, one more layer of the same shape (an assumption the SGLang source does not settle)."""
        if not self.spec_enabled:
            return self.kv_bytes_per_token
        return self.kv_bytes_per_token * (self.model.layers + 1) // self.model.layers

    @property
    def weight_bytes(self) -> float:
        """Per-GPU weights (target, plus the MTP draft layer with speculative decoding)."""
        weights = self.model.weight_bytes_per_gpu(self.tp_size)
        if self.spec_enabled:
            weights += self.model.draft_weight_bytes_per_gpu(self.tp_size)
        return weights

    @property
    def kv_pool_bytes(self) -> float:
        """model_runner / kv_cache_configurator._profile_available_bytes: free memory after
        weights (and what else is resident then) minus pre_model_load_memory x
        (1 - mem_fraction_static)."""
        hw = self.hardware
        pre_load = hw.hbm_bytes - hw.cuda_context_bytes - RUNTIME_BUFFERS_BYTES
        free_after = pre_load - self.weight_bytes - UNITEMISED_RESIDENT_BYTES
        return free_after - pre_load * (1 - self.resolved_mem_fraction_static)

    @property
    def device_pool_tokens(self) -> int:
        """max_total_num_tokens: pool bytes / cell size, at most ``--max-total-tokens``
        (model_runner ``_apply_token_constraints``), rounded down to whole pages."""
        tokens = self.profiled_pool_tokens
        if self.max_total_tokens is not None:
            tokens = min(tokens, self.max_total_tokens)
        return max(0, tokens // self.page_size * self.page_size)

    @property
    def profiled_pool_tokens(self) -> int:
        """What the KV memory holds, before any user cap."""
        return int(self.kv_pool_bytes // self.cell_bytes_per_token)

    @property
    def host_pool_tokens(self) -> int:
        """HostKVCache size (SGLang 0.5.11-0.5.14, memory_pool_host.py): hicache_size GB (1e9)
        per rank // the MLA latent's bytes per token, else ratio x device pool; then
        ``size // page + 1`` pages. The DSA indexer's host copy is a sidecar pool of the same
        token count allocated beside it (``NSAIndexerPoolHost``), not out of hicache_size.
        0 without HiCache."""
        if not self.enable_hierarchical_cache:
            return 0
        if self.hicache_size > 0:
            tokens = int(self.hicache_size * 1e9 // latent_bytes_per_token(self.model, self.resolved_kv_dtype))
        else:
            tokens = int(self.device_pool_tokens * self.hicache_ratio)
        return (tokens // self.page_size + 1) * self.page_size

    @property
    def effective_max_running_requests(self) -> int:
        """Spec: 48. Otherwise kv_cache_configurator.resolve_max_num_reqs:
        min(clamp(capacity / context_len x 512, 2048, 4096), capacity // 2)."""
        if self.max_running_requests:
            return self.max_running_requests
        if self.spec_enabled:
            return SPEC_MAX_RUNNING_REQUESTS
        cap = self.device_pool_tokens
        scaled = cap / self.resolved_context_length * 512
        return int(min(max(scaled, 2048), 4096, max(cap // 2, 1)))

    @property
    def interleave(self) -> str:
        """How decode shares steps with a pending prefill (engine.py), as SGLang decides it.

        ``auto``: *mixed* (one decode token per running request inside each prefill chunk's
        forward) only with ``--enable-mixed-chunk`` and chunked prefill on (the scheduler's
        ``is_mixed_chunk``; ``_check`` turns the flag off under speculative decoding, as
        SGLang does); otherwise *prefill-first*, SGLang's "run prefill first if possible": every chunk of a
        long prompt runs while all decode streams wait. The built-in HiCache profiles pass
        ``--enable-mixed-chunk`` (compose/profiles.yaml says why).
        ``--sim-decode-interleave mixed|prefill-first`` overrides the flag, for exploring.
        """
        if self.decode_interleave != "auto":
            return self.decode_interleave
        mixed = self.enable_mixed_chunk and self.chunked_prefill_enabled
        return "mixed" if mixed else "prefill-first"

    @property
    def stale_draft_after_load_back(self) -> bool:
        """EAGLE with HiCache, on an image that does not restore the draft's DSA indexer."""
        return (self.spec_enabled and self.enable_hierarchical_cache
                and self.hicache_draft_indexer == "stale")

    @property
    def storage_enabled(self) -> bool:
        return self.hicache_storage_backend is not None

    @property
    def storage_settings(self) -> StorageSettings:
        text = self.hicache_storage_backend_extra_config
        return parse_extra_config(text) if text else StorageSettings()

    @property
    def storage_read_bandwidth(self) -> float:
        gbps = self.storage_read_gbps
        return gbps * 1e9 if gbps else self.hardware.storage_read_bandwidth

    @property
    def storage_write_bandwidth(self) -> float:
        gbps = self.storage_write_gbps
        return gbps * 1e9 if gbps else self.hardware.storage_write_bandwidth

    @property
    def disaggregated(self) -> bool:
        """A prefill-only or decode-only server (``--disaggregation-mode prefill|decode``)."""
        return self.disaggregation_mode != "null"

    @property
    def kv_link_bandwidth(self) -> float:
        """PD KV transfer rate per TP rank in bytes/s (``--sim-kv-link-gbps``, GB/s)."""
        return self.kv_link_gbps * 1e9

    @property
    def prefetch_capacity_limit_tokens(self) -> int:
        """cache_controller.prefetch_capacity_limit: 80 % of (host - device) tokens."""
        return max(0, int(PREFETCH_CAPACITY_SHARE
                          * (self.host_pool_tokens - self.device_pool_tokens)))

    def validate(self) -> EngineConfig:
        """Refuse configurations SGLang would refuse to start with; return self."""
        if self.max_total_tokens is not None and self.max_total_tokens < self.page_size:
            raise ValueError(f"--max-total-tokens: {self.max_total_tokens} is less than one "
                             f"page ({self.page_size} tokens)")
        if self.kv_pool_bytes <= 0 or self.device_pool_tokens < self.page_size:
            raise ValueError(
                f"--mem-fraction-static: {self.resolved_mem_fraction_static} leaves no GPU memory "
                f"for the KV cache after {self.weight_bytes / 1e9:.1f} GB of weights per GPU "
                f"on {self.hardware.name} at --tp-size {self.tp_size}")
        if self.enable_hierarchical_cache and self.host_pool_tokens <= self.device_pool_tokens:
            flag = "--hicache-size" if self.hicache_size > 0 else "--hicache-ratio"
            raise ValueError(
                f"{flag}: the host tier ({self.host_pool_tokens:,} tokens) must be larger than "
                f"the device pool ({self.device_pool_tokens:,} tokens), as SGLang asserts")
        if self.storage_enabled:
            self._validate_storage()
        return self

    def _validate_storage(self) -> None:
        backend = self.hicache_storage_backend
        if not self.enable_hierarchical_cache:
            raise ValueError("--hicache-storage-backend: needs --enable-hierarchical-cache "
                             "(L3 storage sits behind the host tier)")
        if backend not in MODELLED_BACKENDS:
            raise ValueError(f"--hicache-storage-backend: {backend} is not modelled; "
                             f"modelled: {', '.join(MODELLED_BACKENDS)}")
        try:
            _ = self.storage_settings
        except (OSError, ValueError) as exc:
            raise ValueError(f"--hicache-storage-backend-extra-config: {exc}") from None


# ---- argument parsing ------------------------------------------------------------------

Conv = Callable[[str], Any]


def _int(text: str) -> int:
    return int(text)


def _pos_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise ValueError("must be between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0 or math.isnan(value):
        raise ValueError("must be zero or positive")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise ValueError("must be positive")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


def _choice(options: Sequence[str], *, upper: bool = False) -> Conv:
    def conv(text: str) -> str:
        value = text.upper() if upper else text
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value
    return conv


def _argparse_choice(flag: str, options: Sequence[str]) -> Conv:
    """A choice refused in argparse's own words, as SGLang's parser refuses it."""
    def conv(text: str) -> str:
        if text not in options:
            choices = ", ".join(repr(option) for option in options)
            raise ValueError(f"argument {flag}: invalid choice: {text!r} (choose from {choices})")
        return text
    return conv


def _port(text: str) -> int:
    """A TCP port; 0 lets the kernel pick a free one (a simulator convenience, as --port 0)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port (0 to 65535)")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be zero or a positive integer")
    return value


def _spec_algorithm(text: str) -> str:
    value = _choice(SPEC_ALGORITHMS, upper=True)(text)
    return "EAGLE" if value == "NEXTN" else value  # NEXTN is an alias (speculative_hook.py)


def _hardware(text: str) -> HardwareSpec:
    return get_hardware(text)


# flag -> (EngineConfig field, converter); None converter = boolean switch.
_VALUE_FLAGS: dict[str, tuple[str, Conv]] = {
    "--model-path": ("model_path", str),
    "--model": ("model_path", str),
    "--served-model-name": ("served_model_name", str),
    "--tp-size": ("tp_size", _pos_int),
    "--tp": ("tp_size", _pos_int),
    "--tensor-parallel-size": ("tp_size", _pos_int),
    "--page-size": ("page_size", _pos_int),
    "--context-length": ("context_length", _pos_int),
    "--chunked-prefill-size": ("chunked_prefill_size", _int),
    "--max-prefill-tokens": ("max_prefill_tokens", _pos_int),
    "--max-running-requests": ("max_running_requests", _pos_int),
    "--cuda-graph-max-bs": ("cuda_graph_max_bs", _pos_int),
    "--max-queued-requests": ("max_queued_requests", _pos_int),
    "--mem-fraction-static": ("mem_fraction_static", _fraction),
    "--max-total-tokens": ("max_total_tokens", _pos_int),
    "--kv-cache-dtype": ("kv_cache_dtype", _choice(KV_DTYPES)),
    "--schedule-policy": ("schedule_policy", _choice(SCHEDULE_POLICIES)),
    "--schedule-conservativeness": ("schedule_conservativeness", _non_negative),
    "--decode-log-interval": ("decode_log_interval", _pos_int),
    "--stream-interval": ("stream_interval", _pos_int),
    "--watchdog-timeout": ("watchdog_timeout", _non_negative),
    "--speculative-algorithm": ("speculative_algorithm", _spec_algorithm),
    "--speculative-num-steps": ("speculative_num_steps", _pos_int),
    "--speculative-eagle-topk": ("speculative_eagle_topk", _pos_int),
    "--speculative-num-draft-tokens": ("speculative_num_draft_tokens", _pos_int),
    "--hicache-ratio": ("hicache_ratio", _non_negative),
    "--hicache-size": ("hicache_size", _non_negative),
    "--hicache-write-policy": ("hicache_write_policy", _choice(WRITE_POLICIES)),
    "--hicache-io-backend": ("hicache_io_backend", _choice(IO_BACKENDS)),
    "--hicache-mem-layout": ("hicache_mem_layout", _choice(MEM_LAYOUTS)),
    "--hicache-storage-backend": ("hicache_storage_backend", _choice(STORAGE_BACKENDS)),
    "--hicache-storage-prefetch-policy": ("hicache_storage_prefetch_policy",
                                          _choice(PREFETCH_POLICIES)),
    "--hicache-storage-backend-extra-config": ("hicache_storage_backend_extra_config", str),
    "--host": ("host", str),
    "--port": ("port", _pos_int),
    "--reasoning-parser": ("reasoning_parser", str),
    "--disaggregation-mode": ("disaggregation_mode",
                              _argparse_choice("--disaggregation-mode", DISAGGREGATION_MODES)),
    "--disaggregation-transfer-backend": ("disaggregation_transfer_backend", _argparse_choice(
        "--disaggregation-transfer-backend", TRANSFER_BACKENDS)),
    "--disaggregation-bootstrap-port": ("disaggregation_bootstrap_port", _port),
    "--num-reserved-decode-tokens": ("num_reserved_decode_tokens", _non_negative_int),
    "--disaggregation-decode-polling-interval": ("disaggregation_decode_polling_interval", _pos_int),
    "--tool-call-parser": ("tool_call_parser", str),
    "--sim-hardware": ("hardware", _hardware),
    "--sim-seed": ("seed", _int),
    "--sim-spec-accept-prob": ("spec_accept_prob", _probability),
    "--sim-hicache-draft-indexer": ("hicache_draft_indexer", _choice(DRAFT_INDEXER_RESTORE)),
    "--sim-spec-stale-accept-prob": ("spec_stale_accept_prob", _probability),
    "--sim-decode-interleave": ("decode_interleave", _choice(INTERLEAVE)),
    "--sim-decode-floor-us": ("decode_floor_us", _non_negative),
    "--sim-dsa-kv-default": ("dsa_kv_default", _choice(DSA_KV_DEFAULTS)),
    "--sim-storage-read-gbps": ("storage_read_gbps", _positive),
    "--sim-storage-write-gbps": ("storage_write_gbps", _positive),
    "--sim-kv-link-gbps": ("kv_link_gbps", _positive),
    "--sim-kv-setup-ms": ("kv_setup_ms", _non_negative),
}
_SWITCHES: dict[str, str] = {
    "--enable-metrics": "enable_metrics",
    "--enable-cache-report": "enable_cache_report",
    "--enable-mixed-chunk": "enable_mixed_chunk",
    "--incremental-streaming-output": "incremental_streaming_output",
    "--stream-output": "incremental_streaming_output",   # SGLang's deprecated spelling
    "--stream-response-default-include-usage": "stream_response_default_include_usage",
    "--enable-hierarchical-cache": "enable_hierarchical_cache",
    "--disable-radix-cache": "disable_radix_cache",
}


# Real SGLang launch_server flags the simulator accepts and ignores (python/sglang/srt/
# server_args.py, 0.5.12 wheel), each with what argparse reads after it: 0 nothing
# (store_true), 1 one value, "+" one or more. Deployment plumbing, logging and kernel choices
# the cost model does not distinguish; whatever is given is listed in /server_info's
# sim_unmodelled_args and the report. Any other flag is refused, as SGLang's own parser
# refuses it ("unrecognized arguments").
Nargs = Literal[0, 1, "+"]
ACCEPTED_UNMODELLED: dict[str, Nargs] = {
    # Model and tokenizer
    "--tokenizer-path": 1,
    "--tokenizer-mode": 1,
    "--skip-tokenizer-init": 0,
    "--load-format": 1,
    "--model-loader-extra-config": 1,
    "--trust-remote-code": 0,
    "--revision": 1,
    "--download-dir": 1,
    "--json-model-override-args": 1,
    "--dtype": 1,
    "--quantization": 1,
    "--device": 1,
    # HTTP server, API and templates
    "--skip-server-warmup": 0,
    "--api-key": 1,
    "--admin-api-key": 1,
    "--chat-template": 1,
    "--completion-template": 1,
    "--file-storage-path": 1,
    "--allow-auto-truncate": 0,
    "--enable-custom-logit-processor": 0,
    "--preferred-sampling-params": 1,
    "--sampling-defaults": 1,
    "--random-seed": 1,
    # Logging and observability
    "--log-level": 1,
    "--log-level-http": 1,
    "--log-requests": 0,
    "--log-requests-level": 1,
    "--show-time-cost": 0,
    "--crash-dump-folder": 1,
    "--enable-request-time-stats-logging": 0,
    "--enable-metrics-for-all-schedulers": 0,
    "--enable-trace": 0,
    "--otlp-traces-endpoint": 1,
    # Multi-node and devices
    "--dist-init-addr": 1,
    "--nccl-init-addr": 1,
    "--nnodes": 1,
    "--node-rank": 1,
    "--nccl-port": 1,
    "--dist-timeout": 1,
    "--base-gpu-id": 1,
    # Parallelism the model does not cost (it models TP only)
    "--data-parallel-size": 1,
    "--dp-size": 1,
    "--enable-dp-attention": 0,
    "--expert-parallel-size": 1,
    "--ep-size": 1,
    "--ep": 1,
    "--moe-dense-tp-size": 1,
    "--moe-a2a-backend": 1,
    "--moe-runner-backend": 1,
    "--deepep-mode": 1,
    "--enable-eplb": 0,
    # Kernels, graphs and overlap
    "--attention-backend": 1,
    "--prefill-attention-backend": 1,
    "--decode-attention-backend": 1,
    "--nsa-prefill-backend": 1,
    "--nsa-decode-backend": 1,
    "--sampling-backend": 1,
    "--grammar-backend": 1,
    "--speculative-draft-model-path": 1,
    "--speculative-draft-model": 1,
    "--disable-cuda-graph": 0,
    "--disable-cuda-graph-padding": 0,
    "--cuda-graph-bs": "+",
    "--disable-overlap-schedule": 0,
    "--enable-torch-compile": 0,
    "--torch-compile-max-bs": 1,
    "--disable-custom-all-reduce": 0,
    "--enable-flashinfer-allreduce-fusion": 0,
    "--disable-shared-experts-fusion": 0,
    "--disable-chunked-prefix-cache": 0,
    "--enable-memory-saver": 0,
    # PD disaggregation plumbing (disaggregation.py says what of PD is modelled)
    "--disaggregation-ib-device": 1,
    "--disaggregation-decode-tp": 1,
    "--disaggregation-decode-dp": 1,
    "--disaggregation-prefill-pp": 1,
    "--disaggregation-decode-enable-radix-cache": 0,
    "--disaggregation-decode-enable-offload-kvcache": 0,
    "--disaggregation-decode-extra-slots": 1,
    "--optimistic-prefill-retries": 1,
    "--load-balance-method": 1,
    "--prefill-round-robin-balance": 0,
}
ACCEPTED_UNMODELLED_HOME = "pytest_glmperf/simulator/config.py (ACCEPTED_UNMODELLED)"


def modelled_flags() -> tuple[str, ...]:
    """Every flag parse_server_args models (SGLang's and the engine's ``--sim-*``)."""
    return (*_VALUE_FLAGS, *_SWITCHES)


def parse_server_args(argv: Sequence[str], *, other_flags: Iterable[str] = ()) -> EngineConfig:
    """Parse SGLang launch_server flags into an EngineConfig.

    Accepts ``--flag value`` and ``--flag=value``. Flags in ``ACCEPTED_UNMODELLED`` (and
    their values) are kept in ``unmodelled_args``; an unknown flag, a stray value or a bad
    value raises ValueError naming it. ``other_flags``: flags a caller parsed already
    (options.py's), offered as close matches for a misspelt one.
    """
    values: dict[str, Any] = {}
    unmodelled: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        flag, inline = _split(args[i])
        if flag in _SWITCHES:
            values[_SWITCHES[flag]] = True if inline is None else _bool(flag, inline)
            i += 1
        elif flag in _VALUE_FLAGS:
            if inline is None:
                if i + 1 >= len(args):
                    raise ValueError(f"{flag}: expects a value")
                inline, i = args[i + 1], i + 1
            name, conv = _VALUE_FLAGS[flag]
            values[name] = _convert(flag, conv, inline)
            i += 1
        elif flag in ACCEPTED_UNMODELLED:
            i = _keep_unmodelled(args, i, flag, inline, unmodelled)
        elif flag.startswith("--"):
            raise ValueError(_unknown_flag(flag, other_flags))
        else:
            raise ValueError(f"unexpected argument {args[i]!r}: not a flag, nor the value of one")
    values["unmodelled_args"] = tuple(unmodelled)
    return _check(EngineConfig(**values))


def _split(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        flag, value = arg.split("=", 1)
        return flag.replace("_", "-"), value
    return (arg.replace("_", "-") if arg.startswith("--") else arg), None


def _bool(flag: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{flag}: expects true or false, got {text!r}")


def _convert(flag: str, conv: Conv, text: str) -> Any:
    try:
        return conv(text)
    except ValueError as exc:
        detail = str(exc)
        if detail.startswith(("--sim-hardware", "argument ")):
            raise
        raise ValueError(f"{flag}: invalid value {text!r} ({detail})") from None


def _keep_unmodelled(args: list[str], i: int, flag: str, inline: str | None, kept: list[str]) -> int:
    """Record an accepted flag with the values argparse would read after it; next index."""
    nargs = ACCEPTED_UNMODELLED[flag]
    kept.append(args[i])
    i += 1
    if inline is not None:
        if nargs == 0:
            _bool(flag, inline)
        return i
    if nargs == 0:
        return i
    start = i
    while i < len(args) and not args[i].startswith("--") and (nargs == "+" or i == start):
        i += 1
    if i == start:
        raise ValueError(f"{flag}: expects a value")
    kept.extend(args[start:i])
    return i


def _unknown_flag(flag: str, other_flags: Iterable[str]) -> str:
    """The error for a flag nobody knows: the nearest known spelling, and where the list is."""
    known = [*modelled_flags(), *ACCEPTED_UNMODELLED, *other_flags]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    kind = "simulator" if flag.startswith("--sim-") else "SGLang"
    return (f"unknown {kind} flag {flag}{hint}; the simulator accepts the flags it models and "
            f"{len(ACCEPTED_UNMODELLED)} real SGLang flags it ignores, listed in {ACCEPTED_UNMODELLED_HOME}")


def check_server_args(args: Sequence[str]) -> tuple[str, ...]:
    """Validate a simulated profile's ``server_args`` in-process, before any server starts.

    Takes what ``python -m pytest_glmperf.simulator`` takes (SGLang flags and the
    simulator's own: ``--host``, ``--port``, ``--time-scale``, ``--sim-*``). Returns the
    accepted but unmodelled arguments given (as ``/server_info``'s ``sim_unmodelled_args``);
    raises ValueError naming an unknown flag or a bad value. Starts nothing, opens no socket.
    """
    from .options import parse_args  # options imports this module

    _, config = parse_args(list(args))
    return config.unmodelled_args


def _check(config: EngineConfig) -> EngineConfig:
    """Cross-flag rules SGLang applies at startup."""
    if config.page_size != 64:
        raise ValueError("--page-size: DSA models (GLM-5.x) require 64 on CUDA")
    if config.enable_hierarchical_cache and config.disable_radix_cache:
        raise ValueError("--enable-hierarchical-cache: cannot be combined with "
                         "--disable-radix-cache")
    if config.speculative_algorithm not in (None, "EAGLE", "EAGLE3"):
        raise ValueError(f"--speculative-algorithm: {config.speculative_algorithm} is not "
                         "modelled (EAGLE/NEXTN/EAGLE3 are)")
    if config.spec_enabled and config.enable_mixed_chunk:
        log.warning("--enable-mixed-chunk: mixed chunked prefill is disabled because of "
                    "using eagle speculative decoding (as SGLang does)")
        config = replace(config, enable_mixed_chunk=False)
    if config.max_total_tokens is not None and config.max_total_tokens > config.profiled_pool_tokens:
        log.warning("--max-total-tokens: %d is larger than the profiled value %d; using the "
                    "profiled value instead (as SGLang does)", config.max_total_tokens,
                    config.profiled_pool_tokens)
    if config.context_length and config.context_length > 1 << 22:
        raise ValueError("--context-length: implausibly large")
    if config.disaggregated or config.disaggregation_transfer_backend == "mooncake_tcp":
        config = _check_disaggregation(config)
    if config.schedule_policy not in MODELLED_POLICIES:   # run as fcfs: say so
        config = replace(config, unmodelled_args=(
            *config.unmodelled_args, "--schedule-policy", config.schedule_policy))
    return config.validate()


def _check_disaggregation(config: EngineConfig) -> EngineConfig:
    """arg_groups/pd_disaggregation_hook.py (handle_pd_disaggregation): ``mooncake_tcp`` is
    mooncake over TCP; a prefill server refuses the fake backend; a decode server's KV is a
    chunk cache (no radix tree) unless --disaggregation-decode-enable-radix-cache, which the
    simulator accepts but does not model (it keeps the chunk cache)."""
    if config.disaggregation_transfer_backend == "mooncake_tcp":
        log.info("disaggregation transfer backend 'mooncake_tcp' -> mooncake with MC_FORCE_TCP=1 "
                 "(TCP transport, no RDMA); lower --sim-kv-link-gbps to model TCP's rate")
        config = replace(config, disaggregation_transfer_backend="mooncake")
    if config.disaggregation_mode == "prefill" and config.disaggregation_transfer_backend == "fake":
        raise ValueError("--disaggregation-transfer-backend: Prefill server does not support 'fake' "
                         "as the transfer backend")
    if config.disaggregation_mode == "decode":
        if config.enable_hierarchical_cache:
            raise ValueError("--enable-hierarchical-cache: not modelled on a decode server (its KV "
                             "is a chunk cache: decode-side HiCache offload is not modelled)")
        if not config.disable_radix_cache:
            log.warning("KV cache is forced as chunk cache for decode server")
            config = replace(config, disable_radix_cache=True)
    return config


def with_overrides(config: EngineConfig, **changes: Any) -> EngineConfig:
    """A copy with some fields changed (tests and the bench use it)."""
    return _check(replace(config, **changes))


_HIDDEN = {"hardware", "model", "seed", "spec_accept_prob", "decode_interleave",
           "dsa_kv_default", "unmodelled_args", "decode_floor_us", "hicache_draft_indexer",
           "spec_stale_accept_prob", "storage_read_gbps", "storage_write_gbps", "kv_link_gbps",
           "kv_setup_ms"}


def server_args_dict(config: EngineConfig) -> dict[str, Any]:
    """What ``/server_info`` shows: SGLang argument names (underscores), resolved values."""
    out: dict[str, Any] = {f.name: getattr(config, f.name) for f in fields(config)
                           if f.name not in _HIDDEN}
    out.update(
        served_model_name=config.served_model_name or config.model_path,
        tokenizer_path=config.model_path,
        context_length=config.resolved_context_length,
        chunked_prefill_size=config.chunked_prefill_size or config.resolved_chunked_prefill_size,
        mem_fraction_static=config.resolved_mem_fraction_static,
        kv_cache_dtype=config.resolved_kv_dtype if config.kv_cache_dtype == "auto"
        else config.kv_cache_dtype,
        max_running_requests=config.effective_max_running_requests,
        hicache_io_backend=config.resolved_hicache_io[0],
        hicache_mem_layout=config.resolved_hicache_io[1],
        cuda_graph_max_bs=config.resolved_cuda_graph_max_bs,
        speculative_num_steps=config.spec_num_steps if config.spec_enabled else None,
        speculative_eagle_topk=config.spec_topk if config.spec_enabled else None,
        speculative_num_draft_tokens=config.spec_draft_tokens if config.spec_enabled else None,
        attention_backend="dsa",
        sim_hardware=config.hardware.name,
        sim_seed=config.seed,
        sim_unmodelled_args=list(config.unmodelled_args),
    )
    if config.disaggregated:
        out.update(sim_kv_link_gbps=config.kv_link_gbps, sim_kv_setup_ms=config.kv_setup_ms)
    return out
