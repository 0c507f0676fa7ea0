"""A deterministic toy tokenizer, GLM-style chat template and output text for the simulator.

Why a toy: the simulator needs token *counts* and prefix identity (for the radix cache), not
GLM's real vocabulary. A compiled regex splits text into code-like pieces (identifiers cut
into <= 7-letter pieces with an optional leading space, short digit runs, indentation runs,
newlines, pairs of punctuation), which gives about 3.5 characters per token on source code,
close to what real BPE tokenizers give on code. It is a pure function of the text, so equal
text always gives equal tokens, and a shared text prefix gives shared leading pages.

Page keys identify prompt prefixes page by page (``page_size`` tokens per page) for the
engine's prefix cache: key *i* is a hash chained over every page up to and including page *i*.
We hash the page's *text* rather than a list of token ids: tokenization is a pure function of
the text, so the two are equivalent, and hashing one bytes slice per page is much faster.

Long prompts (coding-agent contexts reach 400 KB) are tokenized piecewise by
:func:`tokenize_async`, yielding to the event loop between pieces so other streams' chunks
are not held back, and pieces already seen are served from a cache: the client's TTFT then
holds about 5 ms of wall time for a resent 100k-token context instead of ~35 ms (which at
time scale 10 would add 0.35 model seconds that the modelled server never spent).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

# Special markers of the GLM chat template count as one token each, like real special tokens.
_SPECIAL = r"\[gMASK\]|<sop>|<\|[a-z_]{1,20}\|>|</?think>|</?tool_call>"
# A token never contains "\n" except the newline token itself; pieces split right after a
# newline therefore tokenize exactly like the whole text (tokenize_async relies on this).
TOKEN_RE = re.compile(
    _SPECIAL + r"| ?[A-Za-z]{1,7}|\d{1,3}|_| {2,8}|\t{1,4}|\n|[^\sA-Za-z0-9_]{1,2}|\s|.",
    re.S,
)
_PIECE_CHARS = 4_096    # text per tokenizer slice in tokenize_async (about 0.5 ms of regex)
_PIECE_CACHE_MAX = 16_384  # cached slices (~64 MB of prompt text, ~20 MB of lengths)
_PIECE_CACHE: OrderedDict[tuple[int, int], bytes] = OrderedDict()
_KEY_BYTES = 8


def count_tokens(text: str) -> int:
    """Number of tokens in *text*."""
    return len(TOKEN_RE.findall(text))


@dataclass
class Tokenized:
    """A tokenized prompt: its token count and the chained key of each full page."""

    num_tokens: int
    page_keys: list[int] = field(default_factory=list)


class _PageHasher:
    """Chained page keys computed incrementally, as token lengths arrive piece by piece."""

    def __init__(self, text: str, page_size: int) -> None:
        self.text = text
        self.page_size = page_size
        self.keys: list[int] = []
        self.num_tokens = 0
        self._prev = b""
        self._page_start = 0   # text offset where the current (incomplete) page starts
        self._end = 0          # text offset after the last token fed
        self._in_page = 0      # tokens already in the current page

    def feed(self, lengths: bytes | list[int]) -> None:
        """Account for the next tokens (their character lengths, in order)."""
        ends = list(accumulate(lengths, initial=self._end))
        idx = self.page_size - self._in_page
        while idx <= len(lengths):
            self._close_page(ends[idx])
            idx += self.page_size
        self._in_page = (self._in_page + len(lengths)) % self.page_size
        self._end = ends[-1]
        self.num_tokens += len(lengths)

    def _close_page(self, end: int) -> None:
        chunk = self.text[self._page_start:end].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(self._prev + chunk, digest_size=_KEY_BYTES).digest()
        self.keys.append(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)
        self._prev = digest
        self._page_start = end

    def result(self) -> Tokenized:
        return Tokenized(self.num_tokens, self.keys)


def tokenize(text: str, page_size: int = 64) -> Tokenized:
    """Tokenize *text* in one go (fine for short prompts; blocks for ~30 ms per 400 KB)."""
    hasher = _PageHasher(text, page_size)
    hasher.feed(list(map(len, TOKEN_RE.findall(text))))
    return hasher.result()


def tokenize_ids(ids: list[int], page_size: int = 64) -> Tokenized:
    """Page keys of a prompt given as token ids (``/v1/completions``, ``/generate``).

    Chained like text pages, over the ids' bytes: equal id prompts share cached pages. They
    never match a text prompt's pages, since the toy vocabulary has no real ids.
    """
    keys: list[int] = []
    prev = b""
    for start in range(0, len(ids) - page_size + 1, page_size):
        page = array("q", ids[start:start + page_size]).tobytes()
        prev = hashlib.blake2b(b"ids" + prev + page, digest_size=_KEY_BYTES).digest()
        keys.append(int.from_bytes(prev, "little") & 0x7FFF_FFFF_FFFF_FFFF)
    return Tokenized(len(ids), keys)


def _split_points(text: str, piece: int) -> list[int]:
    """Offsets just after a newline, about *piece* characters apart, ending at len(text)."""
    points: list[int] = []
    pos = 0
    while pos + piece < len(text):
        cut = text.find("\n", pos + piece)
        if cut < 0:
            break
        pos = cut + 1
        points.append(pos)
    points.append(len(text))
    return points


async def tokenize_async(text: str, page_size: int = 64) -> Tokenized:
    """Tokenize like :func:`tokenize`, yielding to the event loop between ~4 KB slices.

    Why: one regex pass plus page hashing over a 400 KB prompt holds the interpreter for
    tens of milliseconds; at time scale 10 that would show up as a fake stall of several
    hundred model milliseconds in every other stream.
    """
    if len(text) <= _PIECE_CHARS:
        return tokenize(text, page_size)
    hasher = _PageHasher(text, page_size)
    start = 0
    for end in _split_points(text, _PIECE_CHARS):
        hasher.feed(_piece_lengths(text[start:end]))
        start = end
        await asyncio.sleep(0)
    return hasher.result()


def _piece_lengths(piece: str) -> bytes:
    """Token lengths of one newline-ended piece, from an LRU cache when seen before.

    Why: coding agents resend the same 100k-token context with a new question at the end;
    the pieces before the new text are identical, so only the tail is really tokenized.
    Tokens are at most 8 characters long, so one byte per token suffices.
    """
    key = (len(piece), hash(piece))
    cached = _PIECE_CACHE.get(key)
    if cached is not None:
        _PIECE_CACHE.move_to_end(key)
        return cached
    lengths = bytes(map(len, TOKEN_RE.findall(piece)))
    _PIECE_CACHE[key] = lengths
    if len(_PIECE_CACHE) > _PIECE_CACHE_MAX:
        _PIECE_CACHE.popitem(last=False)
    return lengths


# -- chat template ------------------------------------------------------------------------------

def _content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of an OpenAI content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def _tool_calls_text(calls: Any) -> str:
    """Assistant tool calls rendered the way GLM's template lays them out."""
    out = []
    for call in calls or []:
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        out.append(f"<tool_call>{fn.get('name', '')}\n{fn.get('arguments', '')}</tool_call>")
    return "".join(out)


