"""A user-written scenario: an agent loop whose context grows every turn.

Each agent starts from its own repository context; every turn appends the model's answer
and a tool result (about 2k tokens of file content) to the conversation, as a coding agent
does. This is the pattern for your own scenarios: write the agent coroutine, let
``glmperf_scenario`` run it at a concurrency level, assert the same usability bar.
"""

import pytest

from pytest_glmperf import Agent, GlmperfServer

TOOL_RESULT_TOKENS = 2000
ANSWER_TOKENS = 256


async def grow_context(agent: Agent) -> None:
    history = agent.state.setdefault("history", agent.contexts.messages(
        agent.contexts.text(f"agent-loop-{agent.index}", agent.state.get("start_tokens", 8000)),
        "Fix the failing test in this repository."))
    record = await agent.send(history, max_tokens=ANSWER_TOKENS)
    tool_output = agent.contexts.text(f"agent-loop-{agent.index}-tool-{agent.turn}", TOOL_RESULT_TOKENS)
    history.append({"role": "assistant", "content": f"(answer of {record.output_tokens} tokens) read_file"})
    history.append({"role": "user", "content": f"Tool result:\n{tool_output}"})


@pytest.mark.asyncio
async def test_agent_loop_with_growing_context(glmperf_server: GlmperfServer, glmperf_scenario) -> None:
    duration = glmperf_server.settings.capacity.level_duration_s
    result = await glmperf_scenario(grow_context, concurrency=2, duration_s=duration, name="agent-loop")
    result.assert_usable()
