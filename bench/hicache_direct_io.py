"""Measure HiCache's host->device copy paths on a real CUDA GPU (needs torch; cupy for the
gather kernel). Not part of the test suite: it prints the figures behind the simulator's
load-back model (costs.LOAD_BACK_PATHS, docs/simulator.md "Load-back").

SGLang loads a host hit layer by layer from the scheduler thread
(``HiCacheController.start_loading``): the MLA latent, then the DSA indexer sidecar. With
the field's ``--hicache-io-backend direct --hicache-mem-layout page_first`` (resolved to
``page_first_direct``) that is one copy per page, layer and pool: a 100.8k-token hit is
1,575 pages x 78 layers x 2 = 245,700 copies of 42 KB and 8 KB, so how the copies are
submitted can matter more than the link. The script times, on a hit checked byte for byte:

* one contiguous pinned copy each way (the link's rate), and copies of page sizes one
  ATen ``copy_`` at a time (the per-copy cost);
* the per-page loop issued one ATen ``copy_`` at a time (compiled C++, as one version of
  sgl-kernel's ``transfer.cu`` reads), and a gather kernel reading pinned memory in place;
* with ``--sgl-kernel DIR``, SGLang's own ops from the build SGLang 0.5.12 pins: ``direct``
  load and backup, and the ``kernel`` load; with ``--ranks N`` also N processes loading at
  once, as TP ranks do (several on one GPU share its PCIe link);
* with ``--host-numa local|remote``, host pools bound to the GPU's NUMA node or another one.
  SGLang 0.5.12 binds each rank to its GPU's node only where ``set_mempolicy`` is allowed;
  Docker's default seccomp profile allows it only with ``cap_add: [SYS_NICE]``, which the
  field's compose files lack, so their ranks ran ``unbound`` (the default here) and their
  200 GB pinned pools landed wherever first touch put them. Each run prints the share of
  every pool's pages on each node.

    python bench/hicache_direct_io.py [--tokens 100800] [--out FILE.json]
        [--sgl-kernel DIR [--ranks 8]] [--host-numa unbound|local|remote]
    python bench/hicache_direct_io.py --smoke      # tiny sizes, any device: checks itself

DIR holds ``common_ops.abi3.so`` from ``sgl_kernel/sm90/`` of the sglang-kernel 0.4.2.post2
wheel (``pip download --no-deps sglang-kernel==0.4.2.post2``; it needs torch 2.11 with
CUDA 13) and Debian's ``libnuma.so.1``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.cpp_extension import load_inline

PAGE = 64
LAYERS = 78
LATENT_ITEM = 656    # FP8 MLA cell per token per layer (docs/simulator.md, memory)
INDEXER_ITEM = 132   # DSA index-K + scale per token per layer
BF16_LATENT_ITEM = 1152

CPP = r"""
#include <torch/extension.h>
#include <vector>

// One layer of a page_first_direct -> layer_first load, as one version of sgl-kernel's
// transfer.cu writes it (the build SGLang 0.5.12 pins submits far more cheaply: see
// --sgl-kernel): per page, the slots come from CPU index tensors via item(), the page is a
// view of the host pool, and one non-blocking ATen copy_ moves it.
void load_layer_pages(const torch::Tensor& host, torch::Tensor dev_layer,
                      const torch::Tensor& host_idx, const torch::Tensor& dev_idx,
                      int64_t layer, int64_t page) {
  const int64_t pages = host_idx.size(0) / page;
  for (int64_t i = 0; i < pages; ++i) {
    const int64_t host_page = host_idx[i * page].item<int64_t>() / page;
    const int64_t dev_slot = dev_idx[i * page].item<int64_t>();
    auto src = host.select(0, host_page).select(0, layer);
    dev_layer.slice(0, dev_slot, dev_slot + page).copy_(src.slice(0, 0, page), true);
  }
}

