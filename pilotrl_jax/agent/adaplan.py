"""The per-episode agent state machine (AdaPlan and ReAct), model-agnostic and token-in/token-out.

Use (one episode; the rollout loop drives many in lockstep):
    ep = AgentEpisode(task, "adaplan", "every_step", plan_source=None, tokenizer=tok)
    ep.start(first_observation)
    while not ep.done:
        req = ep.next_request()              # what to generate: PLAN or ACTION, stop strings
        ids = ep.prompt_for_next()           # tokens to feed (append to the KV cache) before sampling
        out_ids, out_lps = sample(ids, stop=req.stop_strings)
        turn = ep.add_policy_output(out_ids, out_lps)
        if turn.env_action is not None:      # an executor turn: run it
            res = env.step(turn.env_action)
            ep.add_observation(res.observation, done=res.done, info=res.info)
`ep.spans` is the episode as the sampler saw it; `ep.token_ids()` their concatenation.

A plan generation that closes its assistant message (its last token is an end-of-turn token, e.g.
`<|im_end|>`, sampled before any thought/action) is kept exactly as sampled; the rest of the chat
template's closing and a new assistant header follow as a PROMPT span (template scaffolding, never
trained), and the executor writes its thought+action in that new assistant message.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, Optional, Sequence

from pilotrl_jax.agent import prompts
from pilotrl_jax.agent.parser import (
    ACTION_CLOSE,
    ACTION_TAG,
    PLAN_CLOSE,
    PLAN_TAG,
    THOUGHT_TAG,
    ParseResult,
    close_tag,
    open_tag,
    parse_action,
    parse_plan,
)
from pilotrl_jax.agent.spans import Span, SpanKind, flatten_spans
from pilotrl_jax.agent.tokenizer import ChatTokenizer, as_chat_tokenizer, split_index_after_text
from pilotrl_jax.envs.base import Task

PlanSource = Callable[["AgentEpisode"], Optional[Sequence[str]]]

_EXECUTOR_TAGS = tuple(f(n) for n in (THOUGHT_TAG, ACTION_TAG) for f in (open_tag, close_tag))
_PLACEHOLDER = "\u2063ASSISTANT_MESSAGE\u2063"


def _opens_with_plan(text: str) -> bool:
    """True when `text` starts (after blanks) with the opening plan tag."""
    return text.lstrip().startswith(open_tag(PLAN_TAG))


def _has_executor_tag(text: str) -> bool:
    """True when `text` holds a thought or action tag (opening or closing)."""
    return any(t in text for t in _EXECUTOR_TAGS)


def new_assistant_message_ids(chat: ChatTokenizer, after: Sequence[int]) -> list[int]:
    """Tokens that close the assistant message ending `after` (less the closing it holds) and open a new one."""
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": _PLACEHOLDER}]
    ids = chat.encode(chat.render(messages, add_generation_prompt=True).split(_PLACEHOLDER, 1)[1])
    k = chat.closing_overlap(after)
    return ids[k:] if ids[:k] == list(chat.closing_ids[:k]) else ids


class Phase(str, enum.Enum):
    """Where the episode stands."""

    NOT_STARTED = "not_started"
    PLAN = "plan"  # the policy must write a plan
    ACTION = "action"  # the policy must write thought+action (in on_demand maybe a plan first)
    OBSERVE = "observe"  # an env action is pending; waiting for add_observation
    DONE = "done"


@dataclasses.dataclass(frozen=True)
class Request:
    """What the sampler must generate next: a PLAN or ACTION span, stopping at `stop_strings`."""

    kind: SpanKind
    stop_strings: tuple[str, ...]
    allow_plan: bool  # on_demand: the turn may open with a new <global_plan>


@dataclasses.dataclass(frozen=True)
class TurnResult:
    """Outcome of one policy generation: its parse and, for executor turns, the env action to run."""

    kind: SpanKind
    parse: ParseResult
    env_action: Optional[str]  # None after a plan-only generation (the executor writes next, in the same
    # assistant message or, when the plan generation ended it, in a new one)
    format_error: bool


class AgentEpisode:
    """One episode of an AdaPlan (every_step | on_demand | static) or ReAct agent, as token spans."""

    def __init__(
        self,
        task: Optional[Task],
        mode: str = "adaplan",
        replan: Optional[str] = "every_step",
        plan_source: Optional[PlanSource] = None,
        tokenizer: Any = None,
        *,
        env: Optional[str] = None,
        noop_action: Optional[str] = None,
        show_admissible: bool = False,
        max_turns: Optional[int] = None,
        prompt_style: str = "full",
        exemplar: str = "",
    ):
        self.mode, self.replan = prompts.check_mode(mode, replan)
        if task is not None and not isinstance(task, Task):
            raise TypeError(f"task must be a pilotrl_jax.envs.base.Task or None, got {type(task).__name__}")
        env = env or (task.env if task is not None else None)
        if env is None:
            raise ValueError("AgentEpisode needs the environment family: pass a Task or env='alfworld'|...")
        self.env = prompts.check_env(env)
        if plan_source is not None and not callable(plan_source):
            raise TypeError(f"plan_source must be a callable (episode) -> list of steps, got {type(plan_source).__name__}")
        if plan_source is not None and self.mode == "react":
            raise ValueError("plan_source is given but mode is 'react' (no plan); use mode='adaplan' or drop plan_source")
        if tokenizer is None:
            raise ValueError("AgentEpisode needs a tokenizer (a transformers tokenizer with a chat template)")
        if max_turns is not None and (not isinstance(max_turns, int) or max_turns < 1):
            raise ValueError(f"max_turns={max_turns!r}; pass a positive int or None")
        self.task = task
        self.plan_source = plan_source
        self.chat: ChatTokenizer = as_chat_tokenizer(tokenizer)
        self.noop_action = noop_action if noop_action is not None else prompts.NOOP_ACTIONS[self.env]
        self.show_admissible = show_admissible
        self.max_turns = max_turns
        self.prompt_style = prompts.check_style(prompt_style)
        if not isinstance(exemplar, str):
            raise TypeError(f"exemplar must be an example episode's text for the system prompt (str, '' for none; "
                            f"agent.prompts.exemplar_text), got {type(exemplar).__name__}")
        self.exemplar = exemplar

        self.spans: list[Span] = []
        self.phase = Phase.NOT_STARTED
        self.status: Optional[str] = None  # set when done: success | env_done | max_turns | ... (rollout's words)
        self.plan: Optional[tuple[str, ...]] = None  # the plan in force
        self.plan_history: list[tuple[int, SpanKind, tuple[str, ...]]] = []  # (turn, PLAN|EXTERNAL_PLAN, steps)
        self.observations: list[str] = []
        self.actions: list[str] = []  # env actions sent (no-ops for format errors included)
        self.turns: list[TurnResult] = []  # one per PLAN/ACTION span the policy wrote
        self.format_errors = 0  # malformed plan spans + malformed executor spans
        self.num_turns = 0  # executor turns (env actions) so far
        self.final_info: dict = {}
        self.turn_scores: list[Optional[float]] = []  # the env's score after each executor turn (None: not reported)
        self._fed = 0  # tokens the sampler has already consumed
        self._turn_text = ""  # parse carry within the current assistant turn (straddling tokens)
        self._planned_this_turn = False
        self._turn_errors: list[str] = []  # format errors of the current turn, reported with the observation
        self._last_sent: Optional[str] = None

    # ------------------------------------------------------------------ setup
    @property
    def external_plan(self) -> bool:
        """True when plans come from `plan_source` (stage 1), not from the policy."""
        return self.plan_source is not None

    def start(self, observation: str, info: Optional[dict] = None) -> None:
        """Begin with the env's first observation: adds the PROMPT span (and a first external plan)."""
        if self.phase != Phase.NOT_STARTED:
            raise RuntimeError("AgentEpisode.start was called twice; make a new AgentEpisode per episode")
        if not isinstance(observation, str):
            raise TypeError(f"observation must be the env's first text (str), got {type(observation).__name__}")
        self.observations.append(observation)
        self._info = dict(info or {})
        system = prompts.system_prompt(self.env, self.mode, self.replan, self.external_plan, style=self.prompt_style,
                                       exemplar=self.exemplar)
        user = prompts.task_message(self.env, observation, self.mode, self.replan, self.external_plan,
                                    style=self.prompt_style)
        text = self.chat.prompt_text(system, user)
        self.spans.append(Span(SpanKind.PROMPT, self.chat.encode(text), None, text))
        self._open_turn()

    def _open_turn(self) -> None:
        """Decide the first generation of a new assistant turn (inserting an external plan if due)."""
        self._turn_text = ""
        self._turn_errors = []
        self._planned_this_turn = False
        if self.mode == "react":
            self.phase = Phase.ACTION
            return
        first = self.num_turns == 0
        wants_plan = first or self.replan == "every_step"
        if self.external_plan:
            if wants_plan or self.replan == "on_demand":
                steps = self.plan_source(self)
                if steps is not None:
                    steps = tuple(steps)
                    if wants_plan or steps != self.plan:
                        self._add_external_plan(steps)
            if self.plan is None and first:
                raise ValueError("plan_source returned None for the first turn; it must give the initial plan steps")
            self.phase = Phase.ACTION
            return
        self.phase = Phase.PLAN if wants_plan else Phase.ACTION

    def _add_external_plan(self, steps: tuple[str, ...]) -> None:
        text = prompts.external_plan_text(steps)  # raises a clear error on malformed steps
        self.spans.append(Span(SpanKind.EXTERNAL_PLAN, self.chat.encode(text), None, text))
        self.plan = steps
        self.plan_history.append((self.num_turns, SpanKind.EXTERNAL_PLAN, steps))
        self._planned_this_turn = True

    # ------------------------------------------------------------------ sampling interface
    @property
    def done(self) -> bool:
        """True once the episode has ended."""
        return self.phase == Phase.DONE

    def next_request(self) -> Optional[Request]:
        """What the policy must generate next, or None when the episode waits for the env or is done."""
        if self.phase == Phase.PLAN:
            return Request(SpanKind.PLAN, (PLAN_CLOSE, ACTION_CLOSE), False)
        if self.phase == Phase.ACTION:
            allow = self._allow_plan()
            return Request(SpanKind.ACTION, (ACTION_CLOSE, PLAN_CLOSE) if allow else (ACTION_CLOSE,), allow)
        return None

    def _allow_plan(self) -> bool:
        return (
            self.mode == "adaplan"
            and self.replan == "on_demand"
            and not self.external_plan
            and not self._planned_this_turn
        )

    def prompt_for_next(self) -> list[int]:
        """Token ids added since the sampler last wrote (prompt, observation, external plan spans)."""
        if self.phase not in (Phase.PLAN, Phase.ACTION):
            raise RuntimeError(f"prompt_for_next called in phase {self.phase.value}; the policy writes only in plan/action phases")
        return self.token_ids()[self._fed :].tolist()

    def token_ids(self):
        """All token ids of the episode so far (np.int32 array), the concatenation of `spans`."""
        return flatten_spans(self.spans)[0]

    def arrays(self):
        """(token_ids, kind_ids, logprobs) of the episode, as flatten_spans gives them."""
        return flatten_spans(self.spans)

    # ------------------------------------------------------------------ policy output
    def add_policy_output(
        self, token_ids: Sequence[int], logprobs: Optional[Sequence[float]] = None, text: Optional[str] = None
    ) -> TurnResult:
        """Record the policy's sampled tokens (kept exactly), parse them, and say which env action to run."""
        if self.phase not in (Phase.PLAN, Phase.ACTION):
            raise RuntimeError(
                f"add_policy_output called in phase {self.phase.value}; call add_observation after an action "
                "and check next_request() before sampling"
            )
        ids = [int(t) for t in token_ids]
        lps = None if logprobs is None else [float(x) for x in logprobs]
        if lps is not None and len(lps) != len(ids):
            raise ValueError(f"add_policy_output got {len(ids)} token ids but {len(lps)} log-probs; pass one per token")
        if text is None:
            text = self.chat.decode(ids)
        elif not isinstance(text, str):
            raise TypeError(f"text must be the decoded policy output (str) or None, got {type(text).__name__}")
        self._fed = len(self.token_ids()) + len(ids)
        turn = self._generation(ids, lps, text, expect_plan=self.phase == Phase.PLAN)
        if turn.env_action is None and ids and ids[-1] in self.chat.end_of_turn_ids:
            self._open_new_message(ids)
        return turn

    def _open_new_message(self, after: list[int]) -> None:
        """The policy closed its assistant message after a plan: the template's new assistant header follows."""
        ids = new_assistant_message_ids(self.chat, after)
        self.spans.append(Span(SpanKind.PROMPT, ids, None, self.chat.decode(ids)))
        self._turn_text = ""  # nothing of the closed message carries into the executor's parse

    def _record_plan(self, steps: tuple[str, ...]) -> None:
        self.plan = steps
        self.plan_history.append((self.num_turns, SpanKind.PLAN, steps))

    def _generation(self, ids, lps, text, expect_plan: bool) -> TurnResult:
        """Route one sampled generation to PLAN and/or ACTION spans (tokens never re-tokenized)."""
        may_plan = expect_plan or self._allow_plan()
        if may_plan and _opens_with_plan(text) and PLAN_CLOSE in text:
            # A plan block first: cut the sampled tokens after the token that closes it.
            cut = split_index_after_text(self.chat, ids, PLAN_CLOSE)
            head_text = self.chat.decode(ids[:cut]) if cut is not None else text
            if cut is not None and not _has_executor_tag(head_text):
                rest_ids, rest_lps = ids[cut:], (None if lps is None else lps[cut:])
                plan_res = self._plan_turn(ids[:cut], None if lps is None else lps[:cut], head_text)
                rest_text = self.chat.decode(rest_ids)
                if not _has_executor_tag(self._turn_text + rest_text):
                    # Only a plan (maybe with a few characters past its stop): one PLAN span.
                    self.spans[-1] = Span(SpanKind.PLAN, ids, lps, text)
                    self._turn_text += rest_text
                    return plan_res
                turn = self._executor(rest_ids, rest_lps, rest_text, self._turn_text, allow_plan=False)
                if plan_res.format_error and not turn.format_error:
                    turn = dataclasses.replace(turn, format_error=True)
                return turn
        if expect_plan and not _has_executor_tag(text):
            return self._plan_turn(ids, lps, text)  # a plan turn, well-formed or not
        if expect_plan:  # thought/action where a plan was due: an executor turn, and a format error
            return self._executor(ids, lps, text, "", allow_plan=False, missing_plan=True)
        return self._executor(ids, lps, text, self._turn_text, allow_plan=may_plan)

    def _plan_turn(self, ids, lps, text) -> TurnResult:
        self.spans.append(Span(SpanKind.PLAN, ids, lps, text))
        res = parse_plan(text)
        if res.ok:
            self._record_plan(res.plan)
        else:
            self.format_errors += 1
            self._turn_errors.append("plan: " + res.error)
        # Characters after </global_plan> inside the plan's last token (e.g. "<" of a "><" token)
        # belong to the executor's text: carry them into its parse.
        end = text.rfind(PLAN_CLOSE)
        self._turn_text = text[end + len(PLAN_CLOSE):] if end >= 0 else ""
        self._planned_this_turn = True
        self.phase = Phase.ACTION
        turn = TurnResult(SpanKind.PLAN, res, None, not res.ok)
        self.turns.append(turn)
        return turn

    def _executor(self, ids, lps, text, carry, allow_plan, missing_plan=False) -> TurnResult:
        self.spans.append(Span(SpanKind.ACTION, ids, lps, text))
        res = parse_action(carry + text, allow_plan=allow_plan)
        if missing_plan:
            why = "missing <global_plan> before <thought> (write the plan first)"
            res = ParseResult(ok=False, error=why if res.ok else f"{why}; {res.error}")
        if res.ok:
            if res.new_plan:
                self._record_plan(res.plan)
            action = res.action
        else:
            self.format_errors += 1
            action = self.noop_action
            self._turn_errors.append(res.error)
        self.actions.append(action)
        self._last_sent = action
        self.num_turns += 1
        self.phase = Phase.OBSERVE
        turn = TurnResult(SpanKind.ACTION, res, action, not res.ok)
        self.turns.append(turn)
        return turn

    # ------------------------------------------------------------------ environment feedback
    def add_observation(self, observation: str, done: bool = False, info: Optional[dict] = None) -> None:
        """Take the env's answer to the last action; adds an OBSERVATION span unless the episode ended."""
        if self.phase != Phase.OBSERVE:
            raise RuntimeError(
                f"add_observation called in phase {self.phase.value}; it follows an executor turn "
                "(add_policy_output that returned an env_action)"
            )
        if not isinstance(observation, str):
            raise TypeError(f"observation must be str, got {type(observation).__name__}")
        info = dict(info or {})
        self.observations.append(observation)
        score = info.get("score")
        self.turn_scores.append(float(score) if isinstance(score, (int, float)) else None)
        if done:
            self.final_info = info
            self.finish("success" if info.get("won") else "env_done")
            return
        if self.max_turns is not None and self.num_turns >= self.max_turns:
            self.final_info = info
            self.finish("max_turns")
            return
        admissible = info.get("admissible_actions") if self.show_admissible else None
        error = "; ".join(self._turn_errors) or None
        noop_sent = bool(self.turns) and self.turns[-1].kind == SpanKind.ACTION and not self.turns[-1].parse.ok
        msg = prompts.observation_message(
            observation,
            self.mode,
            self.replan,
            external_plan=self.external_plan,
            format_error=error,
            sent_action=self._last_sent if noop_sent else None,
            admissible_actions=admissible,
            style=self.prompt_style,
        )
        self._turn_errors = []
        last_policy = next((s.token_ids for s in reversed(self.spans) if s.kind in (SpanKind.ACTION, SpanKind.PLAN)), [])
        ids = self.chat.observation_ids(msg, after=last_policy)
        self.spans.append(Span(SpanKind.OBSERVATION, ids, None, msg))
        self._open_turn()

    def finish(self, status: str) -> None:
        """End the episode with `status` (e.g. success, env_done, max_turns, token_budget, env_error)."""
        if not isinstance(status, str) or not status:
            raise ValueError(f"status={status!r}; pass a non-empty string such as 'token_budget'")
        self.status = status
        self.phase = Phase.DONE
