"""EAGLE speculative decoding (the GLM-5.1 MTP head as draft), as the engine needs it.

SGLang's V2 worker (speculative/eagle_worker_v2.py) runs, per decode step: num_steps - 1
draft forwards (the first draft token comes from the previous draft-extend), one target
verify forward over num_draft_tokens tokens per request (last token + a topk=1 chain of
drafts), and one draft-extend forward over those tokens. A request then accepts the
longest prefix of drafts that matches the target's own samples, plus one bonus token:
1 .. num_draft_tokens tokens per step, all streamed in one chunk.

Acceptance model: each draft is accepted with probability ``p`` given that the ones before
it were (a geometric chain, the usual model for topk=1 chains), drawn from a seeded RNG.
Mean accept length = 1 + p + p^2 + p^3 for 3 drafts. Published MTP accept lengths for
DeepSeek-V3-class models with (3, 1, 4) on code and chat are ~2.8-3.3 (SGLang's DeepSeek
MTP blog, CI thresholds accept_length > 2.9 / 3.0) and DeepSeek-V3 reports 85-90 %
acceptance of its MTP token; the simulator's default p = 0.87 gives 3.29 (code is the
most predictable text; config.EngineConfig.spec_accept_prob).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class SpecStats:
    """Accept-length bookkeeping: a lifetime pair (server_info's avg_spec_accept_length,
    reset by flush_cache) and a log-window pair (the spec_accept_length gauge)."""

    verify_reqs: int = 0      # request-verifies (one per request per verify step)
    accepted: int = 0         # tokens accepted over them (drafts + bonus)
    window_reqs: int = 0
    window_accepted: int = 0
    window_drafts_ok: int = 0

    @property
    def lifetime_accept_length(self) -> float:
        return self.accepted / self.verify_reqs if self.verify_reqs else 0.0

    def take_window(self, draft_tokens: int) -> tuple[float, float]:
        """(accept length, accept rate) over the window, then start a new window."""
        if not self.window_reqs:
            return 0.0, 0.0
        length = self.window_accepted / self.window_reqs
        rate = self.window_drafts_ok / (self.window_reqs * max(draft_tokens - 1, 1))
        self.window_reqs = self.window_accepted = self.window_drafts_ok = 0
        return length, rate


class SpecDecoder:
    """Draws accepted lengths for EAGLE verify steps."""

    def __init__(self, *, num_steps: int, draft_tokens: int, accept_prob: float,
                 seed: int) -> None:
        self.num_steps = num_steps
        self.draft_tokens = draft_tokens
        self.accept_prob = accept_prob
        self._rng = random.Random(f"spec/{seed}")
        self.stats = SpecStats()

    @property
    def mean_accept_length(self) -> float:
        """Expected tokens per verify: 1 + p + ... + p^(draft_tokens - 1)."""
        p = self.accept_prob
        return sum(p**i for i in range(self.draft_tokens))

    def accept_length(self, accept_prob: float | None = None) -> int:
        """Tokens one request gets from one verify step (1 .. draft_tokens); ``accept_prob``
        overrides the per-draft probability for this request (a degraded draft)."""
        p = self.accept_prob if accept_prob is None else accept_prob
        drafts = 0
        rand = self._rng.random
        while drafts < self.draft_tokens - 1 and rand() < p:
            drafts += 1
        stats = self.stats
        stats.verify_reqs += 1
        stats.accepted += drafts + 1
        stats.window_reqs += 1
        stats.window_accepted += drafts + 1
        stats.window_drafts_ok += drafts
        return drafts + 1

    @property
    def draft_passes(self) -> int:
        """Sequential draft forwards per step: num_steps - 1, plus the draft-extend."""
        return self.num_steps - 1

    def reset_stats(self) -> None:
        self.stats = SpecStats()
