"""All prompt text of the agent in one place: system prompts, the task message, observations.

Conversation layout (every mode):
  system:    role + environment description + output format (few-shot free)
  user:      the task (the environment's first observation) + what to write first
  assistant: [plan] thought+action          <- policy (or an external plan in the plan slot)
  user:      "Observation: ..." + a one-line reminder of what to write next
  assistant: [plan] thought+action
  ...
An external plan (PilotRL stage 1) is shown where the policy's own plan would be: at the start of
the assistant turn, as `<global_plan>Step 1: ...</global_plan>`. The executor thus always finds the
plan in the same place, whoever wrote it (kept as an EXTERNAL_PLAN span, never trained).
"""
from __future__ import annotations

from typing import Optional, Sequence

from pilotrl_jax.agent.parser import format_plan

ENV_FAMILIES = ("alfworld", "scienceworld", "twx", "tiny", "agentgym")
AGENT_MODES = ("adaplan", "react")
REPLAN_MODES = ("every_step", "on_demand", "static")
# "full": the paper-style instructions (for instruction-tuned models); "compact": a few lines of
# format and no per-turn reminders, for tiny models trained from scratch (shorter episodes, the
# task text close to where the model acts). The tags and the parser are the same.
PROMPT_STYLES = ("full", "compact")
# A worked example episode in the system prompt (config.agent.exemplar): "" none; "expert" one
# complete expert episode on a train task (never a held-out one), in the format the agent must write.
# For small instruct models used zero-shot, which copy a format far more readily than follow a spec.
EXEMPLARS = ("", "expert")

# What the environment is sent when a turn breaks the format: a harmless command, so the engine
# answers as it would to any move (an unknown word gets the engine's own "invalid" reply).
NOOP_ACTIONS = {
    "alfworld": "look",
    "scienceworld": "look around",
    "twx": "look around",
    "tiny": "look",
    "agentgym": "look",
}

_ENV_TEXT = {
    "alfworld": (
        "You are an agent in a simulated household (ALFWorld). You act by typing text commands.\n"
        "Commands: go to (receptacle); open (receptacle); close (receptacle); "
        "take (object) from (receptacle); move (object) to (receptacle); examine (something); "
        "use (object); heat (object) with (receptacle); cool (object) with (receptacle); "
        "clean (object) with (receptacle); slice (object) with (object); inventory; look.\n"
        "Write object and receptacle names exactly as the observations do, e.g. 'apple 1', 'fridge 1'."
    ),
    "scienceworld": (
        "You are an agent in ScienceWorld, a simulated world for elementary science experiments. "
        "You act by typing text commands.\n"
        "Commands include: look around; look at (obj); look in (obj); go to (location); "
        "open/close (obj); pick up (obj); put down (obj); move (obj) to (obj); pour (obj) into (obj); "
        "activate/deactivate (obj); use (obj) on (obj); mix (obj); connect (obj) to (obj); "
        "focus on (obj); read (obj); eat (obj); wait; wait1; inventory; task.\n"
        "'focus on' marks the object the task is about: use it only on the object the task names."
    ),
    "twx": (
        "You are an agent in a TextWorldExpress game (e.g. cooking a recipe, tidying a house, finding "
        "a coin, reading a map, arithmetic, sorting). You act by typing text commands such as: "
        "look around; inventory; move north/south/east/west; open door to (direction); take (obj); "
        "put (obj) in (obj); examine (obj); and the verbs the task and observations name.\n"
        "Write object names exactly as the observations do."
    ),
    "tiny": (
        "You are an agent in a small text world of rooms, items and containers. You act by typing "
        "short text commands.\n"
        "Commands: go to (room); take (item); take (item) from (container); drop (item); "
        "put (item) in (container); open (container); close (container); look; inventory.\n"
        "Write names exactly as the observations do."
    ),
    "agentgym": (
        "You are an agent interacting with an environment through text. "
        "The task and the observations say which actions are available; write actions in exactly "
        "the form they describe."
    ),
}

