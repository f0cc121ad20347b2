"""Episode rewards: outcome, format penalty, DAPO overlong penalty and an optional plan-score term.

All pure NumPy functions over per-episode arrays. The total is one scalar per episode, placed on
the episode's last policy token by the trainer:
    r = outcome + format_term + overlong_term + invalid_term + plan_weight * plan_term
- outcome: 1/0 for won (`outcome="won"`) or the engine's graded score in [0, 1] (`outcome="score"`).
- format_term: `format_penalty` (paper: -0.1) once when the episode had any format error
  (`format_mode="any"`), or per error, floored at `format_floor` (`format_mode="per_error"`).
- overlong_term (DAPO): min(-(L - (Lmax - B)) / B, 0), L = response tokens of the episode
  (everything after the first prompt span: policy + observation tokens, as the sampler's budget
  counts them). With `overlong_clip` (DAPO's own choice) it is floored at -1 for L > Lmax.
- invalid_term (ours, off by default): `invalid_action_penalty` per wasted turn, floored at
  `invalid_action_floor`; a wasted turn is an action the environment rejected (its observation has a
  failure marker such as ALFWorld's "Nothing happens.") or a turn with a format error. Agent RL
  code bases penalise actions they cannot parse (verl-agent); this also counts the commands the
  environment rejects, so it separates failed episodes that looped on rejected commands from
  failed episodes that kept acting sensibly.
- plan_term: the judge's normalized plan score in [0, 1] (or the raw 1..5 with `plan_scale="raw"`).
  Where the judgement failed (judge_ok False, e.g. the judge call timed out or its answer was
  unreadable) the episode gets the mean plan term of the episodes judged ok in its GRPO group
  (`groups`; without groups the batch is one group), so a failure is never scored as a plan, good
  or bad: it moves nothing within its group. When no episode of the group was judged ok the term
  is 0 for all of them, which cancels in the group. Failures are counted in `reward/judge_failures`;
  episodes never sent to the judge (judge_ok None) get 0 and are not counted.
Credit per turn or per token (GiGPO's step-level credit) is not a reward: it is `rl.turn_credit`'s.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Mapping, Optional, Sequence

import numpy as np

from pilotrl_jax.rewards.grounded import DEFAULT_FAILURE_MARKERS

OUTCOMES = ("won", "score")
FORMAT_MODES = ("any", "per_error")
PLAN_SCALES = ("unit", "raw")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """How per-episode rewards are assembled (defaults: the paper's stage-1/3 reward)."""

    outcome: str = "won"  # "won": 1/0; "score": the engine's graded score in [0, 1]
    format_penalty: float = -0.1  # added when the episode had format errors (0 disables)
    format_mode: str = "any"  # "any": once; "per_error": per error, floored at format_floor
    format_floor: float = -1.0
    overlong: bool = True
    max_response_len: int = 14336  # Lmax (response tokens)
    overlong_buffer: int = 3072  # B
    overlong_clip: bool = True  # floor the overlong term at -1 (L > Lmax)
    invalid_action_penalty: float = 0.0  # per wasted turn (rejected action or format error); 0 disables
    invalid_action_floor: float = -0.5  # the invalid-action term never goes below this
    plan_weight: float = 0.0  # stage 2: > 0 adds plan_weight * plan score
    plan_scale: str = "unit"  # "unit": normalized [0, 1]; "raw": 1..5

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"RewardConfig.outcome={self.outcome!r}; expected one of {OUTCOMES}")
        if self.format_mode not in FORMAT_MODES:
            raise ValueError(f"RewardConfig.format_mode={self.format_mode!r}; expected one of {FORMAT_MODES}")
        if self.plan_scale not in PLAN_SCALES:
            raise ValueError(f"RewardConfig.plan_scale={self.plan_scale!r}; expected one of {PLAN_SCALES}")
        if self.format_penalty > 0:
            raise ValueError(f"RewardConfig.format_penalty={self.format_penalty} is a bonus; pass a value <= 0 (paper: -0.1)")
        if self.overlong and not (0 < self.overlong_buffer <= self.max_response_len):
            raise ValueError(
                f"RewardConfig overlong_buffer={self.overlong_buffer}, max_response_len={self.max_response_len}; "
                "expected 0 < overlong_buffer <= max_response_len (paper: 3072 and 14336)"
            )
        if self.invalid_action_penalty > 0 or self.invalid_action_floor > 0:
            raise ValueError(f"RewardConfig.invalid_action_penalty={self.invalid_action_penalty}, invalid_action_floor="
                             f"{self.invalid_action_floor}; both must be <= 0 (a penalty, e.g. -0.05 and -0.5)")
        if self.plan_weight < 0:
            raise ValueError(f"RewardConfig.plan_weight={self.plan_weight}; expected >= 0 (0 disables the plan term)")


