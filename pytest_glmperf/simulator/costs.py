"""Step-time cost model of GLM-5.1-FP8 (MLA + DSA) under TP on the simulated GPUs.

Peak numbers come from ``hardware.py``; this module holds the *efficiencies* that turn
them into achieved times. Each efficiency is a fraction of a datasheet peak, chosen inside
the range public Hopper kernels reach, and calibrated with ``bench/engine_replay.py``
against the field report (docs/simulator.md has the table).

Shape of the model:

* prefill (extend) of tokens at positions p: linear layers (2 FLOP per active parameter,
  split over TP) + TP all-reduces + the DSA lightning indexer, which scores every earlier
  key for every query (FLOPs grow with p, and it is *replicated* on every TP rank) + the
  top-k selection over those scores + sparse MLA attention over min(p, 2048) keys;
* decode / verify of a batch: a per-layer latency floor (kernel launches and two
  all-reduces per layer, inside a CUDA graph) + weight and KV reads from HBM (the indexer
  reads the whole 132 B/token/layer index-K cache of every context) + a per-request
  top-k over each context;
* host->device load-back of KV at the io path's measured rate, capped by the PCIe share
  (hardware.py): before the forward of the batch that needs it when the path holds the
  scheduler thread (direct), else overlapped with it layer by layer (kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

from .hardware import HardwareSpec, ModelSpec, indexer_bytes_per_token, latent_bytes_per_token

# ---- efficiencies (fraction of datasheet peak) -----------------------------------------
# FP8 grouped GEMMs of a 256-expert top-8 MoE under TP8 with 8192-token chunks: each
# expert sees ~256 tokens per chunk and each GPU holds 1/8 of every expert, so the GEMMs
# are small and skinny; with the shared expert, routing, quantisation of activations and
# the dense projections this lands at ~25-35 % of FP8 peak. Calibrated: 0.27.
MFU_PREFILL_LINEAR = 0.27
# The DSA lightning indexer in prefill: DeepGEMM fp8_mqa_logits + the per-row top-2048
# selection + logit clean-up, *replicated* on every TP rank (ReplicatedLinear projections,
# no head split in dsa_indexer.py). Effective fraction of FP8 peak over the whole indexer
# path, calibrated to the field report's mtp freezes (P50 11.95 s, P95 12.84 s: one fresh
# ~100k-token prefill each) and its TTFT P50 (9.1 s, just under one prefill): 0.27 puts
# the prefill at ~10.7 s (the logits GEMM alone reaches ~40-60 %).
MFU_INDEXER = 0.27
# FlashMLA sparse prefill kernel, BF16: ~40-60 % of BF16 peak.
MFU_SPARSE_ATTN = 0.45
# Ring all-reduce bus bandwidth NCCL reaches on 8x NVLink-4 for 100 MB messages:
# ~350-400 GB/s of the 450 GB/s per direction.
ALLREDUCE_EFF = 0.80
# Streaming reads (weights, KV, logits) reach ~80-90 % of HBM peak.
HBM_EFF = 0.80
# Decode per-layer latency floor: ~15-20 kernels inside a CUDA graph (norms, MLA
# projections, indexer logits, top-k, sparse attention, router, grouped MoE, shared
# expert) at ~10-15 us each for tiny batches, plus two 8-way all-reduces (~20-30 us each).
# SGLang serves DeepSeek-V3 (61 layers) on 8x H200 at ~20-22 ms per token at batch 1,
# ~0.3 ms per layer with the weight reads; the mtp fit (EAGLE steps are plain forwards plus
# drafts) needs this size. 0.25 ms x 78 layers = 19.5 ms, ~23 ms per token at batch 1 and
# ~26 ms at batch 4 with 100k contexts. (The field's hicache run, read through Little's law,
# decoded ~2 streams at ~58 tok/s: docs/simulator.md, "Warm hicache queues too little".)
DECODE_LAYER_FLOOR_S = 250e-6
# Top-k (2048 of L) per layer in decode: one radix-select launch over the batch's fp32
# scores (the score traffic itself is counted with the indexer).
TOPK_LAUNCH_S = 6e-6
# Scheduler CPU work that the overlap scheduler cannot hide: building a prefill batch
# (radix match, allocation, metadata) ~ a few ms; decode steps ~ 0.5 ms.
PREFILL_BATCH_OVERHEAD_S = 4e-3
DECODE_BATCH_OVERHEAD_S = 0.5e-3
# EAGLE draft forward: one MTP decoder layer (DSA indexer, sparse MLA, 256-expert MoE) +
# eh_proj + norm + top-1 sampling, each pass its own CUDA-graph replay, in units of a
# decode layer's floor: 5 (~1.25 ms, + the lm_head read).
DRAFT_PASS_LAYERS = 5.0
# Per verify step: building the draft chain, verification sampling and the accept/
# rewind bookkeeping of the KV slots, the host sync for accept lengths (eagle_worker_v2
# verify + draft-extend glue). With the draft passes this makes an EAGLE step at batch 1
# 1.5x a plain decode step (34 vs 23 ms), in line with the ~1.8x batch-1 speedups reported
# for DeepSeek-V3 MTP at accept length ~2.8; calibrated with the field's mtp decode rate
# (~75-85 tok/s per stream alone and at batch 4; docs/simulator.md).
SPEC_STEP_OVERHEAD_S = 5e-3
# Host->device load-back per --hicache-io-backend: the share of a PCIe link its copies use
# when the link is what limits them, and a per-GPU rate cap where something else does.
# Measured on an H200 with bench/hicache_direct_io.py (2026-12-04, three runs) through the
# ops of sglang-kernel 0.4.2.post2, the build SGLang 0.5.12 pins, loading a 100.8k-token
# hit (FP8 latent + indexer, 6.2 GB, 78 layers, checked byte for byte):
#   direct, page_first_direct (transfer_kv_per_layer_direct_pf_lf, page-sized copy-engine
#   transfers): 0.128-0.137 s alone (45-48 GB/s of the link's 55.5); two processes loading
#   through the same link at once 0.240-0.265 s each (47-51 GB/s together). Share 0.85.
#   kernel, page_first (transfer_kv_per_layer_mla_pf_lf, the fallback SGLang takes because
#   its JIT kernel needs 128-byte multiples and the FP8 cell is 656 B): 0.448-0.480 s alone,
#   12.9-13.8 GB/s: two blocks of 32 warps keep too few reads in flight to fill the link,
#   so it is latency-bound at ~13.3 GB/s. (Two processes on one GPU time-slice its
#   kernels, so how it shares an uplink between two GPUs is not measured.)
# The direct ops return only when their copies are all but done (the load issued in
# 0.127-0.136 s of 0.128-0.137 s, the backup in 0.091 of 0.102 s: CUDA's copy queue holds
# 1-12 ms of them), and SGLang calls them from the scheduler thread as it forms the batch
# (HiCacheController.start_loading from get_new_batch_prefill), so the batch launches
# after its load. The kernel path is issued in 2 ms and its layers wait for theirs on the
# GPU.
# kernel_ascend is not measured and taken as filling the link.


@dataclass(frozen=True)
class LoadBackPath:
    """How one io backend's host->device copies use the PCIe link."""

    link_share: float             # of the link's rate, when the link limits the copies
    rate_cap: float | None = None  # B/s per GPU, when the path itself limits them
    holds_scheduler: bool = False  # issuing the copies blocks until they are done


