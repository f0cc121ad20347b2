"""The worked example episode (agent.exemplar): rendered in the agent's own format, clearly marked,
appended to the system prompt of every mode, and refused when malformed."""
import pytest

from pilotrl_jax.agent import prompts
from pilotrl_jax.agent.adaplan import AgentEpisode
from pilotrl_jax.agent.parser import parse_action, parse_plan
from pilotrl_jax.envs.base import Task

TASK = Task(env="alfworld", task_id="fake-0", task_type="pick_and_place")
PLAN = "<global_plan>Step 1: go to desk 1\nStep 2: take pen 1 from desk 1</global_plan>"
TURNS = [PLAN + "<thought>According to Step 1 of the global plan, I should go to desk 1.</thought>"
         "<action>go to desk 1</action>",
         "<thought>According to Step 2 of the global plan, I should take pen 1 from desk 1.</thought>"
         "<action>take pen 1 from desk 1</action>"]
OBS = ["You arrive at desk 1. On the desk 1, you see a pen 1.", "You pick up the pen 1 from the desk 1."]


def test_exemplar_text_is_marked_and_keeps_the_turns_verbatim():
    text = prompts.exemplar_text("  Your task is to: take a pen.\n", TURNS, OBS)
    lines = text.split("\n")
    assert lines[0] == prompts.EXEMPLAR_BEGIN and lines[-1] == prompts.EXEMPLAR_END
    assert "Example" in lines[0] and "do not copy its actions" in lines[0]
    assert lines[1] == "Task: Your task is to: take a pen."
    assert [ln for ln in lines if ln.startswith("<")] == [TURNS[0].split("\n")[0], TURNS[1]]  # turns bare
    first = text[text.index("\n<global_plan>") + 1: text.index("\nObservation: ")]
    assert first == TURNS[0]  # the plan's newline kept: exactly what the agent writes
    assert parse_plan(first[: first.index("</global_plan>") + len("</global_plan>")]).ok
    assert parse_action(first, allow_plan=True).action == "go to desk 1"
    assert text.count("Observation: ") == 2


def test_exemplar_text_bad_input():
    with pytest.raises(ValueError, match="one observation"):
        prompts.exemplar_text("task", TURNS, OBS[:1])
    with pytest.raises(ValueError, match="non-empty"):
        prompts.exemplar_text("  ", TURNS, OBS)
    with pytest.raises(TypeError, match="as str"):
        prompts.exemplar_text("task", [1, 2], OBS)
    with pytest.raises(ValueError, match=r"config.agent.exemplar='few_shot' is unknown"):
        prompts.check_exemplar("few_shot")
    with pytest.raises(TypeError, match="exemplar must be"):
        prompts.system_prompt("alfworld", exemplar=None)


@pytest.mark.parametrize("mode, replan", [("adaplan", "static"), ("adaplan", "every_step"), ("react", None)])
@pytest.mark.parametrize("style", prompts.PROMPT_STYLES)
def test_system_prompt_appends_the_exemplar(mode, replan, style):
    ex = prompts.exemplar_text("Your task is to: take a pen.", TURNS, OBS)
    plain = prompts.system_prompt("alfworld", mode, replan, style=style)
    withex = prompts.system_prompt("alfworld", mode, replan, style=style, exemplar=ex)
    assert withex == plain + "\n\n" + ex
    assert prompts.system_prompt("alfworld", mode, replan, style=style, exemplar="") == plain


def test_the_episode_prompt_carries_the_exemplar(tiny_tok):
    ex = prompts.exemplar_text("Your task is to: take a pen.", TURNS, OBS)
    plain, withex = AgentEpisode(TASK, "adaplan", "static", None, tiny_tok), \
        AgentEpisode(TASK, "adaplan", "static", None, tiny_tok, exemplar=ex)
    for ep in (plain, withex):
        ep.start("You are in a room. Your task is to: put a pen on the shelf.")
    a, b = plain.spans[0].text, withex.spans[0].text
    assert a != b and "take pen 1 from desk 1</action>" in b and "take pen 1 from desk 1" not in a
    assert b.index(prompts.EXEMPLAR_END) < b.index("Your task is to: put a pen on the shelf.")  # in the system turn
    with pytest.raises(TypeError, match="exemplar must be"):
        AgentEpisode(TASK, "adaplan", "static", None, tiny_tok, exemplar=["x"])
