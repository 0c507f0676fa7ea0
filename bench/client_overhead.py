"""What the streaming client costs, measured against the real simulator (a subprocess).

Run from the repository root::

    python bench/client_overhead.py            # all figures, about 30 s
    python bench/client_overhead.py --json out.json --check

Figures (peers.md section 5 has the peer clients' numbers to beat):

1. **ingest**: zero-gap scripted streams, as fast as the simulator can write them. The
   client's CPU time per chunk (per-chunk stamps and parsing included) gives the chunks per
   second it ingests on one core; the wall rate is bound by the simulator, not the client.
2. **chunk stamp error**: every chunk's client stamp minus the simulator's own send stamp
   (``GET /glmperf/sends/{rid}``, the same CLOCK_MONOTONIC), 12 concurrent streams.
3. **TTFT error**: measured TTFT minus the scripted one (200 ms), 12 concurrent requests,
   small prompts and ~400 KB prompts; split into what the client owns (time to the first
   byte out, arrival stamp) and what the server spends taking the request in.

The client's own event-loop lag is sampled during 2 and 3: on a shared host, errors that
match the lag are the host descheduling the process, not the client's code. The simulator
runs at time scale 1 (model seconds are wall seconds) without its busy-wait (see SIM_ARGS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_glmperf import sse as client_module
from pytest_glmperf.client import StreamingClient
from pytest_glmperf.records import RequestRecord

TARGET_CHUNKS_PER_S = 50_000
TARGET_STAMP_P99_MS = 2.0
SCRIPTED_TTFT_S = 0.2
BIG_PROMPT = "def handler(request):\n    return render(request, 'page.html')\n" * 6_800
SMALL_PROMPT = "Refactor the parser."
# The simulator busy-waits the last ms before each send for precision; at 1,200 sends/s that
# is most of a core, taken from the client on a 2-CPU host. Errors are measured against the
# simulator's actual send stamps, so its precision does not matter here: no spinning.
SIM_ARGS = ["--sim-timer-spin-ms", "0"]


# -- the simulator ------------------------------------------------------------------------------

@contextmanager
def simulator(extra_args: list[str], cpu: int | None) -> Iterator[str]:
    """Start ``python -m pytest_glmperf.simulator`` on a free port; yield its base URL."""
    cmd = [sys.executable, "-m", "pytest_glmperf.simulator", "--port", "0",
           "--time-scale", "1", *SIM_ARGS, *extra_args]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                preexec_fn=(lambda: os.sched_setaffinity(0, {cpu}))
                                if cpu is not None else None)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                proc.wait(10)
                log.seek(0)
                raise SystemExit(f"simulator did not start: {' '.join(cmd)}\n"
                                 f"{log.read()[-3000:]}")
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            yield f"http://127.0.0.1:{json.loads(line)['port']}"
        finally:
            proc.terminate()
            proc.wait(10)


def script(ttft_s: float, chunks: int, gap_s: float) -> dict[str, Any]:
    """First chunk at *ttft_s*, the others *gap_s* apart (model seconds = wall here)."""
    return {"glmperf_script": {"ttft_s": ttft_s, "prompt_tokens": 100_000, "chunks": [
        {"gap_s": 0.0 if i == 0 else gap_s, "tokens": 1} for i in range(chunks)]}}


# -- small statistics ---------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99),
            "max": max(values), "min": min(values)}


@dataclass
class LoopLag:
    """Samples how late a 1 ms sleep wakes up: the client's own event-loop delay."""

    samples_ms: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter_ns()
            await asyncio.sleep(0.001)
            self.samples_ms.append((time.perf_counter_ns() - start) / 1e6 - 1.0)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


# -- 1. ingest ----------------------------------------------------------------------------------

async def ingest(base_url: str, streams: int, chunks: int, reps: int) -> dict[str, Any]:
    """Client CPU per chunk over zero-gap streams (best of *reps*: noise only adds)."""
    runs = []
    async with StreamingClient(base_url, concurrency=streams) as client:
        await client.warm_up()
        for _ in range(reps):
            records = [RequestRecord(request_id=f"ingest-{i}") for i in range(streams)]
            prepared = [client.prepare([{"role": "user", "content": SMALL_PROMPT}],
                                       max_tokens=chunks, extra_body=script(0.0, chunks, 0.0))
                        for _ in records]
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(client.stream(p, r) for p, r in zip(prepared, records,
                                                                        strict=True)))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            failed = [r.error for r in records if not r.ok]
            if failed:
                raise SystemExit(f"ingest streams failed: {failed[:3]}")
            n = sum(len(r.chunk_ns) for r in records)
            reads = sum(len(set(r.chunk_ns)) for r in records)
            runs.append({"chunks": n, "wall_s": wall, "cpu_s": cpu,
                         "cpu_us_per_chunk": cpu / n * 1e6, "wall_chunks_per_s": n / wall,
                         "chunks_per_read": n / reads})
    best = min(runs, key=lambda r: r["cpu_us_per_chunk"])
    return {**best, "chunks_per_cpu_s": 1e6 / best["cpu_us_per_chunk"], "runs": runs}


