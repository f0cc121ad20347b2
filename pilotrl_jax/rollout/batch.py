"""Rollout output: one `EpisodeResult` per episode and the padded `RolloutBatch` a trainer consumes.

Every episode is kept as its list of spans, exactly the tokens the sampler conditioned on (prompt,
plan, action, observation, external plan); `RolloutBatch.to_arrays()` right-pads them into [B, T]
arrays with T bucketed (a power of two, or a multiple of some k) so training compiles a handful of
times. Row b belongs to group `group_ids[b]` (the task index): the GRPO/RLOO group.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Sequence, Union

import numpy as np

from pilotrl_jax.buckets import MIN_BUCKET, bucket_length
from pilotrl_jax.agent.spans import POLICY_KINDS, Span, SpanKind, count_tokens, flatten_spans

# How an episode ended. success/env_done/max_turns are set by AgentEpisode; the rest by the runner.
STATUSES = ("success", "env_done", "max_turns", "budget", "env_error", "format_errors")
STATUS_IDS = {s: i for i, s in enumerate(STATUSES)}


@dataclasses.dataclass
class EpisodeResult:
    """One finished episode: its spans (the sampled sequence) and what the trainer and logs need."""

    task_id: str
    group_id: int  # index of the task in the rollout's task list (GRPO group)
    sample: int  # index within the group, 0..G-1
    seed: int  # the sampler seed of this episode
    status: str
    score: float
    won: bool
    format_errors: int
    num_turns: int
    spans: list = dataclasses.field(default_factory=list)
    error: Optional[str] = None  # env_error: what the environment raised
    plan_history: list = dataclasses.field(default_factory=list)  # (turn, kind name, steps)
    info: dict = dataclasses.field(default_factory=dict)  # final env info (admissible actions dropped)
    # The finished AgentEpisode (turns, plan history, observations; for judges and rewards), None when
    # the env never started. Its spans are `spans`. Not written by to_dict.
    agent: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def length(self) -> int:
        """Total tokens of the episode."""
        return count_tokens(self.spans)

    @property
    def policy_tokens(self) -> int:
        """Tokens the policy wrote (plan + action spans)."""
        return count_tokens(self.spans, POLICY_KINDS)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token_ids, kind_ids, logprobs) of the whole episode (1-D)."""
        return flatten_spans(self.spans)

    def to_dict(self, with_tokens: bool = False) -> dict:
        """A JSON-ready view: metadata and the text of every span (token ids with with_tokens=True)."""
        spans = []
        for s in self.spans:
            d = {"kind": SpanKind(s.kind).name.lower(), "text": s.text, "n_tokens": len(s.token_ids)}
            if with_tokens:
                d["token_ids"] = [int(t) for t in s.token_ids]
                if s.logprobs is not None:
                    d["logprobs"] = [float(x) for x in s.logprobs]
            spans.append(d)
        return {
            "task_id": self.task_id, "group_id": self.group_id, "sample": self.sample, "seed": self.seed,
            "status": self.status, "score": self.score, "won": self.won, "format_errors": self.format_errors,
            "num_turns": self.num_turns, "length": self.length, "policy_tokens": self.policy_tokens,
            "error": self.error,
            "plan_history": [[t, k, list(st)] for t, k, st in self.plan_history],
            "info": _jsonable(self.info), "spans": spans,
        }


def _jsonable(x: Any) -> Any:
    """Best-effort conversion of env info to JSON types."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


@dataclasses.dataclass
class RolloutBatch:
    """The episodes of one rollout (task-major: row = group_id * G + sample) and run statistics."""

    episodes: list
    stats: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def statuses(self) -> list:
        """Status of every episode, in row order."""
        return [e.status for e in self.episodes]

    def to_arrays(self, bucket: Union[str, int] = "pow2", pad_to: Optional[int] = None,
                  min_len: int = MIN_BUCKET) -> dict:
        """Padded numpy arrays for training.

        [B, T]: input_ids (int32, pad 0), kind_ids (int32 SpanKind, PAD=0), sampler_logprobs (float32,
        0 off policy spans), attention_mask (int32). [B]: scores, won, status (index into STATUSES),
        format_errors, num_turns, lengths, group_ids. T = pad_to if given, else `bucket_length`
        of the longest episode (`bucket` "pow2" or an int multiple such as 128).
        """
        if not self.episodes:
            raise ValueError("RolloutBatch has no episodes; collect at least one task")
        lengths = np.asarray([e.length for e in self.episodes], np.int32)
        longest = int(lengths.max())
        if pad_to is None:
            T = bucket_length(longest, bucket, min_len)
        else:
            if not isinstance(pad_to, (int, np.integer)) or pad_to < 1:
                raise ValueError(f"pad_to={pad_to!r}; expected a positive int (the training sequence length)")
            if longest > pad_to:
                worst = int(lengths.argmax())
                raise ValueError(f"episode {worst} ({self.episodes[worst].task_id}) has {longest} tokens > "
                                 f"pad_to={pad_to}; raise pad_to or lower the rollout token budget")
            T = int(pad_to)
        B = len(self.episodes)
        ids = np.zeros((B, T), np.int32)
        kinds = np.zeros((B, T), np.int32)
        lps = np.zeros((B, T), np.float32)
        for b, e in enumerate(self.episodes):
            t, k, lp = e.arrays()
            n = len(t)
            ids[b, :n], kinds[b, :n], lps[b, :n] = t, k, lp
        return {
            "input_ids": ids,
            "kind_ids": kinds,
            "sampler_logprobs": lps,
            "attention_mask": (kinds != int(SpanKind.PAD)).astype(np.int32),
            "scores": np.asarray([e.score for e in self.episodes], np.float32),
            "won": np.asarray([e.won for e in self.episodes], bool),
            "status": np.asarray([STATUS_IDS.get(e.status, -1) for e in self.episodes], np.int32),
            "format_errors": np.asarray([e.format_errors for e in self.episodes], np.int32),
            "num_turns": np.asarray([e.num_turns for e in self.episodes], np.int32),
            "lengths": lengths,
            "group_ids": np.asarray([e.group_id for e in self.episodes], np.int32),
        }

    def to_jsonl(self, path: str, with_tokens: bool = False) -> None:
        """Write one JSON line per episode (metadata + span texts) to `path`."""
        with open(path, "w") as f:
            for e in self.episodes:
                f.write(json.dumps(e.to_dict(with_tokens)) + "\n")

    def summary(self) -> dict:
        """Success rate, mean score, status counts, mean length and turns."""
        n = len(self.episodes)
        counts = {s: 0 for s in STATUSES}
        for e in self.episodes:
            counts[e.status] = counts.get(e.status, 0) + 1
        return {
            "episodes": n,
            "success_rate": sum(e.won for e in self.episodes) / max(n, 1),
            "mean_score": float(np.mean([e.score for e in self.episodes])) if n else 0.0,
            "mean_length": float(np.mean([e.length for e in self.episodes])) if n else 0.0,
            "mean_turns": float(np.mean([e.num_turns for e in self.episodes])) if n else 0.0,
            "statuses": counts,
        }


def episode_spans_text(spans: Sequence[Span]) -> str:
    """The episode's text, span after span (for quick inspection)."""
    return "".join(s.text for s in spans)