// The write-through backup (layer_first -> page_first_direct, all layers per page).
void backup_pages(const std::vector<torch::Tensor>& dev_layers, torch::Tensor host,
                  const torch::Tensor& dev_idx, const torch::Tensor& host_idx, int64_t page) {
  const int64_t pages = dev_idx.size(0) / page;
  const int64_t layers = static_cast<int64_t>(dev_layers.size());
  for (int64_t i = 0; i < pages; ++i) {
    const int64_t dev_slot = dev_idx[i * page].item<int64_t>();
    const int64_t host_page = host_idx[i * page].item<int64_t>() / page;
    for (int64_t j = 0; j < layers; ++j) {
      auto dst = host.select(0, host_page).select(0, j);
      dst.slice(0, 0, page).copy_(dev_layers[j].slice(0, dev_slot, dev_slot + page), true);
    }
  }
}

// N same-size copies from one pinned buffer, for the per-copy cost against copy size.
void copy_many(const torch::Tensor& src, torch::Tensor dst, int64_t count, int64_t bytes) {
  const int64_t slots = src.size(0) / bytes;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t at = (i % slots) * bytes;
    dst.slice(0, at, at + bytes).copy_(src.slice(0, at, at + bytes), true);
  }
}
"""

GATHER = r"""
extern "C" __global__ void gather(unsigned long long src, unsigned long long dst,
                                  const long long* src_idx, const long long* dst_idx,
                                  long long items, long long item_bytes,
                                  long long src_page_stride, long long page) {
  // One warp per token, 4-byte words read straight from pinned host memory (UVA). Host
  // token h sits in page h / page at offset h % page; device slots are item_bytes apart.
  long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (warp >= items) return;
  long long h = src_idx[warp];
  const unsigned* s = (const unsigned*)(src + (h / page) * src_page_stride
                                        + (h % page) * item_bytes);
  unsigned* d = (unsigned*)(dst + dst_idx[warp] * item_bytes);
  for (long long w = lane; w < item_bytes / 4; w += 32) d[w] = s[w];
}
"""


@dataclass
class Timing:
    """One measured case: CPU time to issue it, and wall time until the GPU finished."""

    case: str
    copies: int
    bytes: int
    issue_s: float
    done_s: float

    @property
    def gbps(self) -> float:
        return self.bytes / self.done_s / 1e9

    def row(self) -> str:
        per_copy = f"{self.done_s / self.copies * 1e6:8.2f} us/copy" if self.copies else ""
        return (f"{self.case:<44} {self.bytes / 1e9:7.2f} GB  issue {self.issue_s:7.3f} s"
                f"  done {self.done_s:7.3f} s  {self.gbps:6.1f} GB/s {per_copy}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(case: str, copies: int, nbytes: int, device: torch.device,
          work: Callable[[], None], repeats: int = 3) -> Timing:
    """Best of ``repeats``: the loop's issue time and the time until the device is idle."""
    best: Timing | None = None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        work()
        issued = time.perf_counter()
        _sync(device)
        done = time.perf_counter()
        t = Timing(case, copies, nbytes, issued - start, done - start)
        if best is None or t.done_s < best.done_s:
            best = t
    assert best is not None
    print(best.row(), flush=True)
    return best


SYS_SET_MEMPOLICY, SYS_GET_MEMPOLICY = {"aarch64": (237, 236)}.get(platform.machine(),
                                                                  (238, 239))  # x86_64
MPOL_BIND, MPOL_F_NODE, MPOL_F_ADDR = 2, 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def numa_nodes() -> list[int]:
    """The machine's online NUMA nodes (one, node 0, where sysfs says nothing)."""
    try:
        with open("/sys/devices/system/node/online") as f:
            return sorted(_sysfs_list(f.read()))
    except OSError:
        return [0]


def _sysfs_list(text: str) -> set[int]:
    """Parse a sysfs list such as ``0-3,8``."""
    out: set[int] = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def gpu_numa_node(gpu: int) -> int:
    """The NUMA node of the GPU's PCIe attachment, from sysfs as SGLang and torch read it
    (node 0 without CUDA, for --smoke)."""
    if not torch.cuda.is_available():
        return 0
    p = torch.cuda.get_device_properties(gpu)
    path = (f"/sys/bus/pci/devices/{p.pci_domain_id:04x}:{p.pci_bus_id:02x}:"
            f"{p.pci_device_id:02x}.0/numa_node")
    with open(path) as f:
        return max(int(f.read()), 0)