# -- 2. chunk stamp error -------------------------------------------------------------------------

async def sends(client: StreamingClient, record: RequestRecord) -> list[int]:
    """The simulator's send stamps of *record*'s token-bearing chunks."""
    data = await client.get_json(f"/glmperf/sends/{record.extra['response_id']}")
    return [t for t, kind in zip(data["send_ns"], data["kinds"], strict=True)
            if kind in ("content", "reasoning")]


async def stamp_error(base_url: str, streams: int, chunks: int, gap_s: float,
                      reps: int) -> dict[str, Any]:
    """The run (of *reps*) with the lowest P99: other processes on the host only add."""
    runs = [await stamp_error_once(base_url, streams, chunks, gap_s) for _ in range(reps)]
    best = min(runs, key=lambda r: r["error_ms"]["p99"])
    return {**best, "p99_of_each_run_ms": [r["error_ms"]["p99"] for r in runs]}


async def stamp_error_once(base_url: str, streams: int, chunks: int,
                           gap_s: float) -> dict[str, Any]:
    """Client chunk stamps minus the simulator's send stamps, ms."""
    async with StreamingClient(base_url, concurrency=streams) as client:
        await client.warm_up()
        records = [RequestRecord(request_id=f"stamp-{i}") for i in range(streams)]
        body = script(0.05, chunks, gap_s)
        with LoopLag() as lag:
            await asyncio.gather(*(client.stream(client.prepare(
                [{"role": "user", "content": SMALL_PROMPT}], max_tokens=chunks,
                extra_body=body), r) for r in records))
        errors, first = [], []
        for record in records:
            if not record.ok:
                raise SystemExit(f"stamp stream failed: {record.error}")
            sent = await sends(client, record)
            diffs = [(got - s) / 1e6 for got, s in zip(record.chunk_ns, sent, strict=True)]
            errors += diffs
            first.append(diffs[0])
    return {"error_ms": summary(errors), "first_chunk_error_ms": summary(first),
            "loop_lag_ms": summary(lag.samples_ms)}


# -- 3. TTFT error --------------------------------------------------------------------------------

async def ttft_error(base_url: str, streams: int, rounds: int, prompt: str) -> dict[str, Any]:
    """Measured TTFT minus the scripted one, ms, with the client-owned parts broken out."""
    total, pre_send, arrival, upload = [], [], [], []
    async with StreamingClient(base_url, concurrency=streams) as client:
        await client.warm_up()
        body = script(SCRIPTED_TTFT_S, 2, 0.01)
        with LoopLag() as lag:
            for _ in range(rounds):
                prepared = [client.prepare([{"role": "user", "content": prompt}], max_tokens=2,
                                           extra_body=body) for _ in range(streams)]
                records = [RequestRecord(request_id=f"ttft-{i}") for i in range(streams)]
                await asyncio.gather(*(client.stream(p, r)
                                       for p, r in zip(prepared, records, strict=True)))
                for record in records:
                    if not record.ok or record.ttft_s is None:
                        raise SystemExit(f"ttft request failed: {record.error}")
                    sent = await sends(client, record)
                    total.append((record.ttft_s - SCRIPTED_TTFT_S) * 1e3)
                    pre_send.append(record.extra["pre_send_us"] / 1e3)
                    upload.append(record.extra["upload_us"] / 1e3)
                    arrival.append((record.first_token_ns - sent[0]) / 1e6)
    return {"prompt_bytes": len(prompt.encode()), "ttft_error_ms": summary(total),
            "call_to_first_byte_out_ms": summary(pre_send), "upload_ms": summary(upload),
            "first_token_arrival_error_ms": summary(arrival),
            "loop_lag_ms": summary(lag.samples_ms)}


# -- report ----------------------------------------------------------------------------------------

def fmt(stats: dict[str, float]) -> str:
    return (f"P50 {stats['p50']:7.3f}  P99 {stats['p99']:7.3f}  max {stats['max']:7.3f}  "
            f"min {stats['min']:7.3f}  (n={stats['n']})")