def apply_chat_template(
    messages: list[dict[str, Any]],
    tools: list[Any] | None = None,
    enable_thinking: bool = True,
) -> str:
    """Render OpenAI chat messages into a GLM-4.5/5-style prompt.

    The layout (``[gMASK]<sop><|system|>\\n...<|user|>\\n...<|assistant|>\\n``) keeps every
    earlier turn byte-identical when a conversation grows, so a coding agent's growing
    context shares its prefix pages with the previous request, as with the real template.
    """
    out = ["[gMASK]<sop>"]
    if tools:
        out.append("<|system|>\n# Tools\n")
        out.append(json.dumps(tools, separators=(",", ":"), sort_keys=True))
    for msg in messages:
        role = str(msg.get("role", "user"))
        marker = {"developer": "system", "tool": "observation"}.get(role, role)
        out.append(f"<|{marker}|>\n")
        if role == "assistant":
            reasoning = msg.get("reasoning_content")
            if reasoning:
                out.append(f"<think>{reasoning}</think>")
            out.append(_content_text(msg.get("content")))
            out.append(_tool_calls_text(msg.get("tool_calls")))
        else:
            out.append(_content_text(msg.get("content")))
    out.append("<|assistant|>\n")
    if not enable_thinking:
        out.append("<think></think>\n")
    return "".join(out)


# -- generated output ---------------------------------------------------------------------------

_OUT_WORDS = (
    "def", "return", "self", "value", "result", "items", "config", "request", "reply", "data",
    "index", "count", "buffer", "handler", "context", "update", "token", "stream", "parse",
    "format", "cache", "page", "prefix", "batch", "queue", "state", "node", "path", "file",
    "line", "error", "check", "build", "merge", "split", "apply",
)
_OUT_PUNCT = ["(", ")", ":", ",", ".", "=", "\n", "    "]


def _output_pieces() -> list[str]:
    """A fixed cycle of one-token text pieces that reads like code."""
    pieces: list[str] = []
    for i, word in enumerate(_OUT_WORDS):
        pieces.append(" " + word)
        pieces.append(_OUT_PUNCT[i % len(_OUT_PUNCT)])
        if i % 5 == 4:
            pieces.extend(["\n", "    "])
    return pieces


OUTPUT_PIECES: tuple[str, ...] = tuple(_output_pieces())
# The same pieces, already escaped for a JSON string body: chunk serialization is then a
# plain join on the hot path (thousands of chunks per second).
OUTPUT_PIECES_JSON: tuple[str, ...] = tuple(json.dumps(p)[1:-1] for p in OUTPUT_PIECES)
_CYCLE = len(OUTPUT_PIECES)
OUTPUT_ID_BASE = 1_000   # output piece i has the toy token id OUTPUT_ID_BASE + i
_DOUBLED_JSON = OUTPUT_PIECES_JSON * 2


def output_ids(start: int, num_tokens: int) -> list[int]:
    """Token ids of the same output tokens as :func:`output_text` (one id per piece)."""
    return [OUTPUT_ID_BASE + (i % _CYCLE) for i in range(start, start + num_tokens)]


def output_text(start: int, num_tokens: int, json_escaped: bool = False) -> str:
    """Deterministic text of tokens ``start .. start+num_tokens-1`` of a generated answer."""
    pieces = _DOUBLED_JSON if json_escaped else OUTPUT_PIECES * 2
    out: list[str] = []
    pos = start % _CYCLE
    left = num_tokens
    while left > 0:
        take = min(left, _CYCLE)
        out.append("".join(pieces[pos:pos + take]))
        left -= take
        pos = (pos + take) % _CYCLE
    return "".join(out)
