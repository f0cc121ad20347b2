"""Where policy tokens come from: the KV-cache sampler, or forced text (expert turns, fuzz) for tests.

A policy backend has the SamplerEngine's episode API: start(prompts, seeds) -> handles,
append(handles, token_lists), generate(handles, max_new_tokens, stop_strings, contexts) ->
[GenerationResult], release(handles), tokens(handle), plus `capacity` (episodes held at once) and
`max_len` (tokens per episode). `contexts[i]` is the runner's view of episode i (`.episode` the
AgentEpisode, `.request` what to generate, `.expert` the env expert's actions from the current state).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from pilotrl_jax.agent import prompts
from pilotrl_jax.agent.spans import SpanKind
from pilotrl_jax.sampling.engine import GenerationResult, SamplerEngine


class SamplerPolicy:
    """The policy as a `SamplerEngine`: one batched generate per call, sampler log-probs kept."""

    needs_expert = False

    def __init__(self, engine: SamplerEngine, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 stop_token_ids: Optional[Sequence[int]] = None):
        if not isinstance(engine, SamplerEngine):
            raise TypeError(f"engine must be a pilotrl_jax.sampling.SamplerEngine, got {type(engine).__name__}")
        if engine.tokenizer is None:
            raise ValueError("the SamplerEngine has no tokenizer; build it with tokenizer=... so the AdaPlan "
                             "stop strings ('</action>', '</global_plan>') can be detected")
        self.engine = engine
        self.temperature, self.top_p, self.top_k = float(temperature), float(top_p), int(top_k)
        self.stop_token_ids = None if stop_token_ids is None else tuple(int(t) for t in stop_token_ids)

    @property
    def capacity(self) -> int:
        """Episodes the engine can hold at once (its free rows)."""
        return self.engine.num_free

    @property
    def max_len(self) -> int:
        """Tokens one episode may reach (the KV cache length)."""
        return self.engine.max_len

    def start(self, prompts_: Sequence[Sequence[int]], seeds: Sequence[int]) -> list:
        """Open episodes on the engine (prefill happens in the next generate)."""
        return self.engine.start(prompts_, seeds=seeds)

    def append(self, handles: Sequence[int], token_lists: Sequence[Sequence[int]]) -> None:
        """Add observation / external-plan tokens to episodes."""
        self.engine.append(handles, token_lists)

    def generate(self, handles, max_new_tokens, stop_strings, contexts=None) -> list:
        """One batched sampler call over `handles`."""
        return self.engine.generate(handles, max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                    top_k=self.top_k, stop_token_ids=self.stop_token_ids,
                                    stop_strings=stop_strings)

    def release(self, handles: Sequence[int]) -> None:
        """Free the engine rows of finished episodes."""
        self.engine.release(handles)

    def tokens(self, handle: int) -> list:
        """The tokens the engine conditioned on for this episode."""
        return self.engine.tokens(handle)


TurnFn = Callable[[Any], Union[str, Sequence[int]]]


class ForcedPolicy:
    """Policy output written by `turn_fn(context) -> text or token ids` instead of a model.

    Text is tokenized with the episode's chat tokenizer (that is the forced policy's "sampling");
    token-id lists are used as they are (fuzzing). Log-probs are 0. Outputs longer than the
    turn's token limit are cut (stop reason "max_tokens"), like the sampler would.
    """

    def __init__(self, turn_fn: TurnFn, max_len: int = 4096, capacity: int = 1 << 30, needs_expert: bool = True):
        if not callable(turn_fn):
            raise TypeError(f"turn_fn must be a callable (context) -> str | list[int], got {type(turn_fn).__name__}")
        self.turn_fn = turn_fn
        self._max_len = int(max_len)
        self._capacity = int(capacity)
        self.needs_expert = bool(needs_expert)
        self._tokens: dict[int, list] = {}
        self._next = 0

    @property
    def capacity(self) -> int:
        """Episodes that can be held at once."""
        return self._capacity - len(self._tokens)

    @property
    def max_len(self) -> int:
        """Tokens one episode may reach."""
        return self._max_len

    def start(self, prompts_, seeds) -> list:
        """Open episodes (token lists kept on the host)."""
        out = []
        for p in prompts_:
            self._tokens[self._next] = [int(t) for t in p]
            out.append(self._next)
            self._next += 1
        return out

    def append(self, handles, token_lists) -> None:
        """Add tokens to episodes."""
        for h, toks in zip(handles, token_lists):
            self._tokens[h].extend(int(t) for t in toks)

    def generate(self, handles, max_new_tokens, stop_strings, contexts=None) -> list:
        """Forced outputs for every handle (contexts are required)."""
        if contexts is None or len(contexts) != len(handles):
            raise ValueError("ForcedPolicy.generate needs one context per handle (the runner passes them)")
        limits = [max_new_tokens] * len(handles) if np.isscalar(max_new_tokens) else list(max_new_tokens)
        out = []
        for h, ctx, lim in zip(handles, contexts, limits):
            got = self.turn_fn(ctx)
            if isinstance(got, str):
                ids = ctx.episode.chat.encode(got)
            else:
                ids = [int(t) for t in got]
            reason = "stop_string"
            if len(ids) > lim:
                ids, reason = ids[:lim], "max_tokens"
            if not ids:  # the sampler always writes at least one token; so does a forced policy
                ids = ctx.episode.chat.encode(" ")
            self._tokens[h].extend(ids)
            out.append(GenerationResult(tokens=ids, logprobs=[0.0] * len(ids), stop_reason=reason, handle=h))
        return out

    def release(self, handles) -> None:
        """Forget finished episodes."""
        for h in handles:
            del self._tokens[h]

    def tokens(self, handle: int) -> list:
        """The tokens of an episode so far."""
        return list(self._tokens[handle])


# ----------------------------------------------------------------------------- forced turn writers
def expert_plan_from_actions(env_family: str, actions: Optional[Sequence[str]]) -> Optional[list]:
    """Plan steps from expert actions: the expert's own steps, ALFWorld's `expert_plan_steps`, or the actions."""
    own = getattr(actions, "plan_steps", None)
    if own:
        return list(own)
    if not actions:
        return None
    if env_family == "alfworld":
        from pilotrl_jax.envs.alfworld_env import expert_plan_steps

        steps = expert_plan_steps(list(actions))
        return steps or None
    return [str(a) for a in actions]


# How the expert's executor thought cites the plan: "full" is the paper's sentence ("According to
# Step 2 of the global plan, I should go to desk 1."); "short" cites the step alone ("Step 2."), which
# makes each turn ~11 tokens instead of ~25 with the demo's tokenizer (shorter episodes: fewer decode
# steps, shorter training rows).
THOUGHT_STYLES = ("full", "short")


def check_thought_style(style: str) -> str:
    """Validate an expert thought style name (`THOUGHT_STYLES`)."""
    if style not in THOUGHT_STYLES:
        raise ValueError(f"thought style {style!r} is unknown; expected one of {THOUGHT_STYLES} "
                         "(config.agent.thought_style)")
    return style


def expert_turn(ctx, thought: str = "full") -> str:
    """The expert's turn as text: a plan of the expert's remaining actions, or thought + next action."""
    ep = ctx.episode
    expert = ctx.expert if ctx.expert is not None else []  # may be ExpertActions with its own plan steps
    if ctx.request.kind == SpanKind.PLAN:
        steps = expert_plan_from_actions(ep.env, expert) or ["Look around for what the task needs."]
        return prompts.plan_text(steps)
    action = expert[0] if expert else ep.noop_action
    return executor_text(action, getattr(expert, "step", None), thought, mode=getattr(ep, "mode", "adaplan"))


def executor_text(action: str, step: Optional[int], thought: str = "full", mode: str = "adaplan") -> str:
    """The expert's executor turn for `action`; `step` is the plan step it carries out (None: the first).
    A ReAct turn's thought cites no plan (there is none): "Next, I should <action>." in either style."""
    n = 1 if step is None else step + 1
    style = check_thought_style(thought)
    if mode == "react":
        return f"<thought>Next, I should {action}.</thought><action>{action}</action>"
    if style == "short":
        return f"<thought>Step {n}.</thought><action>{action}</action>"
    return f"<thought>According to Step {n} of the global plan, I should {action}.</thought><action>{action}</action>"


_FUZZ_PIECES = ("<global_plan>", "</global_plan>", "<thought>", "</thought>", "<action>", "</action>",
                "<action>look</action>", "<thought><action>", "</act", "<glob", "al_plan>", "Step 1: go",
                "\n", " ", "look", "go to kitchen", "<<", ">>", "</", "<|im_end|>", "\u00e9\u4e2d", "Step x:")


def fuzz_turn(seed: int, vocab_size: int, p_ids: float = 0.4, max_pieces: int = 12) -> TurnFn:
    """A turn writer emitting random junk: raw random token ids, or random mixes of (broken) tags and text."""
    rng = np.random.default_rng(seed)

    def turn(ctx):
        if rng.random() < p_ids:
            return rng.integers(0, vocab_size, size=int(rng.integers(1, 40))).tolist()
        n = int(rng.integers(0, max_pieces))
        return "".join(_FUZZ_PIECES[i] for i in rng.integers(0, len(_FUZZ_PIECES), size=n))

    return turn