LOAD_BACK_PATHS = {"direct": LoadBackPath(0.85, holds_scheduler=True),
                   "kernel": LoadBackPath(1.0, 13.3e9), "kernel_ascend": LoadBackPath(1.0)}


@dataclass(frozen=True)
class Segment:
    """A run of prompt tokens computed in one step: positions [start, start + count)."""

    start: int
    count: int


class CostModel:
    """Turns a step's work into model seconds; pure and cheap (closed forms only)."""

    def __init__(self, hardware: HardwareSpec, model: ModelSpec, tp: int,
                 layer_floor_s: float | None = None) -> None:
        """``layer_floor_s`` overrides DECODE_LAYER_FLOOR_S (``--sim-decode-floor-us``)."""
        self.hw, self.model, self.tp = hardware, model, tp
        floor = DECODE_LAYER_FLOOR_S if layer_floor_s is None else layer_floor_s
        fp8, bf16 = hardware.fp8_flops, hardware.bf16_flops
        hbm = hardware.hbm_bandwidth * HBM_EFF
        self._linear_per_token = model.linear_flops_per_token(tp) / (fp8 * MFU_PREFILL_LINEAR)
        # Two all-reduces of the hidden state (BF16) per layer; ring moves 2(tp-1)/tp of it.
        ring = 2 * (tp - 1) / tp if tp > 1 else 0.0
        allreduce_bytes = 2 * model.layers * model.hidden * 2 * ring
        self._comm_per_token = allreduce_bytes / (hardware.nvlink_bandwidth * ALLREDUCE_EFF)
        # Indexer per (query, earlier key) pair: FP8 MQA logits, plus writing and reading
        # back one fp32 logit per layer for top-k.
        self._index_per_pair = (model.indexer_flops_per_pair / (fp8 * MFU_INDEXER)
                                + 8 * model.layers / hbm)
        self._attn_per_key = (model.sparse_attn_flops_per_token(tp, 1)
                              / (bf16 * MFU_SPARSE_ATTN))
        self._hbm = hbm
        # Decode reads: index-K cache (132 B per token per layer) for the indexer, and the
        # top-k selected latent entries (FP8 cell, 656 B per layer) for attention.
        self._index_bytes_per_ctx_token = indexer_bytes_per_token(model)
        self._latent_bytes = latent_bytes_per_token(model, "fp8_e4m3")
        self._layer_floor = floor * model.layers
        self._draft_pass = floor * DRAFT_PASS_LAYERS + (
            2 * model.vocab * model.hidden / tp) / hbm

    # ---- prefill ------------------------------------------------------------------------

    def prefill_time(self, segments: list[Segment], *, with_draft: bool = False) -> float:
        """Time of one extend forward over ``segments`` (all chunks in the batch)."""
        tokens = sum(s.count for s in segments)
        if tokens == 0:
            return 0.0
        pairs = sum(_sum_positions(s.start, s.count) for s in segments)
        keys = sum(_sum_keys(s.start, s.count, self.model.index_topk) for s in segments)
        t = tokens * (self._linear_per_token + self._comm_per_token)
        t += pairs * self._index_per_pair + keys * self._attn_per_key
        t += self._layer_floor  # a prefill forward is never shorter than a decode one
        if with_draft:  # EAGLE draft extend: the MTP layer over the same tokens
            t *= 1 + 1 / self.model.layers
        return t + PREFILL_BATCH_OVERHEAD_S

    # ---- decode / verify ----------------------------------------------------------------

    def decode_time(self, batch: int, context_tokens: int, tokens_per_req: int = 1) -> float:
        """Time of one decode (or verify) forward of ``batch`` requests.

        ``context_tokens`` is the sum of their context lengths; ``tokens_per_req`` is 1 for
        plain decode and num_draft_tokens for an EAGLE verify (the query tokens of one
        request share one pass over its index-K cache).
        """
        if batch == 0:
            return 0.0
        q = batch * tokens_per_req
        m = self.model
        weights = self._decode_weight_bytes(q) / self._hbm
        # Indexer: read each context's index-K once, score every query token against it
        # (FP8 FLOPs), write and re-read one fp32 logit per (query, key) for top-k.
        index = context_tokens * self._index_bytes_per_ctx_token / self._hbm
        index += tokens_per_req * context_tokens * self._index_per_pair
        attn = q * m.index_topk * self._latent_bytes / self._hbm
        topk = m.layers * TOPK_LAUNCH_S
        linear = q * self._linear_per_token
        return self._layer_floor + weights + index + attn + topk + linear \
            + DECODE_BATCH_OVERHEAD_S

    def decode_extra_time(self, batch: int, context_tokens: int) -> float:
        """What ``batch`` decode tokens add to a prefill forward they ride along with
        (mixed chunk): their reads and per-token work, without a second latency floor."""
        if batch == 0:
            return 0.0
        return (self.decode_time(batch, context_tokens) - self._layer_floor
                - DECODE_BATCH_OVERHEAD_S)

    def draft_time(self, batch: int, passes: int) -> float:
        """EAGLE draft passes (MTP layer + lm_head), ``passes`` sequential forwards."""
        if batch == 0 or passes <= 0:
            return 0.0
        return passes * (self._draft_pass + batch * self._linear_per_token / self.model.layers)

    def verify_step_time(self, batch: int, context_tokens: int, draft_tokens: int,
                         draft_passes: int) -> float:
        """One EAGLE decode step: draft passes, the target verify over draft_tokens per
        request, and the draft-extend over the same tokens."""
        if batch == 0:
            return 0.0
        return (self.draft_time(batch, draft_passes)
                + self.decode_time(batch, context_tokens, draft_tokens)
                + self.draft_time(batch * draft_tokens, 1) + SPEC_STEP_OVERHEAD_S)

    def _decode_weight_bytes(self, tokens: int) -> float:
        """Per-GPU weight bytes one decode forward reads: attention and shared expert
        always, plus the routed experts the batch touches (8 of 256 per token, distinct
        experts grow as 256 * (1 - (1 - 8/256)^tokens))."""
        m = self.model
        expert_params = 3 * m.hidden * 2048  # gate, up, down at moe_intermediate 2048
        distinct = 256 * (1 - (1 - 8 / 256) ** tokens)
        moe = (distinct + 1) * expert_params * 75 / self.tp
        attn = m.replicated_params + 78 * 2 * m.hidden * m.attn_heads * m.v_head_dim / self.tp
        return moe + attn

    # ---- HiCache ------------------------------------------------------------------------

    def load_back_time(self, tokens: int, bytes_per_token: int, io_backend: str = "kernel") -> float:
        """Host->device copy of ``tokens`` KV entries on every rank at once. Every TP rank
        loads its own copy of the replicated latent at the same moment, so the GPUs behind
        one switch uplink split it; a latency-bound path is held at its own cap."""
        path = LOAD_BACK_PATHS.get(io_backend, LoadBackPath(1.0))
        sharers = max(1, min(self.hw.gpus_per_pcie_uplink, self.tp))
        rate = self.hw.pcie_h2d_bandwidth * path.link_share / sharers
        if path.rate_cap is not None:
            rate = min(rate, path.rate_cap)
        return tokens * bytes_per_token / rate

    def load_back_step(self, compute: float, load_left: float,
                       io_backend: str) -> tuple[float, float]:
        """A prefill batch's duration when its load-backs still need ``load_left`` seconds
        once the GPU could start it, and how long its launch waits. A path that holds the
        scheduler thread launches the forward after its copies; the others launch at once
        and each layer waits for its own copies."""
        if load_left > 0 and LOAD_BACK_PATHS.get(io_backend, LoadBackPath(1.0)).holds_scheduler:
            return load_left + compute, load_left
        return max(compute, load_left + compute / self.model.layers), 0.0


def _sum_positions(start: int, count: int) -> int:
    """Sum of earlier-key counts for queries at positions start .. start+count-1."""
    return count * start + count * (count - 1) // 2


def _sum_keys(start: int, count: int, topk: int) -> int:
    """Sum over the queries of min(position + 1, topk): keys sparse attention reads."""
    end = start + count  # queries at positions start..end-1 see position+1 keys
    if start >= topk:
        return count * topk
    ramp_end = min(end, topk)
    ramp = (ramp_end * (ramp_end + 1) - start * (start + 1)) // 2
    return ramp + max(0, end - topk) * topk
