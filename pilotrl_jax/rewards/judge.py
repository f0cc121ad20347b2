"""The plan-quality judge interface, the rubric prompt and the shared scoring logic.

A judge rates the plans of an episode 1-5 on the paper's three criteria (correctness,
followability, standardization). The paper judges after every step; here one *unit* is one plan
the episode had in force (every plan revision; with static plans, one), judged with the
interaction up to the next revision. A unit's score is the mean of its three criteria; the
episode's score is the mean over units, also given normalized to [0, 1] as (score - 1) / 4.

Failures are explicit: a unit whose answer cannot be parsed or whose request failed is a failed
unit; a `Judgement` is ok when at least `min_ok_fraction` of its units succeeded (the score then
averages the successful units). A failed judgement has ok=False and an error, never a score of 0;
the reward counts it and gives it its group's mean plan term (see shaping.compute_rewards). An episode
that wrote no plan is not a failed judgement: it is rated 1 on every criterion (the worst plan), so
skipping the plan never earns the group's mean.
"""
from __future__ import annotations

import dataclasses
import re
import threading
from typing import Any, Optional, Sequence

from pilotrl_jax.rewards.jsonrepair import as_number, parse_json_object

CRITERIA = ("correctness", "followability", "standardization")
_CRITERION_PREFIXES = {"correctness": ("correct",), "followability": ("follow",),
                       "standardization": ("standard", "format")}
# Words that mark a reply key as prose about a criterion ("correctness_reason"), never its score.
_TEXT_WORDS = frozenset({"reason", "reasons", "reasoning", "explanation", "justification", "rationale", "comment",
                         "comments", "feedback", "analysis", "note", "notes", "why", "critique", "evidence", "summary"})
_SCORE_WORDS = frozenset({"score", "rating", "grade"})


@dataclasses.dataclass(frozen=True)
class PlanRecord:
    """One plan of an episode: from which executor turn it held, its steps and how it was written."""

    turn: int  # executor turns done before this plan appeared
    steps: tuple[str, ...]
    raw: Optional[str] = None  # the text as the model wrote it (None: rendered from steps)
    well_formed: bool = True  # parsed without error
    numbering_ok: bool = True  # steps numbered 1, 2, 3, ...
    external: bool = False  # written by a plan source outside the policy


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
    """What a judge sees of one episode."""

    task: str  # the task description (the env's first observation)
    plans: tuple[PlanRecord, ...]  # in order; malformed plan attempts included (well_formed False)
    actions: tuple[str, ...]  # env actions sent, in order
    observations: tuple[str, ...]  # observations[0] initial; observations[i + 1] answers actions[i]
    won: bool = False
    score: float = 0.0
    finished: bool = True
    episode_id: str = ""

    @classmethod
    def from_episode(cls, episode: Any, episode_id: str = "") -> "JudgeRequest":
        """Build a request from an `AgentEpisode` (its plan history, turns, actions and observations)."""
        from pilotrl_jax.agent.parser import format_plan
        from pilotrl_jax.agent.spans import SpanKind

        if not hasattr(episode, "plan_history") or not hasattr(episode, "observations"):
            raise TypeError(f"JudgeRequest.from_episode needs an AgentEpisode, got {type(episode).__name__}")
        # Raw texts of the policy's plan spans, paired with the policy's PLAN turns in order.
        plan_spans = [s.text for s in episode.spans if s.kind == SpanKind.PLAN]
        plan_turns = [t for t in episode.turns if t.kind == SpanKind.PLAN]
        raws = plan_spans if len(plan_spans) == len(plan_turns) else [None] * len(plan_turns)
        records: list[PlanRecord] = []
        good = iter(episode.plan_history)
        # Walk turns in order: plan turns (ok or not) and executor turns that carried a new plan.
        turn_no, raw_iter = 0, iter(raws)
        history = list(episode.plan_history)
        ext = [h for h in history if h[1] == SpanKind.EXTERNAL_PLAN]
        if ext:  # external plans: no policy text to grade for format
            for t, _, steps in ext:
                records.append(PlanRecord(t, tuple(steps), format_plan(steps), True, True, external=True))
        else:
            for turn in episode.turns:
                if turn.kind == SpanKind.PLAN:
                    raw = next(raw_iter, None)
                    if turn.parse.ok:
                        t, _, steps = next(good)
                        records.append(PlanRecord(t, tuple(steps), raw, True, turn.parse.plan_numbering_ok))
                    else:
                        records.append(PlanRecord(turn_no, (), raw, False, False))
                else:
                    if turn.parse.ok and turn.parse.new_plan:
                        t, _, steps = next(good)
                        records.append(PlanRecord(t, tuple(steps), None, True, turn.parse.plan_numbering_ok))
                    turn_no += 1
        info = dict(getattr(episode, "final_info", {}) or {})
        won = bool(info.get("won", False)) or episode.status == "success"
        return cls(task=episode.observations[0] if episode.observations else "", plans=tuple(records),
                   actions=tuple(episode.actions), observations=tuple(episode.observations), won=won,
                   score=float(info.get("score", float(won))), finished=bool(episode.done), episode_id=episode_id)


