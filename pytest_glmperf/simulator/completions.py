"""``POST /v1/completions`` and SGLang's native ``POST /generate``.

What peers' clients send: vLLM's ``bench serve`` and guidellm default to text completions,
SGLang's ``bench_serving`` to ``/generate``. Both run the chat endpoint's machinery (engine
submission, faults, disconnect handling, send stamps) with their own wire format and
request fields (params.py): a raw prompt, text or token ids, with no chat template and no
reasoning split.
"""

from __future__ import annotations

import time

from .asgi import Receive, Scope, Send
from .chat import ChatCompletions
from .params import RequestParams, parse_completion, parse_generate
from .sse import CompletionFormat, GenerateFormat, WireFormat

__all__ = ["TextCompletions"]


class TextCompletions(ChatCompletions):
    """The OpenAI text-completions endpoint and SGLang's native generate endpoint."""

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/v1/completions``: ``text`` deltas, the finish reason on the last one."""
        params = parse_completion(await self._json_body(scope, receive), self._served_name(),
                                  self.config.stream_response_default_include_usage)
        await self._serve(scope, receive, send, params, self._completion_format)

    def _completion_format(self, params: RequestParams, prompt_tokens: int) -> WireFormat:
        return CompletionFormat(params.rid, params.model, prompt_tokens, self._cache_report())

    async def generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/generate``: cumulative ``text``, ``output_ids`` and ``meta_info`` per chunk."""
        params = parse_generate(await self._json_body(scope, receive), self._served_name())
        await self._serve(scope, receive, send, params, self._generate_format)

    def _generate_format(self, params: RequestParams, prompt_tokens: int) -> WireFormat:
        return GenerateFormat(params.rid, prompt_tokens, self._cache_report(),
                              time.perf_counter_ns(), self.options.time_scale,
                              incremental=self.config.incremental_streaming_output)
