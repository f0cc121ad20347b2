"""Span helpers: counting tokens by kind."""
import pytest

from pilotrl_jax.agent.spans import POLICY_KINDS, Span, SpanKind, count_tokens, flatten_spans


def test_count_tokens_by_kind():
    spans = [Span(SpanKind.PROMPT, [1, 2, 3]), Span(SpanKind.PLAN, [4], [0.1]), Span(SpanKind.ACTION, [5, 6], [0.2, 0.3]),
             Span(SpanKind.OBSERVATION, [7]), Span(SpanKind.EXTERNAL_PLAN, [8, 9])]
    assert count_tokens(spans) == 9 == len(flatten_spans(spans)[0])
    assert count_tokens(spans, POLICY_KINDS) == 3
    assert count_tokens(spans, [SpanKind.EXTERNAL_PLAN]) == 2
    assert count_tokens([], POLICY_KINDS) == 0
    with pytest.raises(TypeError, match="sequence of SpanKind"):
        count_tokens(spans, SpanKind.PLAN)
