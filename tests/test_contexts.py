"""Contexts: deterministic, distinct from the first token, fast to build at 100k tokens."""

import time

from pytest_glmperf.contexts import ContextFactory


def test_eight_contexts_of_100k_tokens_build_well_under_a_second():
    factory = ContextFactory(chars_per_token=3.6)
    began = time.perf_counter()
    texts = [factory.text(f"repo-{i}", 100_000) for i in range(8)]
    assert time.perf_counter() - began < 0.5
    assert all(len(t) == 360_000 for t in texts)


def test_contexts_are_deterministic_and_never_share_a_prefix():
    factory = ContextFactory()
    assert factory.text("repo-1", 5000) == ContextFactory().text("repo-1", 5000)
    first, second = factory.text("repo-1", 5000), factory.text("repo-2", 5000)
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)
    assert shared < 40  # they part within the header line, before the first cache page
