"""Virtual-time replay of the field report's workloads straight against the engine model.

No HTTP, no sleeping: requests are fed to ``Engine`` in model time, emissions are stamped
with the end of the step that produced them, and the client-side figures are computed the
way the plugin computes them (pytest_glmperf.stats percentiles), with /flush_cache before
each capacity level and the mixed run as workloads.py does. Use it to search calibrations
fast (~3 s for everything); bench/suite_vs_brief.py is the end-to-end check.

    python bench/engine_replay.py                 # both profiles, both workloads
    python bench/engine_replay.py --runs 2        # run 2: same workloads, no flush in between
    python bench/engine_replay.py --runs 2 --flush-every-run --profile sim-hicache-l3
    python bench/engine_replay.py --warm          # each window primed first, as --warm-cache
    python bench/engine_replay.py --no-flush      # a cold server, windows back to back
    python bench/engine_replay.py --workload capacity --seen-levels 1,2,4 \
        --sim-arg=--sim-decode-interleave=prefill-first   # the field's capacity verdicts
    python bench/engine_replay.py --profile sim-hicache --workload mixed --json out.json
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pytest_glmperf.simulator.config import EngineConfig, parse_server_args  # noqa: E402
from pytest_glmperf.simulator.engine import Engine  # noqa: E402
from pytest_glmperf.simulator.types import SimRequest  # noqa: E402
from pytest_glmperf.stats import mean, percentile  # noqa: E402
from pytest_glmperf.workloads import (  # noqa: E402
    CapacitySpec,
    MixedSpec,
    capacity_prompts,
    mixed_prompts,
    revisit_target,
)

PAGE = 64
# Prompt sizes as the end-to-end suite sends them: a "100k-token" context measures
# 100,490-101,010 prompt tokens on the simulator (the client's chars-per-token calibration
# and the chat template overshoot by ~0.7 %), so the KV arithmetic sees ~100.76k per prompt.
SYSTEM_TOKENS = 720         # system prompt, chat template, calibration overshoot
SUFFIX_TOKENS = 40          # the per-request task line ("decode request 7: continue ...")

# The brief's numbers (workloads-and-results.md), for the side-by-side tables.
BRIEF_MIXED = {
    "sim-hicache": {"client_tok_s": 119.28, "gen_throughput": 118.89, "queue_mean": 1.94,
                    "queue_p95": 4.00, "ttft_p50": 23.51, "ttft_p95": 41.38,
                    "gap_p50": 0.36, "gap_p95": 0.61},
    "sim-mtp": {"client_tok_s": 168.96, "gen_throughput": 319.17, "queue_mean": 0.49,
                "queue_p95": 2.00, "ttft_p50": 9.09, "ttft_p95": 31.78,
                "gap_p50": 11.95, "gap_p95": 12.84},
}
TP_SIZE = 8  # SGLang's evicted / loaded-back counters sum over the 8 ranks: divide for logical tokens
BRIEF_CACHE = {  # logical tokens
    "sim-hicache": {"cached_device": 3_456_640, "cached_host": 2_900_096,
                    "evicted": 23_949_824 // TP_SIZE, "load_back": 23_200_768 // TP_SIZE,
                    "host_used": 885_888},
    "sim-mtp": {"cached_device": 4_812_160, "cached_host": 0,
                "evicted": 17_915_904 // TP_SIZE, "load_back": 0, "host_used": 0},
}
BRIEF_MIXED_RUN_S = {"sim-hicache": 782.8}  # 119.28 x 782.8 = 45 x 2048 + 19 x 64 exactly
BRIEF_CAPACITY = {"sim-hicache": "usable up to 4 (110.39 tok/s there; 134.70 at 12)",
                  "sim-mtp": "usable only at 1 (44.80 tok/s there)"}

DEFAULT_PROFILES = {
    "sim-hicache": ["--tp-size", "8", "--enable-metrics", "--enable-cache-report",
                    "--enable-hierarchical-cache", "--hicache-size", "200",
                    "--hicache-io-backend", "direct", "--hicache-mem-layout", "page_first",
                    "--hicache-write-policy", "write_through", "--mem-fraction-static",
                    "0.85", "--watchdog-timeout", "1800"],
    "sim-mtp": ["--tp-size", "8", "--enable-metrics", "--enable-cache-report",
                "--speculative-algorithm", "EAGLE", "--speculative-num-steps", "3",
                "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"],
}


def _registry() -> Any:
    """compose/profiles.yaml's registry, or None when it cannot be read (then the built-ins)."""
    try:
        from pytest_glmperf.profiles import load_registry
        return load_registry(ROOT / "compose" / "profiles.yaml")
    except Exception:
        return None


