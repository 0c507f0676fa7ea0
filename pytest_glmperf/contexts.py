"""Deterministic code-like "repository" contexts of a target token count.

Text is assembled from a fixed pool of synthetic source lines, so building 8 contexts of
100k tokens takes milliseconds. The size in tokens depends on the server's tokenizer: the
characters-per-token ratio is measured once against the server (``calibrate``) and cached.
Each context starts with its own header, so two contexts never share a cached prefix.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

KEYWORDS = ["def", "return", "if", "else", "for", "while", "import", "from", "class", "with",
            "async", "await", "yield", "raise", "try", "except", "lambda", "assert", "not", "in"]
WORDS = ["user", "request", "config", "buffer", "token", "cache", "handler", "session", "index",
         "value", "result", "stream", "worker", "batch", "queue", "router", "parser", "engine",
         "schema", "record", "metric", "server", "client", "payload", "context", "layer", "page"]
PUNCT = ["(", ")", ":", ",", ".", "=", "[", "]", "{", "}", "+", "-", "*", "==", "->", "!="]

DEFAULT_CHARS_PER_TOKEN = 3.6
POOL_LINES = 4096


@functools.cache
def _line_pool(seed: int = 7) -> list[str]:
    """The shared pool of synthetic lines, built on first use (~45 ms: not at import)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(POOL_LINES):
        indent = "    " * rng.randint(0, 3)
        parts = []
        for _ in range(rng.randint(3, 12)):
            roll = rng.random()
            if roll < 0.2:
                parts.append(rng.choice(KEYWORDS))
            elif roll < 0.7:
                parts.append(f"{rng.choice(WORDS)}_{rng.choice(WORDS)}{rng.randint(0, 99)}")
            else:
                parts.append(rng.choice(PUNCT))
        lines.append(indent + " ".join(parts))
    return lines


@dataclass(frozen=True)
class ContextFactory:
    """Builds contexts and prompts at a measured characters-per-token ratio."""

    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    namespace: str = "glmperf"

    def text(self, key: str, tokens: int) -> str:
        """Deterministic code-like text of about ``tokens`` tokens, unique per ``key``."""
        target_chars = int(tokens * self.chars_per_token)
        rng = random.Random(f"{self.namespace}/{key}")
        header = f"# repository {self.namespace}/{key}\n# file src/{key}/main.py\n"
        pieces, size = [header], len(header)
        while size < target_chars:
            start = rng.randrange(POOL_LINES)
            block = "\n".join(_line_pool()[start:start + 64]) + "\n"
            pieces.append(block)
            size += len(block)
        return "".join(pieces)[:target_chars]

    def messages(self, context: str, task: str) -> list[dict[str, str]]:
        """A coding-agent turn: the repository as context, then the task."""
        return [
            {"role": "system", "content": "You are a coding agent working in this repository."},
            {"role": "user", "content": f"{context}\n\n### Task\n{task}"},
        ]


SendProbe = Callable[[list[dict[str, str]]], Awaitable[int | None]]


async def calibrate(probe: SendProbe, *, sample_tokens: int = 8000) -> float:
    """Measure characters per token with two requests (small and large) via ``probe``.

    ``probe(messages)`` sends one request (max_tokens 1) and returns usage.prompt_tokens.
    The difference between the two removes the chat template's own tokens.
    """
    factory = ContextFactory()
    small_text = factory.text("calibration-small", 100)
    large_text = factory.text("calibration-large", sample_tokens)
    small = await probe(factory.messages(small_text, "calibrate"))
    large = await probe(factory.messages(large_text, "calibrate"))
    if not small or not large or large <= small:
        return DEFAULT_CHARS_PER_TOKEN
    return (len(large_text) - len(small_text)) / (large - small)
