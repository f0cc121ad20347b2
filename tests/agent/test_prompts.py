"""Prompt templates: every family x mode renders, describes the formats, and rejects bad names."""
import pytest

from pilotrl_jax.agent import prompts
from pilotrl_jax.agent.parser import parse_plan

MODES = [("adaplan", r) for r in prompts.REPLAN_MODES] + [("react", None)]


@pytest.mark.parametrize("env", prompts.ENV_FAMILIES)
@pytest.mark.parametrize("mode, replan", MODES)
def test_system_prompt_every_family_and_mode(env, mode, replan):
    s = prompts.system_prompt(env, mode, replan)
    assert "<thought>" in s and "<action>" in s
    assert ("<global_plan>" in s) == (mode == "adaplan")
    assert env in prompts.NOOP_ACTIONS


def test_replan_modes_differ_and_external_plan_prompt():
    texts = {r: prompts.system_prompt("alfworld", "adaplan", r) for r in prompts.REPLAN_MODES}
    assert len(set(texts.values())) == 3
    assert "keep the steps already done" in texts["every_step"]
    ext = prompts.system_prompt("alfworld", "adaplan", "static", external_plan=True)
    assert "is given" in ext and "Do not write a plan" in ext


def test_task_and_observation_messages():
    t = prompts.task_message("alfworld", "  Your task is to: put a pen on the desk. ", "adaplan", "static")
    assert t.startswith("Your task is to: put a pen on the desk.")
    assert "global plan" in t
    assert "global plan" not in prompts.task_message("tiny", "x", "react", None)
    o = prompts.observation_message("You see a desk.", "adaplan", "every_step")
    assert o.startswith("Observation: You see a desk.") and "updated global plan" in o
    o = prompts.observation_message("Nothing happens.", "react", None, format_error="missing <action>", sent_action="look",
                                    admissible_actions=["look", "inventory"])
    assert "broke the format: missing <action>" in o and "'look' was run instead" in o
    assert "Available actions: look, inventory" in o
    assert "plan" not in prompts.observation_message("x", "adaplan", "on_demand", external_plan=True)


def test_external_plan_text_is_a_parseable_plan():
    txt = prompts.external_plan_text(["go to desk 1", "take pen 1 from desk 1"])
    assert parse_plan(txt).plan == ("go to desk 1", "take pen 1 from desk 1")


def test_bad_names_raise_clear_errors():
    with pytest.raises(ValueError, match="environment family 'webshop'"):
        prompts.system_prompt("webshop")
    with pytest.raises(ValueError, match="agent mode 'plan'"):
        prompts.system_prompt("tiny", "plan")
    with pytest.raises(ValueError, match="replan mode 'always'"):
        prompts.system_prompt("tiny", "adaplan", "always")
    with pytest.raises(ValueError, match="external_plan=True needs mode 'adaplan'"):
        prompts.system_prompt("tiny", "react", None, external_plan=True)
    with pytest.raises(TypeError, match="observation must be str"):
        prompts.observation_message(None)


def test_compact_style_keeps_commands_and_formats():
    for mode, replan in (("adaplan", "static"), ("adaplan", "every_step"), ("react", None)):
        full = prompts.system_prompt("alfworld", mode, replan)
        compact = prompts.system_prompt("alfworld", mode, replan, style="compact")
        assert len(compact) < 0.6 * len(full) and "take (object) from (receptacle)" in compact
        assert "<thought>" in compact and "<action>" in compact
        assert ("<global_plan>" in compact) == (mode == "adaplan")
    assert "given <global_plan>" in prompts.system_prompt("tiny", "adaplan", "static", True, style="compact")
    assert prompts.task_message("alfworld", " Your task is to: x. ", style="compact") == "Your task is to: x."
    msg = prompts.observation_message("You arrive.", "adaplan", "static", style="compact",
                                      format_error="missing <action>", sent_action="look")
    assert msg == "Your last reply broke the format: missing <action>. The command 'look' was run instead.\nObservation: You arrive."
    with pytest.raises(ValueError, match="prompt style"):
        prompts.system_prompt("alfworld", style="short")
