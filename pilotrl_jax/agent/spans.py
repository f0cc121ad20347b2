"""Span kinds: an episode is a list of spans, each of one kind; loss masks derive from kinds."""
from __future__ import annotations

import dataclasses
import enum
from typing import Optional, Sequence

import numpy as np


class SpanKind(enum.IntEnum):
    """Kind id of every token in a training sequence (stored as int8/int32 arrays)."""

    PAD = 0
    PROMPT = 1  # system + task text, chat-template scaffolding
    PLAN = 2  # a <global_plan> written by the policy
    ACTION = 3  # <thought>..</thought><action>..</action> written by the policy
    OBSERVATION = 4  # environment feedback (templated)
    EXTERNAL_PLAN = 5  # a plan the policy did not write (stage 1 plan source); never trained


POLICY_KINDS = (SpanKind.PLAN, SpanKind.ACTION)
TRAINABLE_NAMES = {"plan": SpanKind.PLAN, "action": SpanKind.ACTION}


@dataclasses.dataclass
class Span:
    """A run of tokens of one kind; policy spans carry the sampler's per-token log-probs."""

    kind: SpanKind
    token_ids: list[int]
    logprobs: Optional[list[float]] = None
    text: str = ""

    def __post_init__(self):
        if self.kind in POLICY_KINDS and self.logprobs is not None and len(self.logprobs) != len(self.token_ids):
            raise ValueError(
                f"Span of kind {self.kind.name} has {len(self.token_ids)} tokens but "
                f"{len(self.logprobs)} log-probs; pass one log-prob per sampled token"
            )


def kinds_from_names(names: Sequence[str]) -> tuple[SpanKind, ...]:
    """Map config names ('plan', 'action') to span kinds, with a clear error for anything else."""
    out = []
    for n in names:
        if n not in TRAINABLE_NAMES:
            raise ValueError(
                f"trained span kind {n!r} is not trainable; expected a subset of {sorted(TRAINABLE_NAMES)}"
            )
        out.append(TRAINABLE_NAMES[n])
    return tuple(out)


def flatten_spans(spans: Sequence[Span]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate spans into (token_ids, kind_ids, logprobs) 1-D arrays; logprobs 0 where none."""
    ids, kinds, lps = [], [], []
    for s in spans:
        ids.extend(s.token_ids)
        kinds.extend([int(s.kind)] * len(s.token_ids))
        lps.extend(s.logprobs if s.logprobs is not None else [0.0] * len(s.token_ids))
    return (np.asarray(ids, np.int32), np.asarray(kinds, np.int32), np.asarray(lps, np.float32))


def count_tokens(spans: Sequence[Span], kinds: Optional[Sequence[SpanKind]] = None) -> int:
    """Number of tokens in `spans`, or only in spans whose kind is in `kinds` (e.g. POLICY_KINDS)."""
    if kinds is not None and isinstance(kinds, (str, SpanKind)):
        raise TypeError(f"kinds must be a sequence of SpanKind, got {kinds!r}; e.g. pass POLICY_KINDS")
    wanted = None if kinds is None else {SpanKind(k) for k in kinds}
    return sum(len(s.token_ids) for s in spans if wanted is None or s.kind in wanted)