@dataclasses.dataclass
class Judgement:
    """A judge's verdict on one episode's plans."""

    ok: bool
    score: Optional[float] = None  # 1..5: mean of the criteria, then over units
    score_norm: Optional[float] = None  # (score - 1) / 4 in [0, 1]
    criteria: dict = dataclasses.field(default_factory=dict)  # criterion -> 1..5 mean over units
    per_unit: list = dataclasses.field(default_factory=list)  # per plan: {criterion: score} or {"error": ...}
    n_units: int = 0
    n_failed: int = 0
    error: Optional[str] = None


def aggregate(units: Sequence[Optional[dict]], errors: Sequence[Optional[str]], min_ok_fraction: float = 0.5) -> Judgement:
    """Combine per-unit criterion scores (None where the unit failed) into one Judgement."""
    n = len(units)
    per_unit = [dict(u) if u is not None else {"error": e or "failed"} for u, e in zip(units, errors)]
    good = [u for u in units if u is not None]
    if n == 0:  # a verdict, not a failure: an episode that wrote no plan gets the lowest score on every criterion
        return Judgement(ok=True, score=1.0, score_norm=0.0, criteria={c: 1.0 for c in CRITERIA}, per_unit=per_unit)
    n_failed = n - len(good)
    if not good or len(good) < min_ok_fraction * n:
        first = next((e for e in errors if e), "failed")
        return Judgement(ok=False, per_unit=per_unit, n_units=n, n_failed=n_failed,
                         error=f"{n_failed}/{n} plan judgements failed; first: {first}")
    crit = {c: sum(u[c] for u in good) / len(good) for c in CRITERIA}
    score = sum(sum(u[c] for c in CRITERIA) / len(CRITERIA) for u in good) / len(good)
    return Judgement(ok=True, score=score, score_norm=(score - 1.0) / 4.0, criteria=crit, per_unit=per_unit,
                     n_units=n, n_failed=n_failed)


def criterion_key_rank(key: Any, criterion: str) -> Optional[int]:
    """How surely reply `key` holds `criterion`'s score: 0 exact ("correctness"), 1 a score key
    ("correctness_score"), 2 another key of it; None for a text field ("correctness_reason") or another criterion."""
    words = re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", str(key)).lower())
    if not words or not words[0].startswith(_CRITERION_PREFIXES[criterion]):
        return None
    if len(words) == 1:
        return 0
    if words[-1] in _SCORE_WORDS:
        return 1
    return None if _TEXT_WORDS.intersection(words) else 2


def criterion_value(obj: dict, criterion: str) -> tuple[Optional[float], Optional[str]]:
    """`criterion`'s score in a parsed answer: the best-ranked key (`criterion_key_rank`) whose value is a
    number, whatever the key order; (None, reason) when no such key."""
    ranked = sorted((rank, i, key) for i, key in enumerate(obj)
                    if (rank := criterion_key_rank(key, criterion)) is not None)
    for _, _, key in ranked:
        x = as_number(obj[key])
        if x is not None:
            return x, None
    if ranked:
        key = ranked[0][2]
        return None, f"{criterion}: {key}={obj[key]!r} is not a number"
    return None, f"answer lacks {criterion} (keys: {sorted(map(str, obj))[:6]})"


