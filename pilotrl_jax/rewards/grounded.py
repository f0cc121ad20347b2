"""An environment-grounded plan judge that needs no LLM.

Each plan the episode had (see judge.py for units) gets the three rubric criteria, each from a
unit value u in [0, 1] mapped to 1 + 4u:
- correctness: the episode's outcome: 1 when won, else the graded score (0 when none). A plan that
  did not even parse gets 0.
- followability: the share of the plan's steps the episode carried out (the heuristic below).
- standardization: 1 for a well-formed plan numbered 1, 2, 3, ...; `misnumbered_credit` (0.5) for
  a well-formed plan with other numbering; 0 for a malformed plan; steps longer than
  `max_step_words` words cost `long_step_penalty` of the credit (a step should be one sub-goal).

Matching plan steps to actions (the heuristic). Text is lower-cased and split into words; the *key
terms* of a text are its words minus numbers, stop words and common command verbs (go, take, put,
open, find, ...), with a plural "s" dropped, so "Step 2: take the apple from the countertop"
has {apple, countertop}. Action i *carries out* a step when the action's own key terms cover at
least `match_threshold` (0.6: both of two terms, two of three) of the step's key terms. For a
*discovery* step (one that starts with find, locate, search, look, check, examine, go, explore:
see `DISCOVERY_VERBS`) the observation's terms count too, when the action is itself a discovery
command or shares a term with the step, so "find the pen" is done when "go to desk 1" answers
"you see a pen 1"; a step that manipulates things (take, put, heat, ...) needs the action itself.
An action whose observation contains a failure marker ("nothing happens", ...) carries out
nothing. Steps are matched in order against the whole episode's actions (greedy and monotone: each
step needs an action after the one that carried out the previous matched step; with every-step
re-planning, kept steps were executed before the plan's turn, so all actions count). Steps with no
key terms are left out of the share; a plan with none of those scores 0.5 followability.
"""
from __future__ import annotations

import re
import time
from typing import Optional, Sequence

from pilotrl_jax.rewards.judge import Judge, JudgeRequest, Judgement, aggregate, select_units, _check_requests

STOP_WORDS = frozenset("""
a an the and or then to of in on into onto at from with by for it its this that these those there here
is are be been being was were you your i me my we our they them their he she his her up down out off
over under inside near next back again some any all each every one two first second third last
if when while until after before so as use using make sure also just only should need needs must
step plan task done finally now current currently go goes going walk move moving moved take took taking pick picked
put putting place placed find finding locate look looking search check examine open close closed
get got bring carry grab hold drop leave return turn state do does doing try
""".split())
DEFAULT_FAILURE_MARKERS = ("nothing happens", "invalid action", "not a valid", "unknown command",
                           "i don't understand", "you can't", "cannot do", "no such")
DISCOVERY_VERBS = ("go", "open", "examine", "look", "search", "find", "locate", "check", "explore", "inventory")
_WORD_RE = re.compile(r"[a-z]+")


def key_terms(text: str) -> frozenset:
    """Content words of `text` (objects, receptacles, places): lower-cased, stop words/verbs/numbers removed."""
    out = set()
    for w in _WORD_RE.findall(text.lower()):
        if w in STOP_WORDS or len(w) < 2:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.add(w)
    return frozenset(out)


def plan_step_coverage(steps: Sequence[str], actions: Sequence[str], observations: Sequence[str],
                       match_threshold: float = 0.6,
                       failure_markers: Sequence[str] = DEFAULT_FAILURE_MARKERS) -> tuple[Optional[float], list]:
    """(share of steps carried out or None when no step names anything, matched action index per step)."""
    act_terms, obs_terms, failed, discover = [], [], [], []
    for i, a in enumerate(actions):
        first = a.strip().lower().split()[:1]
        discover.append(bool(first) and first[0] in DISCOVERY_VERBS)
        obs = observations[i + 1] if i + 1 < len(observations) else ""
        low = obs.lower()
        failed.append(any(m in low for m in failure_markers))
        act_terms.append(key_terms(a))
        obs_terms.append(key_terms(obs))
    matched: list = []
    pos, done, counted = 0, 0, 0
    for step in steps:
        st = key_terms(step)
        words = _WORD_RE.findall(step.lower())
        discovery_step = bool(words) and words[0] in DISCOVERY_VERBS
        if not st:
            matched.append(None)
            continue
        counted += 1
        hit = None
        for i in range(pos, len(actions)):
            if failed[i]:
                continue
            a = act_terms[i]
            cover = len(st & a) / len(st)
            if cover < match_threshold and discovery_step and ((st & a) or discover[i]):
                cover = len(st & (a | obs_terms[i])) / len(st)
            if cover >= match_threshold:
                hit = i
                break
        matched.append(hit)
        if hit is not None:
            done += 1
            pos = hit + 1
    if counted == 0:
        return None, matched
    return done / counted, matched


class GroundedJudge(Judge):
    """Plan score from the episode itself: outcome, share of plan steps carried out, plan format."""

    def __init__(self, match_threshold: float = 0.6, misnumbered_credit: float = 0.5, max_step_words: int = 30,
                 long_step_penalty: float = 0.25, failure_markers: Sequence[str] = DEFAULT_FAILURE_MARKERS,
                 max_units: Optional[int] = None):
        super().__init__()
        if not 0.0 < match_threshold <= 1.0:
            raise ValueError(f"match_threshold={match_threshold}; expected a share in (0, 1]")
        if not 0.0 <= misnumbered_credit <= 1.0 or not 0.0 <= long_step_penalty <= 1.0:
            raise ValueError("misnumbered_credit and long_step_penalty must lie in [0, 1]")
        self.match_threshold = match_threshold
        self.misnumbered_credit = misnumbered_credit
        self.max_step_words = max_step_words
        self.long_step_penalty = long_step_penalty
        self.failure_markers = tuple(m.lower() for m in failure_markers)
        self.max_units = max_units
        self.min_ok_fraction = 1.0

    def unit_values(self, req: JudgeRequest, k: int) -> dict:
        """The three criteria (1..5) of plan `k` of `req`."""
        plan = req.plans[k]
        outcome = 1.0 if req.won else min(max(float(req.score), 0.0), 1.0)
        if not plan.well_formed or not plan.steps:
            return {"correctness": 1.0, "followability": 1.0, "standardization": 1.0}
        cov, _ = plan_step_coverage(plan.steps, req.actions, req.observations, self.match_threshold,
                                    self.failure_markers)
        follow = 0.5 if cov is None else cov
        std = 1.0 if plan.numbering_ok else self.misnumbered_credit
        if any(len(s.split()) > self.max_step_words for s in plan.steps):
            std *= 1.0 - self.long_step_penalty
        return {"correctness": 1 + 4 * outcome, "followability": 1 + 4 * follow, "standardization": 1 + 4 * std}

    def score(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        """Judge each request from its own plans, actions and observations (never calls a model)."""
        t0 = time.monotonic()
        reqs = _check_requests(requests)
        out = []
        n_units = 0
        for r in reqs:
            ks = select_units(len(r.plans), self.max_units)
            n_units += len(ks)
            units = [self.unit_values(r, k) for k in ks]
            j = aggregate(units, [None] * len(units), self.min_ok_fraction)
            if not j.ok:
                self._stats.add(judgement_failures=1)
            out.append(j)
        self._stats.add(episodes=len(reqs), units=n_units, judge_time_s=time.monotonic() - t0)
        return out