def print_report(res: dict[str, Any], args: argparse.Namespace) -> None:
    ing = res["ingest"]
    print(f"client: pytest_glmperf.client, JSON parser {res['json_parser']}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"\n1. ingest, {args.ingest_streams} zero-gap streams x {args.ingest_chunks} chunks")
    print(f"   client CPU per chunk     {ing['cpu_us_per_chunk']:8.2f} us "
          f"(per-chunk stamps + parsing)")
    print(f"   chunks/s on one core     {ing['chunks_per_cpu_s']:8.0f}   "
          f"target >= {TARGET_CHUNKS_PER_S}")
    print(f"   wall chunks/s            {ing['wall_chunks_per_s']:8.0f}   "
          f"(bound by the simulator's writes; {ing['chunks_per_read']:.1f} chunks per read)")
    if "ingest_stdlib_json" in res:
        std = res["ingest_stdlib_json"]
        print(f"   with stdlib json         {std['cpu_us_per_chunk']:8.2f} us/chunk = "
              f"{std['chunks_per_cpu_s']:.0f} chunks/s")
    st = res["stamp"]
    print(f"\n2. chunk stamp error, {args.streams} streams x {args.chunks} chunks, "
          f"gap {args.gap_ms:g} ms (ms)")
    print(f"   all chunks               {fmt(st['error_ms'])}   target P99 <= "
          f"{TARGET_STAMP_P99_MS}")
    print(f"   first chunk of each      {fmt(st['first_chunk_error_ms'])}")
    print(f"   client loop lag          {fmt(st['loop_lag_ms'])}")
    print("   best of", len(st["p99_of_each_run_ms"]), "runs; P99 of each:",
          ", ".join(f"{v:.3f}" for v in st["p99_of_each_run_ms"]))
    for key, label in (("ttft_small", "small prompt"), ("ttft_big", "~400 KB prompt")):
        tt = res[key]
        print(f"\n3. TTFT error, {label} ({tt['prompt_bytes']} bytes), {args.streams} concurrent x "
              f"{args.rounds} rounds, scripted {SCRIPTED_TTFT_S * 1e3:g} ms (ms)")
        print(f"   measured - scripted      {fmt(tt['ttft_error_ms'])}")
        print(f"   call -> first byte out   {fmt(tt['call_to_first_byte_out_ms'])}")
        print(f"   body upload              {fmt(tt['upload_ms'])}")
        print(f"   first-token stamp error  {fmt(tt['first_token_arrival_error_ms'])}")
        print(f"   client loop lag          {fmt(tt['loop_lag_ms'])}")
    warn_nagle(st)


def warn_nagle(stamp: dict[str, Any]) -> None:
    """A first chunk ~40 ms late while later ones are not: Nagle meets delayed ACK."""
    if stamp["first_chunk_error_ms"]["p50"] > 20 and stamp["error_ms"]["p50"] < 5:
        print("\n   WARNING: each response's first chunk arrives ~40 ms after the server's send "
              "while later chunks do not:\n   the server socket lacks TCP_NODELAY (its headers "
              "and first body write meet Nagle's algorithm\n   and the client's delayed ACK). "
              "That delay is real for every client of this server.")


def verdict(res: dict[str, Any]) -> list[str]:
    misses = []
    if res["ingest"]["chunks_per_cpu_s"] < TARGET_CHUNKS_PER_S:
        misses.append(f"ingest {res['ingest']['chunks_per_cpu_s']:.0f} chunks/s < "
                      f"{TARGET_CHUNKS_PER_S}")
    if res["stamp"]["error_ms"]["p99"] > TARGET_STAMP_P99_MS:
        misses.append(f"stamp error P99 {res['stamp']['error_ms']['p99']:.2f} ms > "
                      f"{TARGET_STAMP_P99_MS} ms")
    return misses


async def measure(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"json_parser": client_module._loads.__module__}
    res["ingest"] = await ingest(base_url, args.ingest_streams, args.ingest_chunks, args.reps)
    if res["json_parser"] != "json" and not args.skip_stdlib:
        fast = client_module._loads
        client_module._loads = json.loads
        try:
            res["ingest_stdlib_json"] = await ingest(base_url, args.ingest_streams,
                                                     args.ingest_chunks, args.reps)
        finally:
            client_module._loads = fast
    res["stamp"] = await stamp_error(base_url, args.streams, args.chunks, args.gap_ms / 1e3,
                                     args.reps)
    res["ttft_small"] = await ttft_error(base_url, args.streams, args.rounds, SMALL_PROMPT)
    res["ttft_big"] = await ttft_error(base_url, args.streams, args.rounds, BIG_PROMPT)
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=12, help="concurrent streams for 2 and 3")
    p.add_argument("--chunks", type=int, default=200, help="chunks per stream for 2")
    p.add_argument("--gap-ms", type=float, default=10.0, help="chunk gap for 2")
    p.add_argument("--rounds", type=int, default=3, help="rounds of concurrent requests for 3")
    p.add_argument("--ingest-streams", type=int, default=4)
    p.add_argument("--ingest-chunks", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3,
                   help="repetitions of 1 and 2; the best is kept (host noise only adds)")
    p.add_argument("--skip-stdlib", action="store_true",
                   help="do not repeat the ingest run with the stdlib JSON parser")
    p.add_argument("--pin", action="store_true",
                   help="pin the client to CPU 0 and the simulator to CPU 1")
    p.add_argument("--sim-arg", action="append", default=[],
                   help="extra simulator flag (repeatable), e.g. --sim-arg=--sim-timer-spin-ms=0")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sim_cpu = None
    if args.pin and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
        sim_cpu = 1
    with simulator(args.sim_arg, sim_cpu) as base_url:
        res = asyncio.run(measure(base_url, args))
    print_report(res, args)
    misses = verdict(res)
    print("\ntargets: " + ("all met" if not misses else "MISSED: " + "; ".join(misses)))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 1 if misses and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