def criteria_from_object(obj: dict) -> tuple[Optional[dict], Optional[str]]:
    """The three criterion scores (clamped to 1..5) from a parsed answer (or its "scores" object), or (None, reason)."""
    out = {}
    for c in CRITERIA:
        x, err = criterion_value(obj, c)
        if x is None:
            inner = criteria_from_object(obj["scores"])[0] if isinstance(obj.get("scores"), dict) else None
            return (inner, None) if inner is not None else (None, err)
        out[c] = min(max(x, 1.0), 5.0)
    return out, None


def parse_judge_answer(text: Any) -> tuple[Optional[dict], Optional[str]]:
    """Criterion scores from a judge's raw answer (JSON with repair), or (None, reason)."""
    obj, err = parse_json_object(text)
    if obj is None:
        return None, err
    return criteria_from_object(obj)


# ---------------------------------------------------------------------- the rubric prompt
JUDGE_SYSTEM = (
    "You evaluate plans written by an AI agent that acts in a text-based environment. "
    "You are strict, consistent and brief, and you answer with one JSON object only."
)

JUDGE_RUBRIC = """Rate the agent's global plan on three criteria, each an integer from 1 (very poor) to 5 (excellent):

1. correctness: given the task and the environment's feedback so far, would carrying out this plan accomplish the task? Are the steps right, in a sensible order, with nothing essential missing and nothing contradicted by the feedback?
2. followability: is every step clear, concrete and doable with the environment's actions, and did the agent's actions actually follow the plan?
3. standardization: is the plan written in the required format, a numbered list "Step 1: ...", "Step 2: ..." of short single-purpose steps, with no extra text?

Answer with only this JSON object and nothing else:
{"correctness": <1-5>, "followability": <1-5>, "standardization": <1-5>, "reason": "<one short sentence>"}"""


def _interaction_text(req: JudgeRequest, upto: int, max_chars: int) -> str:
    lines = []
    for i in range(min(upto, len(req.actions))):
        obs = req.observations[i + 1] if i + 1 < len(req.observations) else "(no observation)"
        lines.append(f"Action {i + 1}: {req.actions[i]}\nObservation {i + 1}: {' '.join(obs.split())}")
    text = "\n".join(lines) if lines else "(no actions yet)"
    if len(text) > max_chars:
        text = "... (earlier interaction omitted)\n" + text[-max_chars:]
    return text


def unit_messages(req: JudgeRequest, k: int, max_history_chars: int = 6000) -> list[dict]:
    """Chat messages asking the rubric question about plan `k` of `req`."""
    from pilotrl_jax.agent.parser import format_plan

    plan = req.plans[k]
    upto = req.plans[k + 1].turn if k + 1 < len(req.plans) else len(req.actions)
    last = k + 1 == len(req.plans)
    if plan.raw is not None:
        plan_text = plan.raw.strip()
    elif plan.steps:
        plan_text = format_plan(plan.steps)
    else:
        plan_text = "(empty)"
    result = ""
    if last and req.finished:
        result = "\n\n# Episode result\n" + ("The task was completed." if req.won else
                                             f"The task was not completed (score {req.score:.2f}).")
    task = " ".join(req.task.split())
    if len(task) > 2000:
        task = task[:2000] + " ..."
    user = (f"# Task\n{task}\n\n# The agent's plan (written before action {plan.turn + 1})\n{plan_text}\n\n"
            f"# Interaction\n{_interaction_text(req, upto, max_history_chars)}{result}\n\n{JUDGE_RUBRIC}")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def select_units(n_plans: int, max_units: Optional[int]) -> list[int]:
    """Indices of plans to judge: all, or `max_units` spread evenly (the last one always kept)."""
    if max_units is None or n_plans <= max_units:
        return list(range(n_plans))
    if max_units < 1:
        raise ValueError(f"max_units={max_units}; expected >= 1 or None (all plans)")
    if max_units == 1:
        return [n_plans - 1]
    step = (n_plans - 1) / (max_units - 1)
    return sorted({round(i * step) for i in range(max_units)})


