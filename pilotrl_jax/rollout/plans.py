"""Stage-1 plan sources: who writes the external plan the executor follows.

A planner gets a batch of `PlanRequest`s (one per episode about to start a turn that needs a plan)
and returns, per request, plan steps or None (keep the plan in force). Built-ins:
- `ExpertPlans`: the environment's expert (ALFWorld: `expert_plan_steps` of the planner's
  actions; other families: the expert actions themselves as steps).
- `EndpointPlans`: an OpenAI-compatible chat endpoint behind any `complete(messages) -> str`
  callable (the HTTP client lives in `pilotrl_jax.rewards`); calls run in a thread pool.
- `CheckpointPlans`: a frozen checkpoint on its own `SamplerEngine`, one batched generate per call.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from typing import Callable, Optional, Sequence

from pilotrl_jax.agent import prompts
from pilotrl_jax.agent.parser import PLAN_CLOSE, PLAN_TAG, open_tag, parse_plan
from pilotrl_jax.agent.tokenizer import as_chat_tokenizer
from pilotrl_jax.rollout.policies import expert_plan_from_actions

# Used for the first turn when a source has no plan (the episode needs one to start).
FALLBACK_PLAN = ("Look around and find what the task needs.", "Complete the task.")


@dataclasses.dataclass
class PlanRequest:
    """What a planner sees: the task, the history so far (the newest observation last), the plan in force."""

    env: str  # environment family
    task_id: str
    observations: list  # observations[0] is the task text / first observation
    actions: list  # actions sent so far (len(observations) - 1 of them)
    plan: Optional[tuple]  # the plan in force (None before the first)
    expert_actions: Optional[list] = None  # the env expert from the current state (ExpertPlans)

    @property
    def first(self) -> bool:
        """True for the plan of the first turn."""
        return not self.actions


def planner_messages(req: PlanRequest) -> list:
    """Chat messages asking a planner for the (updated) global plan of `req`'s episode."""
    system = prompts.system_prompt(req.env, "adaplan", "every_step")
    lines = [req.observations[0].strip()]
    if req.plan:
        lines.append("\nCurrent " + prompts.plan_text(req.plan))
    for a, o in zip(req.actions, req.observations[1:]):
        lines.append(f"\nAction: {a}\nObservation: {o.strip()}")
    lines.append("\nWrite the global plan (keep the steps already done), and nothing else." if req.first else
                 "\nWrite the updated global plan (keep the steps already done), and nothing else.")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


def steps_from_text(text: str) -> Optional[list]:
    """Plan steps parsed from a planner's reply, or None if it holds no well-formed plan."""
    if not isinstance(text, str):
        return None
    start = text.find(open_tag(PLAN_TAG))  # tags are exact (agent.parser)
    res = parse_plan(text[start:] if start >= 0 else text)
    return list(res.plan) if res.ok and res.plan else None


class ExpertPlans:
    """Plans from the environment's expert actions (the runner computes them in the env worker)."""

    needs_expert = True

    def plans(self, requests: Sequence[PlanRequest]) -> list:
        """Expert plan steps per request (None when the expert has nothing)."""
        return [expert_plan_from_actions(r.env, r.expert_actions) for r in requests]


class EndpointPlans:
    """Plans from an OpenAI-compatible chat endpoint: `complete(messages) -> reply text`, called in threads."""

    needs_expert = False

    def __init__(self, complete: Callable[[list], str], max_workers: int = 8):
        if not callable(complete):
            raise TypeError(f"complete must be a callable (messages) -> str, got {type(complete).__name__}; "
                            "wrap your OpenAI-compatible client (see pilotrl_jax.rewards)")
        self.complete = complete
        self.max_workers = int(max_workers)
        self.errors: list = []

    def _one(self, req: PlanRequest) -> Optional[list]:
        try:
            return steps_from_text(self.complete(planner_messages(req)))
        except Exception as e:  # noqa: BLE001 - a failed call keeps the plan in force
            self.errors.append(f"{req.task_id}: {type(e).__name__}: {e}")
            return None

    def plans(self, requests: Sequence[PlanRequest]) -> list:
        """Plan steps per request (None on a malformed reply or a failed call)."""
        if len(requests) <= 1:
            return [self._one(r) for r in requests]
        with cf.ThreadPoolExecutor(min(self.max_workers, len(requests))) as pool:
            return list(pool.map(self._one, requests))


class CheckpointPlans:
    """Plans from a frozen checkpoint run by its own SamplerEngine (batched, greedy by default)."""

    needs_expert = False

    def __init__(self, engine, tokenizer, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0):
        from pilotrl_jax.sampling.engine import SamplerEngine

        if not isinstance(engine, SamplerEngine):
            raise TypeError(f"engine must be a SamplerEngine holding the frozen planner, got {type(engine).__name__}")
        self.engine = engine
        self.chat = as_chat_tokenizer(tokenizer)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.seed = int(seed)
        self._calls = 0

    def plans(self, requests: Sequence[PlanRequest]) -> list:
        """Plan steps per request: one generate per chunk of free engine rows."""
        out: list = []
        reqs = list(requests)
        while reqs:
            n = max(1, min(len(reqs), self.engine.num_free))
            chunk, reqs = reqs[:n], reqs[n:]
            ids = []
            for r in chunk:
                p = self.chat.encode(self.chat.render(planner_messages(r), add_generation_prompt=True))
                room = self.engine.max_len - self.max_new_tokens - 1
                ids.append(p[-room:] if room > 0 and len(p) > room else p)  # keep the newest history
            seeds = [self.seed * 1_000_003 + self._calls * 4099 + i for i in range(len(chunk))]
            self._calls += 1
            hs = self.engine.start(ids, seeds=seeds)
            try:
                res = self.engine.generate(hs, self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                           stop_token_ids=self.chat.end_of_turn_ids, stop_strings=(PLAN_CLOSE,))
            finally:
                self.engine.release(hs)
            out += [steps_from_text(self.chat.decode(r.tokens)) for r in res]
        return out