def bind_host_memory(mode: str, gpu: int) -> int | None:
    """Bind this process's CPUs and new memory to a NUMA node, as ``numactl --cpunodebind
    --membind`` does (SGLang's rank binding): ``local`` is the GPU's node, ``remote`` the
    next other node, ``unbound`` leaves placement to first touch. Returns the node bound."""
    if mode == "unbound":
        return None
    nodes, home = numa_nodes(), gpu_numa_node(gpu)
    others = [n for n in nodes if n != home]
    if mode == "remote" and not others:
        raise SystemExit(f"--host-numa remote needs a second NUMA node; this machine has {nodes}")
    node = home if mode == "local" else others[0]
    with open(f"/sys/devices/system/node/node{node}/cpulist") as f:
        os.sched_setaffinity(0, _sysfs_list(f.read()))
    mask = ctypes.c_ulong(1 << node)
    if _libc.syscall(SYS_SET_MEMPOLICY, MPOL_BIND, ctypes.byref(mask), ctypes.c_ulong(65)):
        err = ctypes.get_errno()
        raise SystemExit(f"set_mempolicy refused ({os.strerror(err)}); in a container, "
                         "add --cap-add SYS_NICE")
    return node


def page_nodes(t: torch.Tensor, samples: int = 512) -> dict[int, float] | None:
    """Share of ``t``'s pages on each NUMA node, from ``samples`` pages spread over it
    (get_mempolicy with MPOL_F_NODE | MPOL_F_ADDR); None where the kernel refuses."""
    page, base, size = os.sysconf("SC_PAGE_SIZE"), t.data_ptr(), t.numel() * t.element_size()
    counts: dict[int, int] = {}
    node = ctypes.c_int()
    for i in range(samples):
        addr = (base + size * i // samples) // page * page
        if _libc.syscall(SYS_GET_MEMPOLICY, ctypes.byref(node), None, ctypes.c_ulong(0),
                         ctypes.c_void_p(addr), ctypes.c_ulong(MPOL_F_NODE | MPOL_F_ADDR)):
            return None
        counts[node.value] = counts.get(node.value, 0) + 1
    return {n: c / samples for n, c in sorted(counts.items())}


def placement(hit: Hit, gpu: int, bound: int | None) -> dict[str, Any]:
    """Where a hit's host pools live, against its GPU's NUMA node."""
    return {"gpu": gpu, "gpu_node": gpu_numa_node(gpu), "bound_node": bound,
            "latent_pages": page_nodes(hit.latent.host),
            "indexer_pages": page_nodes(hit.indexer.host)}


def placement_row(where: dict[str, Any]) -> str:
    def shares(pages: dict[int, float] | None) -> str:
        if pages is None:
            return "unknown (get_mempolicy refused: in a container, add --cap-add SYS_NICE)"
        return ", ".join(f"node {n} {share:.0%}" for n, share in pages.items())

    return (f"GPU {where['gpu']} on node {where['gpu_node']}, bound to "
            f"{where['bound_node'] if where['bound_node'] is not None else 'none'}: latent "
            f"pages {shares(where['latent_pages'])}; indexer {shares(where['indexer_pages'])}")


class Pools:
    """Host pools in page_first_direct layout and device pools in layer_first layout."""

    def __init__(self, pages: int, layers: int, item: int, device: torch.device) -> None:
        pin = device.type == "cuda"
        self.item, self.layers = item, layers
        self.host = torch.empty((pages, layers, PAGE, 1, item), dtype=torch.uint8,
                                pin_memory=pin)
        self.dev = [torch.empty((pages * PAGE, 1, item), dtype=torch.uint8, device=device)
                    for _ in range(layers)]

    def fill(self) -> None:
        """Distinct bytes per (page, layer, token), so a misplaced copy shows."""
        pages = self.host.shape[0]
        marks = torch.arange(pages * self.layers * PAGE, dtype=torch.int64) % 251
        self.host.copy_(marks.view(pages, self.layers, PAGE, 1, 1).to(torch.uint8)
                        .expand_as(self.host))


def slots(pages: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices of a hit: host pages scattered (LRU-freed slots), device pages too."""
    g = torch.Generator().manual_seed(seed)
    host_pages = torch.randperm(pages, generator=g)
    dev_pages = torch.randperm(pages, generator=g)
    offsets = torch.arange(PAGE)
    host_idx = (host_pages[:, None] * PAGE + offsets).reshape(-1)
    dev_idx = (dev_pages[:, None] * PAGE + offsets).reshape(-1)
    return host_idx, dev_idx


@dataclass
class Hit:
    """One FP8 host hit: the latent and indexer pools and the token slots it moves."""

    latent: Pools
    indexer: Pools
    host_idx: torch.Tensor
    dev_idx: torch.Tensor
    device: torch.device

    @classmethod
    def make(cls, tokens: int, device: torch.device, seed: int) -> Hit:
        pages = tokens // PAGE
        return cls(Pools(pages, LAYERS, LATENT_ITEM, device),
                   Pools(pages, LAYERS, INDEXER_ITEM, device), *slots(pages, seed), device)

    @property
    def tokens(self) -> int:
        return self.host_idx.numel()

    @property
    def latent_bytes(self) -> int:
        return self.tokens * LAYERS * LATENT_ITEM

    @property
    def nbytes(self) -> int:
        return self.tokens * LAYERS * (LATENT_ITEM + INDEXER_ITEM)

    def checked(self, load: Callable[[], None]) -> Callable[[], None]:
        """Run ``load`` once into zeroed device pools, check every page it placed (first
        and last layer, both pools) against the host pool, and hand it back for timing."""
        for pool in (self.latent, self.indexer):
            for d in pool.dev:
                d.zero_()
        load()
        _sync(self.device)
        for pool in (self.latent, self.indexer):
            for layer in (0, LAYERS - 1):
                got = pool.dev[layer][self.dev_idx.to(self.device)].cpu()
                want = pool.host[self.host_idx // PAGE, layer, self.host_idx % PAGE]
                if not torch.equal(got, want):
                    raise SystemExit(f"a load copied the wrong bytes at layer {layer}")
        return load


def measure_contiguous(device: torch.device, nbytes: int) -> list[Timing]:
    """One copy of nbytes each way: the link's rate (hardware.pcie_h2d_bandwidth)."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return [timed("contiguous H2D", 1, nbytes, device, lambda: dev.copy_(host, True)),
            timed("contiguous D2H", 1, nbytes, device, lambda: host.copy_(dev, True))]


def measure_sizes(ext: Any, device: torch.device, count: int) -> list[Timing]:
    """Per-copy cost against copy size (pinned H2D, non-blocking ATen copy_)."""
    span = 64 << 20
    host = torch.empty(span, dtype=torch.uint8, pin_memory=device.type == "cuda")
    dev = torch.empty(span, dtype=torch.uint8, device=device)
    out = []
    for size in (4096, PAGE * INDEXER_ITEM, PAGE * LATENT_ITEM, PAGE * BF16_LATENT_ITEM,
                 1 << 20, 8 << 20):
        n = min(count, max(64, (8 << 30) // size))
        out.append(timed(f"{n} copies of {size} B", n, n * size, device,
                         lambda n=n, size=size: ext.copy_many(host, dev, n, size)))
    return out


def measure_hit(ext: Any, device: torch.device, tokens: int, bound: int | None,
                sgl: Any = None) -> tuple[list[Timing], dict[str, Any]]:
    """One FP8 host hit of ``tokens`` through each path, checked byte for byte, and where
    its host pools live."""
    hit = Hit.make(tokens, device, seed=1)
    hit.latent.fill()
    hit.indexer.fill()
    where = placement(hit, 0, bound)
    print(placement_row(where), flush=True)
    pages = tokens // PAGE
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def load() -> None:
        """start_loading's order, one ATen copy_ per page: per layer, latent then indexer."""
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for layer in range(LAYERS):
                for pool in (hit.latent, hit.indexer):
                    ext.load_layer_pages(pool.host, pool.dev[layer], hit.host_idx,
                                         hit.dev_idx, layer, PAGE)

    def backup() -> None:
        ext.backup_pages(hit.latent.dev, hit.latent.host, hit.dev_idx, hit.host_idx, PAGE)

    out = [timed(f"per-page copy_ load {tokens} tok", pages * LAYERS * 2, hit.nbytes, device,
                 hit.checked(load)),
           timed(f"per-page copy_ backup {tokens} tok latent", pages * LAYERS,
                 hit.latent_bytes, device, backup)]
    if device.type == "cuda":
        out.append(measure_gather(hit))
    if sgl is not None:
        out += measure_sglang(SglangLoads(sgl, hit))
    return out, where


def load_sgl_kernel(folder: str) -> Any:
    """Import sgl-kernel's ``common_ops`` extension by path (the sm90 build from the wheel
    SGLang 0.5.12 pins, sglang-kernel 0.4.2.post2), first loading the shared libraries it
    names that torch does not (libnuma beside it, NVRTC from the nvidia wheels)."""
    import ctypes
    import glob
    import importlib.util
    import site

    wanted = [os.path.join(folder, "libnuma.so.1")]
    for root in site.getsitepackages():
        wanted += sorted(glob.glob(os.path.join(root, "nvidia", "**", "libnvrtc.so.13*"),
                                   recursive=True))[:1]
    for path in wanted:
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    spec = importlib.util.spec_from_file_location(
        "common_ops", os.path.join(folder, "common_ops.abi3.so"))
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return torch.ops.sgl_kernel


class SglangLoads:
    """One hit loaded through SGLang's own ops, as MLATokenToKVPoolHost and
    NSAIndexerPoolHost call them from ``HiCacheController.start_loading``: layer by layer,
    the latent then the indexer sidecar, on a side stream."""

    def __init__(self, sgl: Any, hit: Hit) -> None:
        self.sgl, self.hit = sgl, hit
        self.stream = torch.cuda.Stream()
        self._kernel_args: list[tuple[Any, ...]] | None = None

    def direct(self) -> None:
        """``direct`` io with the page_first_direct layout (the field's hicache profile)."""
        hit = self.hit
        with torch.cuda.stream(self.stream):
            for layer in range(LAYERS):
                for pool in (hit.latent, hit.indexer):
                    self.sgl.transfer_kv_per_layer_direct_pf_lf(
                        [pool.host], [pool.dev[layer]], hit.host_idx, hit.dev_idx, layer, PAGE)

    def backup(self) -> None:
        """The write-through backup of the latent, all layers at once (D2H)."""
        hit = self.hit
        with torch.cuda.stream(self.stream):
            self.sgl.transfer_kv_all_layer_direct_lf_pf(
                hit.latent.dev, [hit.latent.host], hit.dev_idx, hit.host_idx, PAGE)

    def kernel(self) -> None:
        """``kernel`` io with the page_first layout: sgl-kernel's gather, which SGLang takes
        for the FP8 cell (its JIT kernel needs 128-byte multiples; the cell is 656 B)."""
        with torch.cuda.stream(self.stream):
            for layer in range(LAYERS):
                for src, dev, src_idx, dst_idx, item in self._page_first():
                    self.sgl.transfer_kv_per_layer_mla_pf_lf(
                        src, dev[layer], src_idx, dst_idx, layer, item, LAYERS * item, 2, 32)

    def _page_first(self) -> list[tuple[Any, ...]]:
        """Host copies in page_first layout, indices on the GPU. The latent moves per token
        ([token, layer, 1, item]); the indexer's 132 B rows are not 8-byte items, so it
        moves per page ([page, layer, 1, 64 x 132]) as NSAIndexerPoolHost does."""
        if self._kernel_args is None:
            latent, indexer = self.hit.latent, self.hit.indexer
            pages = self.hit.tokens // PAGE
            host, dev = self.hit.host_idx.cuda(), self.hit.dev_idx.cuda()
            latent_pf = (latent.host.permute(0, 2, 1, 3, 4)
                         .reshape(-1, LAYERS, 1, latent.item).pin_memory())
            page_item = PAGE * indexer.item
            index_pf = indexer.host.view(pages, LAYERS, 1, page_item)
            index_dev = [d.view(pages, 1, page_item) for d in indexer.dev]
            self._kernel_args = [
                (latent_pf, latent.dev, host, dev, latent.item),
                (index_pf, index_dev, host[::PAGE] // PAGE, dev[::PAGE] // PAGE, page_item)]
        return self._kernel_args


def measure_sglang(loads: SglangLoads) -> list[Timing]:
    """The hit through SGLang's ops: direct load and backup, and the kernel load."""
    hit = loads.hit
    tokens, pages, cuda = hit.tokens, hit.tokens // PAGE, torch.device("cuda")
    return [timed(f"sglang direct load {tokens} tok", pages * LAYERS * 2, hit.nbytes,
                  cuda, hit.checked(loads.direct)),
            timed(f"sglang direct backup {tokens} tok latent", pages * LAYERS,
                  hit.latent_bytes, cuda, loads.backup),
            timed(f"sglang kernel load {tokens} tok", 0, hit.nbytes, cuda,
                  hit.checked(loads.kernel))]


def measure_gather(hit: Hit) -> Timing:
    """A gather kernel, one warp per token, per layer and pool, reading pinned host memory
    in place: what a kernel io path reaches with enough reads in flight."""
    import cupy

    kernel = cupy.RawKernel(GATHER, "gather")
    src_idx = cupy.asarray(hit.host_idx.numpy())
    dst_idx = cupy.asarray(hit.dev_idx.numpy())
    threads = 256
    blocks = (hit.tokens * 32 + threads - 1) // threads

    def load() -> None:
        for layer in range(LAYERS):
            for pool in (hit.latent, hit.indexer):
                base = pool.host.data_ptr() + layer * PAGE * pool.item
                kernel((blocks,), (threads,), (
                    cupy.uint64(base), cupy.uint64(pool.dev[layer].data_ptr()), src_idx,
                    dst_idx, cupy.int64(hit.tokens), cupy.int64(pool.item),
                    cupy.int64(LAYERS * PAGE * pool.item), cupy.int64(PAGE)))
        cupy.cuda.Device().synchronize()

    return timed(f"gather kernel {hit.tokens} tok", 0, hit.nbytes, hit.device,
                 hit.checked(load))


def concurrent_loads(folder: str, ranks: int, tokens: int, host_numa: str,
                     repeats: int = 4) -> dict[str, Any]:
    """``ranks`` processes each load their own hit through SGLang's ops at the same instant,
    as the TP ranks of one server do (GPU = rank % device count; two ranks on one GPU share
    its PCIe link, as two GPUs share a switch uplink on HGX boards). A TP step waits for
    its slowest rank, so each repeat's time is the slowest rank's, per io backend; the
    ranks' host-pool placement comes back too."""
    ctx = torch.multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(ranks), ctx.Queue()
    procs = [ctx.Process(target=_rank_loads, args=(folder, rank, tokens, repeats, host_numa,
                                                   barrier, queue)) for rank in range(ranks)]
    for proc in procs:
        proc.start()
    per_rank = sorted((queue.get(timeout=900) for _ in procs), key=lambda r: r["rank"])
    for proc in procs:
        proc.join()
    return slowest_ranks(per_rank)


def slowest_ranks(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Per io backend and repeat, the slowest rank's load and the longest any rank's caller
    was held; or the error of the rank that failed first (not the others' broken barrier)."""
    failed = [r for r in per_rank if "error" in r]
    if failed:
        causes = [r for r in failed if "BrokenBarrierError" not in r["error"]] or failed
        raise SystemExit("; ".join(f"rank {r['rank']}: {r['error']}" for r in causes))

    def slowest(key: str, io: str) -> list[float]:
        return [max(each) for each in zip(*(r[key][io] for r in per_rank), strict=True)]

    ios = per_rank[0]["times"]
    return {"bytes": per_rank[0]["bytes"], "placement": [r["placement"] for r in per_rank],
            "issued": {io: slowest("issued", io) for io in ios}} | {
        io: slowest("times", io) for io in ios}


def _rank_loads(folder: str, rank: int, tokens: int, repeats: int, host_numa: str,
                barrier: Any, queue: Any) -> None:
    """One rank's loads, or its error: a rank that fails breaks the barrier and says so,
    so neither the other ranks nor the parent wait out their timeouts on device time."""
    try:
        queue.put({"rank": rank} | _rank_timings(folder, rank, tokens, repeats, host_numa,
                                                 barrier))
    except BaseException as exc:
        barrier.abort()
        queue.put({"rank": rank, "error": f"{type(exc).__name__}: {exc}"})


def _rank_timings(folder: str, rank: int, tokens: int, repeats: int, host_numa: str,
                  barrier: Any) -> dict[str, Any]:
    gpu = rank % torch.cuda.device_count()
    torch.cuda.set_device(gpu)
    bound = bind_host_memory(host_numa, gpu)
    hit = Hit.make(tokens, torch.device("cuda"), seed=rank)
    where = placement(hit, gpu, bound)
    loads = SglangLoads(load_sgl_kernel(folder), hit)
    times: dict[str, list[float]] = {"direct": [], "kernel": []}
    issued: dict[str, list[float]] = {"direct": [], "kernel": []}
    for io, load in (("direct", loads.direct), ("kernel", loads.kernel)):
        load()  # warm-up (and the kernel path's page_first copies)
        for _ in range(repeats):
            torch.cuda.synchronize()
            barrier.wait()
            start = time.perf_counter()
            load()
            issued[io].append(time.perf_counter() - start)  # how long the caller was held
            torch.cuda.synchronize()
            times[io].append(time.perf_counter() - start)
    return {"times": times, "issued": issued, "placement": where, "bytes": hit.nbytes}


def print_concurrent(ranks: int, tokens: int, run: dict[str, Any]) -> None:
    gb = run["bytes"] / 1e9
    for where in run["placement"]:
        print(f"  rank on {placement_row(where)}", flush=True)
    for io in ("direct", "kernel"):
        print(f"{ranks} rank(s), {io} load of {tokens} tok at once, slowest rank: "
              + ", ".join(f"{t:.3f} s ({gb / t:.1f} GB/s, caller held {held:.3f} s)"
                          for t, held in zip(run[io], run["issued"][io], strict=True)),
              flush=True)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpus": os.cpu_count(), "numa_nodes": numa_nodes()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f
                               if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_800)
    parser.add_argument("--count", type=int, default=20_000, help="copies per size")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--sgl-kernel", metavar="DIR",
                        help="also time SGLang's own ops from this folder's common_ops.abi3.so")
    parser.add_argument("--ranks", type=int, default=0,
                        help="with --sgl-kernel: also time N processes loading at once")
    parser.add_argument("--host-numa", choices=("unbound", "local", "remote"),
                        default="unbound",
                        help="bind host pools to the GPU's NUMA node, another, or neither")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke to check the script itself")
    start = time.perf_counter()
    ext = load_inline("hicache_direct_io", CPP, verbose=False,
                      functions=["load_layer_pages", "backup_pages", "copy_many"])
    print(f"extension built in {time.perf_counter() - start:.1f} s", flush=True)
    tokens, count = (PAGE * 8, 200) if args.smoke else (args.tokens, args.count)
    bound = bind_host_memory(args.host_numa, 0)
    results: list[Timing] = []
    if not args.smoke:
        results += measure_contiguous(device, 4 << 30)
    results += measure_sizes(ext, device, count)
    sgl = load_sgl_kernel(args.sgl_kernel) if args.sgl_kernel else None
    hit_results, where = measure_hit(ext, device, tokens, bound, sgl)
    results += hit_results
    concurrent: dict[int, dict[str, Any]] = {}
    for ranks in sorted({1, args.ranks}) if args.sgl_kernel and args.ranks else ():
        concurrent[ranks] = concurrent_loads(args.sgl_kernel, ranks, tokens, args.host_numa)
        print_concurrent(ranks, tokens, concurrent[ranks])
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine(), "host_numa": args.host_numa, "placement": where,
                       "concurrent": concurrent,
                       "results": [asdict(r) | {"gbps": r.gbps} for r in results]}, f,
                      indent=1)
    print(json.dumps(machine()))


if __name__ == "__main__":
    main()