@dataclasses.dataclass(frozen=True)
class EpisodeSummary:
    """What the reward needs from one finished episode."""

    won: bool
    score: float = 0.0  # graded score in [0, 1] (info["score"])
    format_errors: int = 0
    response_len: int = 0  # tokens after the first prompt span
    plan_score: Optional[float] = None  # normalized [0, 1] judge score, None when not judged
    plan_score_raw: Optional[float] = None  # 1..5
    judge_ok: Optional[bool] = None  # None: not judged; False: the judgement failed
    invalid_actions: int = 0  # wasted turns: actions the environment rejected, plus format errors


def summarize_episode(episode: Any, judgement: Any = None) -> EpisodeSummary:
    """EpisodeSummary of a finished `AgentEpisode` (and its `Judgement`, if judged)."""
    from pilotrl_jax.agent.spans import SpanKind

    spans = getattr(episode, "spans", None)
    if spans is None:
        raise TypeError(f"summarize_episode needs an AgentEpisode, got {type(episode).__name__}")
    info = dict(getattr(episode, "final_info", {}) or {})
    won = bool(info.get("won", False)) or getattr(episode, "status", None) == "success"
    first = next((i for i, s in enumerate(spans) if s.kind == SpanKind.PROMPT), -1)
    response_len = int(sum(len(s.token_ids) for s in spans[first + 1:]))
    kw: dict = {}
    if judgement is not None:
        kw = dict(judge_ok=bool(judgement.ok))
        if judgement.ok:
            kw.update(plan_score=float(judgement.score_norm), plan_score_raw=float(judgement.score))
    rejected = sum(1 for s in spans[first + 1:] if s.kind == SpanKind.OBSERVATION and rejected_action(s.text))
    return EpisodeSummary(won=won, score=float(info.get("score", float(won))), format_errors=int(episode.format_errors),
                          response_len=response_len, invalid_actions=rejected + int(episode.format_errors), **kw)


def rejected_action(observation: str) -> bool:
    """Whether an observation says the environment rejected the action (a failure marker)."""
    low = observation.lower()
    return any(m in low for m in DEFAULT_FAILURE_MARKERS)


def outcome_reward(won: np.ndarray, score: np.ndarray, outcome: str = "won") -> np.ndarray:
    """1/0 for won, or the graded score clipped to [0, 1]."""
    if outcome == "won":
        return np.asarray(won, bool).astype(np.float32)
    if outcome == "score":
        return np.clip(np.asarray(score, np.float32), 0.0, 1.0)
    raise ValueError(f"outcome={outcome!r}; expected one of {OUTCOMES}")


def format_term(format_errors: np.ndarray, penalty: float = -0.1, mode: str = "any", floor: float = -1.0) -> np.ndarray:
    """`penalty` when an episode had format errors ("any"), or per error floored at `floor`."""
    n = np.asarray(format_errors, np.float32)
    if mode == "any":
        return np.where(n > 0, np.float32(penalty), np.float32(0.0)).astype(np.float32)
    if mode == "per_error":
        return np.maximum(n * np.float32(penalty), np.float32(floor)).astype(np.float32)
    raise ValueError(f"mode={mode!r}; expected one of {FORMAT_MODES}")


def overlong_term(lengths: np.ndarray, max_len: int = 14336, buffer: int = 3072, clip: bool = True) -> np.ndarray:
    """DAPO soft overlong penalty min(-(L - (Lmax - B)) / B, 0), floored at -1 with `clip`."""
    if buffer <= 0:
        raise ValueError(f"buffer={buffer}; expected > 0 tokens")
    L = np.asarray(lengths, np.float64)
    r = np.minimum(-(L - (max_len - buffer)) / buffer, 0.0)
    if clip:
        r = np.maximum(r, -1.0)
    return r.astype(np.float32)


def invalid_term(invalid_actions: np.ndarray, penalty: float = 0.0, floor: float = -0.5) -> np.ndarray:
    """`penalty` per wasted turn, floored at `floor` (0 everywhere when `penalty` is 0)."""
    n = np.asarray(invalid_actions, np.float32)
    return np.maximum(n * np.float32(penalty), np.float32(floor)).astype(np.float32)


def _as_summaries(episodes: Sequence[Any]) -> list[EpisodeSummary]:
    out = []
    for i, e in enumerate(episodes):
        if isinstance(e, EpisodeSummary):
            out.append(e)
        elif isinstance(e, Mapping):
            try:
                out.append(EpisodeSummary(**e))
            except TypeError as err:
                raise ValueError(
                    f"episodes[{i}] has keys {sorted(e)}; expected EpisodeSummary fields "
                    f"{[f.name for f in dataclasses.fields(EpisodeSummary)]} ({err})"
                ) from err
        else:
            raise TypeError(
                f"episodes[{i}] is {type(e).__name__}; pass EpisodeSummary or dict (use summarize_episode on an AgentEpisode)"
            )
    return out