_PLAN_FORMAT = (
    "A global plan is a numbered list of short steps that, done in order, complete the task:\n"
    "<global_plan>Step 1: ...\nStep 2: ...</global_plan>"
)
_ACTION_FORMAT = (
    "Each turn, write one thought and one action, and nothing else:\n"
    "<thought>your reasoning</thought><action>one command</action>\n"
    "The action is sent to the environment verbatim; the next message shows what it answered."
)
_ROLE_TEXT = {
    ("adaplan", "every_step"): (
        "Before every action, write the global plan again, updated with what you observed: keep the "
        "steps already done, and change, add or drop the later steps as needed. In your thought, say "
        "which step you are carrying out (e.g. 'According to Step 2 of the global plan, ...')."
    ),
    ("adaplan", "on_demand"): (
        "Write a global plan in your first turn. In later turns, start with a new global plan only when "
        "the current one must change (keep the steps already done); otherwise write just the thought "
        "and action. In your thought, say which step you are carrying out "
        "(e.g. 'According to Step 2 of the global plan, ...')."
    ),
    ("adaplan", "static"): (
        "Write a global plan once, in your first turn, then follow it. In your thought, say which step "
        "you are carrying out (e.g. 'According to Step 2 of the global plan, ...')."
    ),
    ("adaplan", "external"): (
        "A global plan is given at the start of your turns. Follow it: in your thought, say which step "
        "you are carrying out (e.g. 'According to Step 2 of the global plan, ...'), then act. "
        "Do not write a plan yourself."
    ),
    ("react", None): "Think about what to do next, then act.",
}


def check_mode(mode: str, replan: Optional[str]) -> tuple[str, Optional[str]]:
    """Validate (mode, replan); react takes no replan mode. Returns the normalized pair."""
    if mode not in AGENT_MODES:
        raise ValueError(f"agent mode {mode!r} is unknown; expected one of {AGENT_MODES}")
    if mode == "react":
        return mode, None
    if replan not in REPLAN_MODES:
        raise ValueError(f"replan mode {replan!r} is unknown; expected one of {REPLAN_MODES} (mode 'adaplan')")
    return mode, replan


def check_env(env: str) -> str:
    """Validate an environment family name."""
    if env not in ENV_FAMILIES:
        raise ValueError(f"environment family {env!r} has no prompt; expected one of {ENV_FAMILIES}")
    return env


def check_style(style: str) -> str:
    """Validate a prompt style name."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style {style!r} is unknown; expected one of {PROMPT_STYLES}")
    return style


def check_exemplar(kind: str) -> str:
    """Validate an exemplar kind (`EXEMPLARS`, config.agent.exemplar)."""
    if kind not in EXEMPLARS:
        raise ValueError(f"config.agent.exemplar={kind!r} is unknown; expected '' (no example episode in the "
                         "prompt) or 'expert' (one expert episode on a train task)")
    return kind


EXEMPLAR_BEGIN = ("--- Example: a solved episode of another task. The lines that start with a tag are what you "
                  "write, in exactly this format; 'Observation:' lines are the environment's answers. Your task is "
                  "different: do not copy its actions. ---")
EXEMPLAR_END = "--- End of example ---"


def exemplar_text(task_text: str, turns: Sequence[str], observations: Sequence[str]) -> str:
    """A worked example episode as text for the system prompt, clearly marked as an example.

    `task_text` is the episode's first observation, `turns[i]` what the agent wrote in its i-th
    assistant turn (plan and/or thought+action, verbatim) and `observations[i]` the env's answer to it.
    """
    if not isinstance(task_text, str) or not task_text.strip():
        raise ValueError("exemplar_text needs the example's task (its first observation) as a non-empty str")
    turns, observations = list(turns), list(observations)
    if not turns or len(turns) != len(observations):
        raise ValueError(f"exemplar_text got {len(turns)} turns and {len(observations)} observations; pass one "
                         "observation (the env's answer) per turn, and at least one turn")
    if not all(isinstance(x, str) for x in turns + observations):
        raise TypeError("exemplar_text takes the turns and observations as str")
    lines = [EXEMPLAR_BEGIN, f"Task: {task_text.strip()}"]
    for turn, obs in zip(turns, observations):
        lines += [turn.strip(), f"Observation: {obs.strip()}"]  # the turn bare: a model may copy any prefix
    lines.append(EXEMPLAR_END)
    return "\n".join(lines)


def _compact_system(env: str, mode: str, external_plan: bool) -> str:
    """The compact system message: the env's command line and the output format in two lines."""
    lines = _ENV_TEXT[env].split("\n")
    commands = next((ln for ln in lines if ln.startswith(("Commands", "The task"))), lines[0])
    act = "<thought>...</thought><action>one command</action>"
    if mode == "react":
        fmt = f"Each turn: {act}"
    elif external_plan:
        fmt = f"Follow the given <global_plan>. Each turn: {act}"
    else:
        fmt = f"First <global_plan>Step 1: ...</global_plan>, then each turn: {act}"
    return f"{commands}\n{fmt}"