def simulated_profiles() -> list[str]:
    """Every simulated profile in compose/profiles.yaml (e.g. sim-hicache-mtp), else the two
    built-in ones."""
    registry = _registry()
    if registry is None:
        return sorted(DEFAULT_PROFILES)
    return sorted(name for name, p in registry.profiles.items() if p.is_simulated)


def profile_args(name: str) -> list[str]:
    """Server args of a simulated profile: compose/profiles.yaml if readable, else built-in."""
    registry = _registry()
    if registry is not None and name in registry.profiles:
        return list(registry.profiles[name].server_args)
    return list(DEFAULT_PROFILES[name])


@dataclass
class Rec:
    """One request as the client saw it (model seconds)."""

    kind: str
    send: float
    max_tokens: int
    first: float | None = None
    chunks: list[float] = field(default_factory=list)
    done: float | None = None
    tokens: int = 0
    cached: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.send

    @property
    def max_gap(self) -> float | None:
        gaps = [b - a for a, b in itertools.pairwise(self.chunks)]
        return max(gaps) if gaps else None

    @property
    def tok_s(self) -> float | None:
        if self.done is None or self.done <= self.send:
            return None
        return self.tokens / (self.done - self.send)


class Replay:
    """Feeds timed requests to an Engine and records what a streaming client would see."""

    def __init__(self, engine: Engine, gauge_interval: float = 1.5,
                 ids: itertools.count[int] | None = None) -> None:
        self.engine = engine
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._ids = ids if ids is not None else itertools.count()
        self.live: dict[str, tuple[Rec, Callable[[Rec], None] | None]] = {}
        self.records: list[Rec] = []
        self.gauge_interval = gauge_interval
        self.next_sample: float | None = None
        self.samples: dict[str, list[float]] = {"gen_throughput": [], "num_queue_reqs": [],
                                                "num_running_reqs": []}
        self.steps = 0
        self.queue_times: list[float] = []   # sglang:queue_time_seconds observations

    # -- requests ---------------------------------------------------------------------------

    def at(self, t: float, fire: Callable[[], None]) -> None:
        heapq.heappush(self.events, (t, next(self._seq), fire))

    def send(self, kind: str, context: str, context_tokens: int, max_tokens: int,
             on_done: Callable[[Rec], None] | None = None) -> Rec:
        """Send now (engine time): prompt = system + context + a unique task suffix."""
        n = next(self._ids)
        rid = f"{kind}-{n}"
        ctx = zlib.crc32(context.encode())  # stable across runs: reruns hit warm caches
        shared = SYSTEM_TOKENS + context_tokens
        prompt = shared + SUFFIX_TOKENS
        keys = [hash((ctx, i)) for i in range(shared // PAGE)]
        keys += [hash((-1 - n, i)) for i in range(len(keys), prompt // PAGE)]
        rec = Rec(kind=kind, send=self.engine.now, max_tokens=max_tokens)
        self.engine.add_request(SimRequest(rid=rid, prompt_tokens=prompt,
                                           max_new_tokens=max_tokens, page_keys=keys,
                                           arrival_s=self.engine.now))
        self.live[rid] = (rec, on_done)
        self.records.append(rec)
        return rec

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Process events and engine steps in model-time order until both run out."""
        engine = self.engine
        while True:
            while self.events and self.events[0][0] <= engine.now:
                heapq.heappop(self.events)[2]()
            if engine.has_work() and self._step():
                continue
            # Nothing ran: the clock moves to the next arrival, or to when a queued
            # request's L3 prefetch may end, whichever comes first.
            wake = engine.wake_at() if engine.has_work() else None
            times = [t for t in (wake, self.events[0][0] if self.events else None) if t is not None]
            if not times:
                if engine.has_work():
                    raise RuntimeError("the engine has work but nothing can run")
                return
            self._sample_until(min(times))
            engine.advance_to(min(times))

    def _step(self) -> bool:
        """One engine step; False when nothing could run."""
        result = self.engine.step()
        if result.duration_s <= 0 and not result.emissions:
            return False
        self.steps += 1
        self.queue_times += result.queue_times_s
        self._sample_until(result.end_s)
        for em in result.emissions:
            rec, on_done = self.live[em.rid]
            rec.chunks.append(result.end_s)
            rec.tokens += em.tokens
            if em.first:
                rec.first, rec.cached = result.end_s, em.cached_tokens
            if em.finished:
                rec.done = result.end_s
                del self.live[em.rid]
                if on_done is not None:
                    on_done(rec)
        return True

    def _sample_until(self, t: float) -> None:
        """Gauge scrapes every gauge_interval seconds (values as of the last step)."""
        if self.next_sample is None:
            return
        g = self.engine.gauges
        while self.next_sample <= t:
            self.samples["gen_throughput"].append(g.gen_throughput)
            self.samples["num_queue_reqs"].append(g.num_queue_reqs)
            self.samples["num_running_reqs"].append(g.num_running_reqs)
            self.next_sample += self.gauge_interval

    def start_sampling(self, t: float) -> None:
        self.next_sample = t

    def stop_sampling(self) -> None:
        self.next_sample = None


# ---- workloads -------------------------------------------------------------------------

def flush_cache(engine: Engine, retry_s: float = 600.0) -> bool:
    """POST /flush_cache as levels.py sends it: retried until the server is idle (L3 backups
    drain behind the last prefill), for up to 60 wall s, 600 model s at time scale 10."""
    deadline = engine.now + retry_s
    while not engine.flush_cache():
        if engine.now >= deadline or engine.has_work():
            return False
        engine.advance_to(engine.now + 0.1)
    return True


def run_mixed(config: EngineConfig, *, seed: int = 0, engine: Engine | None = None,
              duration: float = 600.0, flush: bool = True,
              contexts: int = 4, workers: int = 3, context_tokens: int = 100_000,
              max_tokens: int = 2048, spike_every: float = 30.0, spike_tokens: int = 64,
              revisit_every: float = 45.0, warm: bool = False,
              spike_texts: int = 0) -> dict[str, Any]:
    """Workload 1 as pytest_glmperf.workloads.run_mixed drives it (on ``engine`` if given,
    so a second run finds the caches the first one left); ``warm``: --warm-cache.

    ``spike_texts`` K > 0: the spikes cycle through K texts instead of a fresh one each (a
    what-if for the field's script, whose 886k tokens of host use after its run say it
    reused a few); warm priming then sends those K.
    """
    engine = engine or Engine(config, seed=seed)

    def spike_key(n: int) -> str:
        return f"mixed-spike-{(n - 1) % spike_texts + 1 if spike_texts else n}"

    if warm:
        keys = mixed_prompts(MixedSpec(contexts=contexts, context_tokens=context_tokens,
                                       duration_s=duration, spike_interval_s=spike_every))
        prime(engine, list(dict.fromkeys(
            spike_key(int(k.rsplit("-", 1)[1])) if k.startswith("mixed-spike-") else k
            for k in keys)), context_tokens)
    elif flush:  # workloads.py: POST /flush_cache before the mixed run
        flush_cache(engine)
    replay = Replay(engine, ids=_ids_for(engine))
    last_used: dict[int, float] = {}
    start = engine.now

    def send_over(kind: str, ctx: int, on_done: Callable[[Rec], None] | None) -> None:
        last_used[ctx] = engine.now
        replay.send(kind, f"mixed-repo-{ctx}", context_tokens, max_tokens, on_done)

    def worker(i: int) -> Callable[[Rec | None], None]:
        turn = itertools.count()

        def next_request(_: Rec | None = None) -> None:
            if engine.now < start + duration:
                send_over("decode", (i + next(turn)) % contexts, next_request)
        return next_request

    for i in range(workers):
        replay.at(start, worker(i))
    for n in itertools.count(1):
        if n * spike_every >= duration:
            break
        replay.at(start + n * spike_every, lambda n=n: replay.send(
            "spike", spike_key(n), context_tokens, spike_tokens))
    for n in itertools.count(1):
        if n * revisit_every >= duration:
            break
        replay.at(start + n * revisit_every, lambda: send_over(
            "revisit", revisit_target(last_used), None))
    replay.start_sampling(start)
    before = _cache_counters(engine)
    t0 = time.perf_counter()
    replay.run()
    wall = time.perf_counter() - t0
    return _mixed_summary(replay, engine, start, wall, before)


def _cache_counters(engine: Engine) -> dict[str, int]:
    c = engine.counters
    return {"cached_device": c.cached_tokens_device, "cached_host": c.cached_tokens_host,
            "cached_storage": c.cached_tokens_storage,
            "evicted": c.evicted_tokens, "load_back": c.load_back_tokens}


def _mixed_summary(replay: Replay, engine: Engine, start: float, wall: float,
                   before: dict[str, int]) -> dict[str, Any]:
    """The field report's table for one run; cache counters as deltas over the run."""
    recs = [r for r in replay.records if r.done is not None]
    end = max(r.done for r in recs)
    c = engine.counters
    after = _cache_counters(engine)
    samples = replay.samples
    return {
        "client_tok_s": sum(r.tokens for r in recs) / (end - start),
        "gen_throughput": mean(samples["gen_throughput"]),
        "queue_mean": mean(samples["num_queue_reqs"]),
        "queue_p95": percentile(samples["num_queue_reqs"], 95),
        "running_mean": mean(samples["num_running_reqs"]),
        "server_queue_mean": mean(replay.queue_times),
        "ttft_p50": percentile((r.ttft for r in recs), 50),
        "ttft_p95": percentile((r.ttft for r in recs), 95),
        "gap_p50": percentile((r.max_gap for r in recs), 50),
        "gap_p95": percentile((r.max_gap for r in recs), 95),
        "duration": end - start,
        "requests": len(recs),
        "completion_tokens": sum(r.tokens for r in recs),
        "by_kind": {k: {"n": len(v), "ttft_p50": percentile((r.ttft for r in v), 50),
                        "gap_p50": percentile((r.max_gap for r in v), 50)}
                    for k in ("decode", "spike", "revisit")
                    if (v := [r for r in recs if r.kind == k])},
        "cache": {**{k: after[k] - before[k] for k in after},
                  "host_used": engine.cache.host_used_tokens},
        "pool_tokens": engine.config.device_pool_tokens,
        "steps": replay.steps,
        "wall_s": wall,
        "retracted": c.retracted_requests,
    }


def _ids_for(engine: Engine) -> itertools.count[int]:
    """Request ids unique per engine across runs."""
    ids = getattr(engine, "_replay_ids", None)
    if ids is None:
        ids = itertools.count()
        engine._replay_ids = ids  # type: ignore[attr-defined]
    return ids


def prime(engine: Engine, keys: list[str], context_tokens: int) -> None:
    """--warm-cache as workloads.prime does it: each text once, one output token, in order."""
    replay = Replay(engine, ids=_ids_for(engine))
    pending = list(keys)

    def next_prime(_: Rec | None = None) -> None:
        if pending:
            replay.send("prime", pending.pop(0), context_tokens, 1, next_prime)
    next_prime()
    replay.run()


def run_capacity(config: EngineConfig, *, seed: int = 0, engine: Engine | None = None,
                 levels: tuple[int, ...] = (1, 2, 4, 8, 12),
                 level_duration: float = 240.0, contexts: int = 8,
                 context_tokens: int = 100_000, max_tokens: int = 1024,
                 spike_every: float = 25.0, spike_tokens: int = 64,
                 flush: bool = True, warm: bool = False, spike_mode: str = "slot",
                 seen_levels: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Workload 2: per level, N closed-loop agents (context i mod 8) plus spikes, sent by the
    next free agent ("slot") or on time beside them ("extra"), as workloads.py does.

    ``seen_levels``: a server that already ran these levels with the same texts (an earlier,
    shorter run of the same script): their contexts and spike texts are primed once, then
    every level runs on whatever the cache holds, never flushed.
    """
    engine = engine or Engine(config, seed=seed)
    spec = CapacitySpec(contexts=contexts, context_tokens=context_tokens,
                        level_duration_s=level_duration, spike_interval_s=spike_every)
    if seen_levels:
        flush_cache(engine)
        for level in seen_levels:
            prime(engine, capacity_prompts(spec, level), context_tokens)
    out = []
    for level in levels:
        keys = capacity_prompts(spec, level)
        spikes = [key for key in keys if key.startswith("spike-")]
        if warm and not seen_levels:
            prime(engine, keys, context_tokens)
        elif flush and not seen_levels:  # workloads.py: POST /flush_cache before each level
            flush_cache(engine)
        replay = Replay(engine, ids=_ids_for(engine))
        start = engine.now
        deadline = start + level_duration
        due: list[str] = []

        def agent(i: int, replay: Replay = replay, deadline: float = deadline, due: list[str] = due,
                  ) -> Callable[[Rec | None], None]:
            def next_request(_: Rec | None = None) -> None:
                if engine.now >= deadline:
                    return
                if due:
                    replay.send("spike", due.pop(0), context_tokens, spike_tokens, next_request)
                else:
                    replay.send("agent", f"repo-{i % contexts}", context_tokens, max_tokens, next_request)
            return next_request

        def fire(text: str, replay: Replay = replay, due: list[str] = due) -> None:
            if spike_mode == "slot":
                due.append(text)
            else:
                replay.send("spike", text, context_tokens, spike_tokens)

        for i in range(level):
            replay.at(start, agent(i))
        for n, text in enumerate(spikes, start=1):
            replay.at(start + n * spike_every, lambda text=text, fire=fire: fire(text))
        t0 = time.perf_counter()
        replay.run()
        out.append(_level_summary(level, replay, start, time.perf_counter() - t0))
    return out


def _level_summary(level: int, replay: Replay, start: float, wall: float) -> dict[str, Any]:
    recs = [r for r in replay.records if r.done is not None]
    agents = [r for r in recs if r.kind != "spike"]
    end = max(r.done for r in recs)
    stats = {
        "level": level,
        "requests": len(recs),
        "failure_rate": 0.0,
        "tok_s_p50": percentile((r.tok_s for r in agents), 50),
        "ttft_p95": percentile((r.ttft for r in agents), 95),
        "gap_p95": percentile((r.max_gap for r in agents), 95),
        "aggregate_tok_s": sum(r.tokens for r in recs) / (end - start),
        "duration": end - start,
        "steps": replay.steps,
        "wall_s": wall,
    }
    broken = []
    if stats["tok_s_p50"] is None or stats["tok_s_p50"] < 4:
        broken.append("tok/s P50 < 4")
    if stats["ttft_p95"] is None or stats["ttft_p95"] > 180:
        broken.append("TTFT P95 > 180 s")
    if stats["gap_p95"] is None or stats["gap_p95"] > 8:
        broken.append("gap P95 > 8 s")
    stats["usable"] = not broken
    stats["broken"] = broken
    return stats


# ---- printing ----------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def mixed_table(results: dict[str, dict[str, Any]]) -> str:
    cols = [("client_tok_s", "client out tok/s"), ("gen_throughput", "gen_throughput mean"),
            ("queue_mean", "queue mean"), ("queue_p95", "queue P95"),
            ("ttft_p50", "TTFT P50 (s)"), ("ttft_p95", "TTFT P95 (s)"),
            ("gap_p50", "max gap P50 (s)"), ("gap_p95", "max gap P95 (s)")]
    lines = ["| profile | source | " + " | ".join(h for _, h in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for name, res in results.items():
        brief = BRIEF_MIXED.get(name, {})
        lines.append(f"| {name} | brief | " + " | ".join(_fmt(brief.get(k)) for k, _ in cols)
                     + " |")
        lines.append(f"| {name} | engine_replay | "
                     + " | ".join(_fmt(res.get(k)) for k, _ in cols) + " |")
        ratio = [(res[k] / brief[k] - 1) * 100 if brief.get(k) and res.get(k) is not None
                 else None for k, _ in cols]
        lines.append(f"| {name} | deviation | " + " | ".join(
            "-" if r is None else f"{r:+.0f} %" for r in ratio) + " |")
    return "\n".join(lines)


def little_reading(tok_s: float, queue_mean: float, run_s: float, *, workers: int = 3,
                   duration: float = 600.0, revisit_every: float = 45.0,
                   spike_every: float = 30.0, max_tokens: int = 2048,
                   spike_tokens: int = 64) -> dict[str, float]:
    """What a mixed run's own figures imply about its concurrency (Little's law, L = lambda W).

    Requests in the server = queued + decoding. Queued: the queue gauge's mean, so the mean
    wait is queue / arrival rate. Decoding: answers x max_tokens / (run x r) for a per-stream
    rate r. In the server, from the workload: the closed-loop workers (busy until the load
    ends plus half a cycle), the revisits (wait + answer each) and the spikes (wait + a few
    tokens). Both counts are linear in 1/r, so r has a closed form; r is the effective rate,
    stalls included (an EAGLE stream's freezes lower it). Applied to the replay's own figures
    it recovers the replay's gauge-measured running count within a few %.
    """
    revisits = int((duration - 1e-9) // revisit_every)
    spikes = int((duration - 1e-9) // spike_every)
    answers = round((tok_s * run_s - spikes * spike_tokens) / max_tokens)
    wait = queue_mean * run_s / (answers + spikes)
    known = queue_mean * run_s - workers * (duration + wait / 2) - (revisits + spikes) * wait
    per_token = max_tokens * (workers / 2 + revisits - answers)
    inverse_rate = known / per_token
    return {"answers": answers, "wait_s": wait, "per_stream_tok_s": 1 / inverse_rate,
            "long_streams": answers * max_tokens * inverse_rate / run_s}


def little_table(results: dict[str, dict[str, Any]]) -> str:
    """The field's and the replay's mixed figures read through little_reading."""
    lines = ["| profile | source | answers | mean wait (s) | server queue mean (s) "
             "| decoding streams | per-stream tok/s | gauge num_running_reqs |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in results.items():
        rows = []
        if name in BRIEF_MIXED_RUN_S:
            brief = BRIEF_MIXED[name]
            rows.append(("brief", little_reading(brief["client_tok_s"], brief["queue_mean"],
                                                 BRIEF_MIXED_RUN_S[name]), None, None))
        rows.append(("engine_replay", little_reading(res["client_tok_s"], res["queue_mean"],
                                                     res["duration"]), res["server_queue_mean"],
                     res["running_mean"]))
        for source, r, measured, gauge in rows:
            lines.append(f"| {name} | {source} | {r['answers']} | {_fmt(r['wait_s'], 1)} | "
                         f"{_fmt(measured, 1)} | {_fmt(r['long_streams'])} | "
                         f"{_fmt(r['per_stream_tok_s'], 1)} | {_fmt(gauge)} |")
    return "\n".join(lines)


def cache_table(results: dict[str, dict[str, Any]]) -> str:
    keys = ["cached_device", "cached_host", "evicted", "load_back", "host_used"]
    if any(res["cache"].get("cached_storage") for res in results.values()):
        keys.insert(2, "cached_storage")   # an L3 tier's hits (loaded back as well)
    lines = ["| counter (logical tokens) | " + " | ".join(
        f"{n} brief | {n} replay" for n in results) + " |",
        "|---|" + "---:|" * (2 * len(results))]
    for key in keys:
        row = [f"{_fmt(BRIEF_CACHE.get(n, {}).get(key))} | {_fmt(res['cache'][key])}"
               for n, res in results.items()]
        lines.append(f"| {key} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def capacity_table(name: str, levels: list[dict[str, Any]]) -> str:
    lines = [f"{name}: brief says {BRIEF_CAPACITY.get(name, '?')}",
             "| level | requests | tok/s P50 | TTFT P95 (s) | max gap P95 (s) | aggregate tok/s "
             "| verdict |", "|---:|---:|---:|---:|---:|---:|---|"]
    for lv in levels:
        verdict = "usable" if lv["usable"] else "unusable: " + ", ".join(lv["broken"])
        lines.append(f"| {lv['level']} | {lv['requests']} | {_fmt(lv['tok_s_p50'])} | "
                     f"{_fmt(lv['ttft_p95'])} | {_fmt(lv['gap_p95'])} | "
                     f"{_fmt(lv['aggregate_tok_s'])} | {verdict} |")
    usable = [lv["level"] for lv in levels if lv["usable"]]
    highest = 0
    for lv in levels:
        if not lv["usable"]:
            break
        highest = lv["level"]
    lines.append(f"highest usable level: {highest or 'none'} (usable at {usable})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="append", choices=simulated_profiles(),
                        help="simulated profile (repeatable; default sim-hicache and sim-mtp)")
    parser.add_argument("--workload", choices=("mixed", "capacity", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1,
                        help="run each workload this many times on the same server; runs 2+ "
                             "skip /flush_cache (an operator re-running a script)")
    parser.add_argument("--flush-every-run", action="store_true",
                        help="runs 2+ flush too, as the suite run again does (an L3 tier "
                             "keeps what earlier runs wrote)")
    parser.add_argument("--no-flush", action="store_true",
                        help="never flush: a cold server whose windows follow one another, as "
                             "the suite's --flush-cache false (and the field's scripts) run")
    parser.add_argument("--spike-mode", choices=("slot", "extra"), default="slot",
                        help="capacity spikes: sent by the next free agent, or on time beside them")
    parser.add_argument("--warm", action="store_true",
                        help="prime every window with its contexts and spike texts (--warm-cache)")
    parser.add_argument("--spike-texts", type=int, default=0,
                        help="mixed: spikes cycle through this many texts (0: a fresh one each)")
    parser.add_argument("--seen-levels", default="",
                        help="capacity: the server already ran these levels (e.g. 1,2,4) with the "
                             "same texts; no flush between levels")
    parser.add_argument("--sim-arg", action="append", default=[],
                        help="extra server flag(s) appended to every profile, e.g. "
                             "--sim-arg=--chunked-prefill-size=4096")
    parser.add_argument("--json", type=Path, help="write all results here")
    args = parser.parse_args(argv)
    profiles = args.profile or ["sim-hicache", "sim-mtp"]
    seen = tuple(int(x) for x in args.seen_levels.split(",") if x.strip())
    configs = {p: parse_server_args(profile_args(p) + args.sim_arg) for p in profiles}
    out: dict[str, Any] = {"mixed": [], "capacity": []}
    if args.workload in ("mixed", "both"):
        engines = {p: Engine(cfg, seed=args.seed) for p, cfg in configs.items()}
        for run in range(1, args.runs + 1):
            flush = (run == 1 or args.flush_every_run) and not args.no_flush
            mixed = {p: run_mixed(cfg, engine=engines[p], flush=flush, warm=args.warm,
                                   spike_texts=args.spike_texts)
                     for p, cfg in configs.items()}
            out["mixed"].append(mixed)
            _print_mixed(mixed, run)
    if args.workload in ("capacity", "both"):
        engines = {p: Engine(cfg, seed=args.seed) for p, cfg in configs.items()}
        for run in range(1, args.runs + 1):
            print(f"\n## Capacity workload, run {run} (levels 1, 2, 4, 8, 12 x 240 s)\n")
            levels_by_profile = {}
            for p, cfg in configs.items():
                flush = (run == 1 or args.flush_every_run) and not args.no_flush
                levels = run_capacity(cfg, engine=engines[p], flush=flush, warm=args.warm,
                                      spike_mode=args.spike_mode, seen_levels=seen)
                levels_by_profile[p] = levels
                print(capacity_table(p, levels))
                wall = sum(lv["wall_s"] for lv in levels)
                model = sum(lv["duration"] for lv in levels)
                print(f"{model:.0f} s model time in {wall:.2f} s wall (x{model / wall:.0f})\n")
            out["capacity"].append(levels_by_profile)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


def _print_mixed(mixed: dict[str, dict[str, Any]], run: int) -> None:
    print(f"## Mixed workload, run {run} (600 s + drain)\n")
    print(mixed_table(mixed))
    print()
    print(cache_table(mixed))
    print()
    print(little_table(mixed))
    for p, res in mixed.items():
        print(f"\n{p}: {res['requests']} requests, {res['duration']:.1f} s model time, "
              f"{res['steps']} steps in {res['wall_s']:.2f} s wall "
              f"(x{res['duration'] / res['wall_s']:.0f} real time), pool "
              f"{res['pool_tokens']:,} tokens, by kind {json.dumps(res['by_kind'])}")
    print()


if __name__ == "__main__":
    raise SystemExit(main())
