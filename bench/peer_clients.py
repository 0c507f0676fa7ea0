"""SGLang's own benchmark client against the simulator, beside ours, on streams of known timing.

Two questions: do peers' clients read the simulator's three generation endpoints as they read
SGLang (``/generate``, ``/v1/completions``, ``/v1/chat/completions``), and how far are their
TTFT and inter-chunk stamps from the scripted truth compared with pytest-glmperf's client?

Needs the request functions of SGLang's ``bench_serving.py``, taken from an SGLang wheel
(only that file is read; its dataset and tokenizer imports are stubbed, since the request
functions do not use them) and aiohttp::

    pip download sglang==0.5.12.post1 --no-deps -d /tmp/sgl     # ~8 MB
    pip install aiohttp tqdm
    python bench/peer_clients.py --wheel /tmp/sgl/sglang-0.5.12.post1-*.whl

Every stream is scripted (``glmperf_script``, sent through bench_serving's
``extra_request_body``): first chunk at 200 ms, then one token every 10 ms; the simulator
runs at time scale 1 (model = wall seconds) and N requests go out at once.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import sys
import time
import types
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from client_overhead import script, simulator, summary  # noqa: E402

from pytest_glmperf.client import StreamingClient  # noqa: E402
from pytest_glmperf.records import RequestRecord  # noqa: E402

TTFT_S, GAP_S, CHUNKS = 0.2, 0.010, 200
BACKENDS = {"sglang": "/generate", "sglang-oai": "/v1/completions",
            "sglang-oai-chat": "/v1/chat/completions"}
PROMPT = "Refactor the parser."


def load_bench_serving(wheel: str) -> types.ModuleType:
    """bench_serving.py from the wheel, with the imports its request functions never use stubbed."""
    paths = glob.glob(wheel)
    if not paths:
        raise SystemExit(f"no wheel matches {wheel!r} (see the module docstring)")
    with zipfile.ZipFile(paths[0]) as zf:
        source = zf.read("sglang/bench_serving.py")
    def stub(name: str, **attrs: Any) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    stub("transformers", AutoTokenizer=object, PreTrainedTokenizerBase=object)
    stub("sglang.benchmark.datasets", DatasetRow=object, get_dataset=None)
    stub("sglang.benchmark.datasets.mooncake", get_mooncake_request_over_time=None)
    stub("sglang.benchmark.utils", get_tokenizer=None, parse_custom_headers=None, set_ulimit=None,
         remove_prefix=lambda s, p: s[len(p):] if s.startswith(p) else s)
    stub("sglang.srt.disaggregation.utils", FAKE_BOOTSTRAP_HOST="")
    stub("sglang.srt.utils.network", NetworkAddress=object)
    module = types.ModuleType("bench_serving")
    sys.modules[module.__name__] = module      # dataclasses look their module up there
    exec(compile(source, f"{paths[0]}/sglang/bench_serving.py", "exec"), module.__dict__)
    module.set_global_args(argparse.Namespace(
        disable_ignore_eos=False, disable_stream=False, return_logprob=False,
        return_routed_experts=False, logprob_start_len=-1, top_logprobs_num=0,
        token_ids_logprob=None, header=None))
    return module


async def peer_run(bs: types.ModuleType, base_url: str, backend: str, n: int) -> dict[str, Any]:
    """*n* concurrent scripted requests through bench_serving's request function."""
    prompt: Any = PROMPT if backend != "sglang-oai-chat" else [{"role": "user", "content": PROMPT}]
    inputs = [bs.RequestFuncInput(
        prompt=prompt, api_url=base_url + BACKENDS[backend], prompt_len=5, output_len=CHUNKS,
        model="glm-5.1", lora_name=None, image_data=None,
        extra_request_body=script(TTFT_S, CHUNKS, GAP_S)) for _ in range(n)]
    outs = await asyncio.gather(*(bs.ASYNC_REQUEST_FUNCS[backend](i) for i in inputs))
    failed = [o.error for o in outs if not o.success or o.output_len != CHUNKS]
    return {"failed": len(failed), "first_error": failed[0][:300] if failed else "",
            "ttft_error_ms": summary([(o.ttft - TTFT_S) * 1e3 for o in outs]),
            "gap_error_ms": summary([(g - GAP_S) * 1e3 for o in outs for g in o.itl])}


async def own_run(base_url: str, n: int) -> dict[str, Any]:
    """The same requests through pytest-glmperf's streaming client (chat)."""
    records = [RequestRecord(request_id=f"own-{i}") for i in range(n)]
    async with StreamingClient(base_url, concurrency=n) as client:
        await client.warm_up()
        await asyncio.gather(*(client.stream(client.prepare(
            [{"role": "user", "content": PROMPT}], max_tokens=CHUNKS,
            extra_body=script(TTFT_S, CHUNKS, GAP_S)), r) for r in records))
    failed = [r.error for r in records if not r.ok]
    gaps = [(b - a) / 1e9 for r in records for a, b in zip(r.chunk_ns, r.chunk_ns[1:],
                                                          strict=False)]
    return {"failed": len(failed), "first_error": failed[0] if failed else "",
            "ttft_error_ms": summary([(r.ttft_s - TTFT_S) * 1e3 for r in records if r.ok]),
            "gap_error_ms": summary([(g - GAP_S) * 1e3 for g in gaps])}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| client | endpoint | failed | TTFT error P50 / P99 / max (ms) "
             "| gap error P50 / P99 / max (ms) |", "|---|---|---:|---|---|"]
    for name, r in results.items():
        t, g = r["ttft_error_ms"], r["gap_error_ms"]
        lines.append(f"| {name} | {r['endpoint']} | {r['failed']} "
                     f"| {t['p50']:.2f} / {t['p99']:.2f} / {t['max']:.2f} "
                     f"| {g['p50']:.2f} / {g['p99']:.2f} / {g['max']:.2f} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    bs = load_bench_serving(args.wheel)
    results: dict[str, dict[str, Any]] = {}
    with simulator(["--reasoning-parser", "glm45"], cpu=None) as base_url:
        for backend, path in BACKENDS.items():
            await peer_run(bs, base_url, backend, 2)        # warm the connection path
            results[f"bench_serving {backend}"] = {
                "endpoint": path, **await peer_run(bs, base_url, backend, args.requests)}
        results["pytest-glmperf"] = {"endpoint": "/v1/chat/completions",
                                     **await own_run(base_url, args.requests)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", required=True, help="an SGLang wheel (glob allowed)")
    parser.add_argument("--requests", type=int, default=12, help="concurrent streams per client")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = asyncio.run(main_async(args))
    print(table(results))
    print(f"\n{args.requests} concurrent streams each; scripted TTFT {TTFT_S * 1e3:.0f} ms, "
          f"{CHUNKS} chunks {GAP_S * 1e3:.0f} ms apart; {time.perf_counter() - t0:.1f} s")
    for name, r in results.items():
        if r["failed"]:
            print(f"{name}: {r['failed']} failed, e.g. {r['first_error']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if any(r["failed"] for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