def system_prompt(env: str, mode: str = "adaplan", replan: Optional[str] = "every_step", external_plan: bool = False,
                  style: str = "full", exemplar: str = "") -> str:
    """The system message: environment description, the agent's role, the output formats and, when
    `exemplar` is given (`exemplar_text`), a worked example episode after them."""
    if not isinstance(exemplar, str):
        raise TypeError(f"exemplar must be the example episode's text (str, '' for none), got {type(exemplar).__name__}")
    text = _system_prompt(env, mode, replan, external_plan, style)
    return f"{text}\n\n{exemplar.strip()}" if exemplar.strip() else text


def _system_prompt(env: str, mode: str, replan: Optional[str], external_plan: bool, style: str) -> str:
    check_env(env)
    mode, replan = check_mode(mode, replan)
    if check_style(style) == "compact":
        if mode == "react" and external_plan:
            raise ValueError("external_plan=True needs mode 'adaplan'; react has no plan")
        return _compact_system(env, mode, external_plan)
    if mode == "react":
        if external_plan:
            raise ValueError("external_plan=True needs mode 'adaplan'; react has no plan")
        role = _ROLE_TEXT[("react", None)]
        fmt = _ACTION_FORMAT
    elif external_plan:
        role = _ROLE_TEXT[("adaplan", "external")]
        fmt = _PLAN_FORMAT + "\n" + _ACTION_FORMAT
    else:
        role = _ROLE_TEXT[("adaplan", replan)]
        fmt = _PLAN_FORMAT + "\n" + _ACTION_FORMAT
    return f"{_ENV_TEXT[env]}\n\n{fmt}\n\n{role}"


def _next_hint(mode: str, replan: Optional[str], first: bool, external_plan: bool) -> str:
    if mode == "react" or external_plan:
        return "Write your thought and action."
    if first or replan == "every_step":
        return "Write the global plan, then your thought and action." if first else (
            "Write the updated global plan, then your thought and action.")
    if replan == "on_demand":
        return "Write your thought and action (a new global plan first only if the plan must change)."
    return "Write your thought and action, following the global plan."


def task_message(
    env: str,
    task_text: str,
    mode: str = "adaplan",
    replan: Optional[str] = "every_step",
    external_plan: bool = False,
    style: str = "full",
) -> str:
    """The first user message: the task / first observation and what to write first."""
    check_env(env)
    mode, replan = check_mode(mode, replan)
    if not isinstance(task_text, str):
        raise TypeError(f"task_text must be the environment's first observation as str, got {type(task_text).__name__}")
    if check_style(style) == "compact":
        return task_text.strip()
    return f"{task_text.strip()}\n\n{_next_hint(mode, replan, True, external_plan)}"


def observation_message(
    observation: str,
    mode: str = "adaplan",
    replan: Optional[str] = "every_step",
    *,
    external_plan: bool = False,
    format_error: Optional[str] = None,
    sent_action: Optional[str] = None,
    admissible_actions: Optional[Sequence[str]] = None,
    style: str = "full",
) -> str:
    """How an environment observation is written back as a user message.

    `format_error` (the parser's reason) tells the policy its last turn was malformed and that
    `sent_action` (the no-op) was run instead; `admissible_actions` lists the legal commands.
    """
    mode, replan = check_mode(mode, replan)
    if not isinstance(observation, str):
        raise TypeError(f"observation must be str, got {type(observation).__name__}; pass the env's text")
    parts = []
    if format_error is not None:
        ran = f" The command '{sent_action}' was run instead." if sent_action else ""
        parts.append(f"Your last reply broke the format: {format_error}.{ran}")
    parts.append(f"Observation: {observation.strip()}")
    if admissible_actions:
        parts.append("Available actions: " + ", ".join(str(a) for a in admissible_actions))
    if check_style(style) == "full":
        parts.append(_next_hint(mode, replan, False, external_plan))
    return "\n".join(parts)


def plan_text(steps: Sequence[str]) -> str:
    """A plan as the policy would write it (and as an external plan is shown)."""
    return format_plan(list(steps))


def external_plan_text(steps: Sequence[str]) -> str:
    """The text of an external (stage-1) plan, placed at the start of the assistant turn."""
    return plan_text(steps)
