"""Physical constants of the simulated server: the GPUs and the model, in one place.

Every number here is a datasheet value, a count read from the model's architecture, or a
derivation from those; each says where it comes from. Efficiency factors that turn peak
numbers into achieved ones live in ``costs.py`` (they are the calibrated part).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class HardwareSpec:
    """One node of identical GPUs (per-GPU numbers unless the name says otherwise)."""

    name: str
    gpu_name: str
    num_gpus: int
    # Memory as CUDA reports it (what SGLang's get_available_gpu_memory divides by 2**30).
    hbm_bytes: int
    hbm_bandwidth: float        # B/s, datasheet peak
    fp8_flops: float            # dense tensor-core FLOP/s, datasheet (no sparsity)
    bf16_flops: float           # dense tensor-core FLOP/s, datasheet (no sparsity)
    nvlink_bandwidth: float     # B/s per direction per GPU
    pcie_h2d_bandwidth: float   # B/s host->device, one GPU copying alone (pinned, contiguous)
    gpus_per_pcie_uplink: int   # GPUs behind one PCIe switch uplink to the CPU
    sm_major: int               # 9 = Hopper; SGLang picks DSA KV dtype by this
    cuda_context_bytes: int     # taken by the CUDA context before SGLang measures free memory
    # HiCache L3 through the ``file`` storage backend (local disk), in KV bytes per second
    # one prefetch moves into the host tier, or one backup writes out (below).
    storage_read_bandwidth: float = 1.2e9
    storage_write_bandwidth: float = 1.2e9

    @property
    def hbm_gib(self) -> float:
        return self.hbm_bytes / GIB


# NVIDIA H200 SXM datasheet: 141 GB HBM3e, 4.8 TB/s, FP8 3,958 TFLOPS / BF16 1,979 TFLOPS
# *with sparsity* (dense is half), NVLink 4 at 900 GB/s bidirectional (450 GB/s per
# direction). nvidia-smi shows 143,771 MiB, which is what torch.cuda.mem_get_info sees.
# PCIe: Gen5 x16 is 64 GB/s per direction raw; one H200 alone moved 4.29 GB of pinned
# memory in 77 ms each way, 55.5 GB/s (bench/hicache_direct_io.py, 2026-12-04). On HGX
# boards two GPUs share one PCIe switch uplink to the CPU, and every TP rank loads its own
# copy of the (replicated) MLA latent at the same moment, so a path that could fill the
# link gets about half (costs.load_back_time). CUDA context + cuBLAS/NCCL handles before
# SGLang profiles memory: ~0.75 GiB (typical torch CUDA init on Hopper).
# L3 ``file`` backend (HiCacheFile: one .bin file per page and pool, read with readinto
# and copied into the host pool page by page, written with numpy tofile by TP rank 0
# only, since the MLA latent is the same on every rank): sglang#26886 (2026-06) measured
# 1.2 GB/s of disk reads (iostat) while prefetches ran under write_through. Writes are
# not measured there; the same 1.2 GB/s is assumed. In containers it can be far worse:
# sglang#21880 logged ~0.17 GB/s per 1 GB prefetch batch (io + copy time).
H200X8 = HardwareSpec(
    name="h200x8",
    gpu_name="NVIDIA H200",
    num_gpus=8,
    hbm_bytes=143_771 * MIB,
    hbm_bandwidth=4.8e12,
    fp8_flops=1.979e15,
    bf16_flops=0.989e15,
    nvlink_bandwidth=450e9,
    pcie_h2d_bandwidth=55.5e9,
    gpus_per_pcie_uplink=2,
    sm_major=9,
    cuda_context_bytes=768 * MIB,
)

# NVIDIA H100 SXM datasheet: 80 GB HBM3 (nvidia-smi 81,559 MiB), 3.35 TB/s, same tensor
# FLOPs and NVLink as H200. The GLM-5.1 cookbook says FP8 on H100 needs tp=16: at tp 8
# the weights do not fit, and the simulator refuses the configuration (see config.py).
H100X8 = replace(H200X8, name="h100x8", gpu_name="NVIDIA H100 80GB HBM3",
                 hbm_bytes=81_559 * MIB, hbm_bandwidth=3.35e12)

# NVIDIA B200 (HGX B200 datasheet: 180 GB HBM3e per GPU, 8 TB/s, FP8 4.5 PFLOPS dense,
# BF16 2.25 PFLOPS dense, NVLink 5 at 1.8 TB/s bidirectional). SGLang uses FP8 DSA KV on
# SM>=100. Offered so a user can ask "what would Blackwell change"; not calibrated.
B200X8 = HardwareSpec(
    name="b200x8",
    gpu_name="NVIDIA B200",
    num_gpus=8,
    hbm_bytes=183_359 * MIB,
    hbm_bandwidth=8.0e12,
    fp8_flops=4.5e15,
    bf16_flops=2.25e15,
    nvlink_bandwidth=900e9,
    pcie_h2d_bandwidth=55.5e9,
    gpus_per_pcie_uplink=2,
    sm_major=10,
    cuda_context_bytes=768 * MIB,
)

HARDWARE: dict[str, HardwareSpec] = {hw.name: hw for hw in (H200X8, H100X8, B200X8)}


def get_hardware(name: str) -> HardwareSpec:
    """Look a hardware profile up by name (``--sim-hardware``)."""
    try:
        return HARDWARE[name.lower()]
    except KeyError:
        known = ", ".join(sorted(HARDWARE))
        raise ValueError(f"--sim-hardware: unknown hardware {name!r}; known: {known}") from None


@dataclass(frozen=True)
class ModelSpec:
    """GLM-5.1-FP8 as the cost and memory model needs it."""

    name: str
    total_params: float         # 744B (GLM-5.mdx cookbook; HF docs)
    active_params: float        # 40B active per token
    layers: int                 # 78 (3 dense + 75 MoE)
    hidden: int                 # 6144
    vocab: int                  # 154,880
    attn_heads: int             # 64 query heads (MLA)
    q_lora_rank: int            # 2048
    kv_lora_rank: int           # 512 (MLA latent)
    qk_rope_dim: int            # 64
    v_head_dim: int             # 256
    index_heads: int            # DSA lightning indexer: 32 heads
    index_head_dim: int         # x 128
    index_topk: int             # top-2048 keys per query
    context_length: int         # max_position_embeddings 202,752
    # Per-GPU weight bytes at TP8, derived below; see weight_bytes_per_gpu.
    replicated_params: float    # projections every TP rank holds in full
    bf16_params: float          # parameters kept in BF16 in the FP8 checkpoint
    draft_params: float         # the MTP (NextN) layer used as EAGLE draft

    def weight_bytes_per_gpu(self, tp: int) -> float:
        """FP8 weights split over TP ranks, plus what every rank replicates.

        FP8 stores 1 byte per parameter (block scales add 4 B per 128x128 block, 0.02 %);
        embedding and lm_head stay BF16 (one extra byte each). SGLang's DeepSeek/GLM-DSA
        model replicates the q_a / kv_a_proj_with_mqa projections and the DSA indexer's
        projections (ReplicatedLinear in dsa_indexer.py), so those cost the full size on
        each rank instead of 1/tp.
        """
        sharded = self.total_params * (1 + 4 / 128**2) + self.bf16_params
        return sharded / tp + self.replicated_params * (1 - 1 / tp)

    def draft_weight_bytes_per_gpu(self, tp: int) -> float:
        """The MTP layer (one DSA+MoE decoder layer) as EAGLE draft, FP8, split over TP."""
        return self.draft_params / tp

    # DSA indexer FLOPs per (query token, earlier key) pair, all layers: one FP8 dot
    # product of index_heads x index_head_dim per layer. The indexer is replicated on
    # every TP rank, so this is also the per-GPU cost.
    @property
    def indexer_flops_per_pair(self) -> float:
        return 2.0 * self.index_heads * self.index_head_dim * self.layers

    # Sparse MLA attention FLOPs per query token over its top-k keys, per GPU at TP8:
    # q.k over kv_lora_rank + rope dims and p.v over kv_lora_rank (absorbed MLA), for the
    # attn_heads / tp heads this rank owns.
    def sparse_attn_flops_per_token(self, tp: int, keys: int) -> float:
        per_head = 2.0 * keys * (self.kv_lora_rank + self.qk_rope_dim + self.kv_lora_rank)
        return per_head * (self.attn_heads / tp) * self.layers

    # Linear-layer FLOPs per token per GPU: 2 FLOPs per active parameter, split over TP.
    def linear_flops_per_token(self, tp: int) -> float:
        return 2.0 * self.active_params / tp


# Replicated projections (per layer): q_a_proj hidden x q_lora_rank and
# kv_a_proj_with_mqa hidden x (kv_lora_rank + rope) = 6144 x 2624 = 16.1M; indexer
# wq_b 2048 x (32*128) + wk 6144 x 128 + weights_proj 6144 x 32 = 9.4M; x 78 layers.
_REPLICATED = 78 * (6144 * (2048 + 512 + 64) + 2048 * 32 * 128 + 6144 * 128 + 6144 * 32)
# Embedding and lm_head: 2 x 154,880 x 6144 parameters, BF16 (+1 byte over FP8 each).
_BF16_EXTRA = 2 * 154_880 * 6144
# MTP layer: one MoE decoder layer ~ (744B - dense part) / 75 MoE layers ~ 9.6B params,
# plus its eh_proj; SGLang loads it only with speculative decoding.
_DRAFT = 9.6e9

GLM51_FP8 = ModelSpec(
    name="GLM-5.1-FP8",
    total_params=744e9,
    active_params=40e9,
    layers=78,
    hidden=6144,
    vocab=154_880,
    attn_heads=64,
    q_lora_rank=2048,
    kv_lora_rank=512,
    qk_rope_dim=64,
    v_head_dim=256,
    index_heads=32,
    index_head_dim=128,
    index_topk=2048,
    context_length=202_752,
    replicated_params=float(_REPLICATED),
    bf16_params=float(_BF16_EXTRA),
    draft_params=_DRAFT,
)


def latent_bytes_per_token(model: ModelSpec, kv_dtype: str) -> int:
    """MLA latent bytes per token on one rank, all layers (the latent is replicated on every
    rank). SGLang's NSA FP8 layout: FP8 512 (nope) + 512/128*4 (scales) + 64*2 (bf16 rope) = 656 B,
    BF16 (512 + 64) * 2 = 1152 B, per layer: FP8 51,168 B; BF16 89,856 B."""
    per_layer = 656 if kv_dtype.startswith("fp8") else 2 * (model.kv_lora_rank + model.qk_rope_dim)
    return per_layer * model.layers


def indexer_bytes_per_token(model: ModelSpec) -> int:
    """DSA indexer K cache bytes per token on one rank, all layers: FP8 128 + one fp32 scale
    per 128 = 132 B per layer, whatever the KV dtype (``index_k_with_scale_buffer``)."""
    return (model.index_head_dim + 4) * model.layers


def kv_bytes_per_token(model: ModelSpec, kv_dtype: str) -> int:
    """Device KV bytes per token on one rank: latent + indexer K, FP8 61,464 B, BF16 100,152 B.
    A host load-back moves both (HiCache's host pool group: KV plus the indexer sidecar)."""
    return latent_bytes_per_token(model, kv_dtype) + indexer_bytes_per_token(model)