class JudgeStats:
    """Thread-safe judge counters (episodes, units, failures) merged with a client's HTTP counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self.c = dict(episodes=0, units=0, unit_failures=0, parse_failures=0, request_failures=0,
                      judgement_failures=0, unanswered=0, judge_time_s=0.0)  # unanswered: by the deadline

    def add(self, **kw):
        """Add to counters."""
        with self._lock:
            for k, v in kw.items():
                self.c[k] += v

    def as_dict(self, client_stats: Optional[dict] = None) -> dict:
        """Counters as a flat dict; with `client_stats`, the HTTP client's counters too."""
        with self._lock:
            out = dict(self.c)
        for k in ("requests", "cache_hits", "retries", "failures", "timeouts", "latency_mean_s", "latency_max_s"):
            out.setdefault(k, 0)
        if client_stats:
            out.update({k: v for k, v in client_stats.items()})
        else:
            out["requests"] = out["units"]
            out["failures"] = out["unit_failures"]
        return out


class Judge:
    """Interface: `score(requests) -> list[Judgement]` (never raises on bad answers) and `stats()`."""

    min_ok_fraction: float = 0.5
    max_units: Optional[int] = None
    max_history_chars: int = 6000

    def __init__(self):
        self._stats = JudgeStats()

    def score(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        """Judge each request's plans; a failed judgement has ok=False and an error."""
        import time

        reqs = _check_requests(requests)
        t0 = time.monotonic()
        plan_units = [[(i, k) for k in select_units(len(r.plans), self.max_units)] for i, r in enumerate(reqs)]
        flat = [u for us in plan_units for u in us]
        by_unit: dict = {}
        msgs, sendable = [], []
        for i, k in flat:
            try:
                msgs.append(unit_messages(reqs[i], k, self.max_history_chars))
                sendable.append((i, k))
            except Exception as e:  # noqa: BLE001 - a malformed request fails its unit, not the batch
                self._stats.add(request_failures=1, unit_failures=1)
                by_unit[(i, k)] = (None, f"could not build the prompt: {type(e).__name__}: {e}")
        answers = self._answer(msgs) if msgs else []
        for (i, k), (text, req_err) in zip(sendable, answers):
            if req_err is not None:
                self._stats.add(request_failures=1, unit_failures=1)
                by_unit[(i, k)] = (None, f"request failed: {req_err}")
                continue
            crit, err = parse_judge_answer(text)
            if crit is None:
                self._stats.add(parse_failures=1, unit_failures=1)
                by_unit[(i, k)] = (None, f"unparseable answer: {err}")
            else:
                by_unit[(i, k)] = (crit, None)
        out = []
        for i, us in enumerate(plan_units):
            units = [by_unit[u][0] for u in us]
            errs = [by_unit[u][1] for u in us]
            j = aggregate(units, errs, self.min_ok_fraction)
            if not j.ok:
                self._stats.add(judgement_failures=1)
            out.append(j)
        self._stats.add(episodes=len(reqs), units=len(flat), judge_time_s=time.monotonic() - t0)
        return out

    def _answer(self, messages: list[list[dict]]) -> list[tuple[Optional[str], Optional[str]]]:
        """(answer text, None) or (None, request error) per message list; subclasses implement."""
        raise NotImplementedError

    def stats(self) -> dict:
        """Counters for metrics: requests, cache hits, failures, retries, latency."""
        return self._stats.as_dict()


def _check_requests(requests: Sequence[Any]) -> list[JudgeRequest]:
    if isinstance(requests, JudgeRequest):
        raise TypeError("score takes a list of JudgeRequest; wrap the single request in a list")
    out = list(requests)
    for i, r in enumerate(out):
        if not isinstance(r, JudgeRequest):
            raise TypeError(f"requests[{i}] is {type(r).__name__}; build it with JudgeRequest.from_episode(episode)")
    return out