@dataclasses.dataclass
class RewardBatch:
    """Per-episode rewards, their components (arrays) and summary metrics."""

    reward: np.ndarray
    components: dict
    metrics: dict


def fill_failed_plan_terms(terms: np.ndarray, ok: np.ndarray, failed: np.ndarray,
                           groups: Sequence[Hashable]) -> np.ndarray:
    """`terms` with each failed judgement's entry set to the mean term of its group's ok episodes (0 if none)."""
    out = np.asarray(terms, np.float32).copy()
    index: dict = {}
    gid = np.array([index.setdefault(g, len(index)) for g in groups], np.int64)
    for g in set(gid[failed].tolist()):
        good = (gid == g) & ok
        out[(gid == g) & failed] = out[good].mean() if good.any() else 0.0
    return out


def compute_rewards(episodes: Sequence[Any], cfg: RewardConfig = RewardConfig(),
                    groups: Optional[Sequence[Hashable]] = None) -> RewardBatch:
    """Total reward per episode plus components (outcome/format/overlong/plan) and metrics; `groups`
    (one GRPO group id per episode, None: one group) is where a failed judgement takes its plan term from."""
    eps = _as_summaries(episodes)
    n = len(eps)
    groups = [0] * n if groups is None else list(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} ids for {n} episodes; pass one GRPO group id per episode "
                         "(e.g. [e.group_id for e in episodes]) or None")
    won = np.array([e.won for e in eps], bool)
    score = np.array([e.score for e in eps], np.float32)
    ferr = np.array([e.format_errors for e in eps], np.int64)
    lens = np.array([e.response_len for e in eps], np.int64)
    if n and (ferr.min() < 0 or lens.min() < 0 or min(e.invalid_actions for e in eps) < 0):
        raise ValueError("format_errors, response_len and invalid_actions must be >= 0 for every episode")
    outcome = outcome_reward(won, score, cfg.outcome)
    fmt = format_term(ferr, cfg.format_penalty, cfg.format_mode, cfg.format_floor)
    over = (overlong_term(lens, cfg.max_response_len, cfg.overlong_buffer, cfg.overlong_clip)
            if cfg.overlong else np.zeros(n, np.float32))
    judged = np.array([e.judge_ok is not None for e in eps], bool)
    plan_ok = np.array([bool(e.judge_ok) and e.plan_score is not None for e in eps], bool)
    if cfg.plan_scale == "unit":
        raw_plan = np.array([e.plan_score if ok else 0.0 for e, ok in zip(eps, plan_ok)], np.float32)
    else:
        raw_plan = np.array([(e.plan_score_raw if e.plan_score_raw is not None else 1 + 4 * e.plan_score) if ok else 0.0
                             for e, ok in zip(eps, plan_ok)], np.float32)
    failed = judged & ~plan_ok
    raw_plan = fill_failed_plan_terms(raw_plan, plan_ok, failed, groups)
    plan = (np.float32(cfg.plan_weight) * raw_plan) if cfg.plan_weight > 0 else np.zeros(n, np.float32)
    invalid_n = np.array([e.invalid_actions for e in eps], np.int64)
    invalid = invalid_term(invalid_n, cfg.invalid_action_penalty, cfg.invalid_action_floor)
    reward = (outcome + fmt + over + invalid + plan).astype(np.float32)
    failures = int(failed.sum())

    def mean(x, m=None):
        x = np.asarray(x, np.float64)
        if m is not None:
            x = x[m]
        return float(x.mean()) if x.size else 0.0

    metrics = {
        "reward/mean": mean(reward),
        "reward/outcome": mean(outcome),
        "reward/format": mean(fmt),
        "reward/overlong": mean(over),
        "reward/plan": mean(plan),
        "reward/invalid": mean(invalid),
        "reward/invalid_actions": mean(invalid_n),
        "reward/success_rate": mean(won),
        "reward/format_error_rate": mean(ferr > 0),
        "reward/overlong_rate": mean(over < 0),
        "reward/plan_score": mean(raw_plan, plan_ok),
        "reward/judged": int(judged.sum()),
        "reward/judge_failures": failures,
    }
    comps = dict(outcome=outcome, format=fmt, overlong=over, invalid=invalid, plan=plan, plan_ok=plan_ok,
                 judge_failed=failed)
    return RewardBatch(reward=reward, components=comps, metrics=metrics)
