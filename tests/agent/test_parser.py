"""Parser: plan and executor turns, format errors with reasons, fuzzing (never raises)."""
import random

import pytest

from pilotrl_jax.agent.parser import ParseResult, format_plan, parse_action, parse_plan


def test_plan_basic():
    r = parse_plan("<global_plan>Step 1: go to desk 1\nStep 2: take lamp 1 from desk 1</global_plan>")
    assert r.ok and r.error is None and r.new_plan
    assert r.plan == ("go to desk 1", "take lamp 1 from desk 1")
    assert r.plan_numbering_ok


def test_plan_tolerant_whitespace_and_numbering_styles():
    r = parse_plan("  \n<global_plan>\n  step 1 - find the key\n   under the mat\n2) open the door\n3. leave\n</global_plan>\n")
    assert r.ok, r.error
    assert r.plan == ("find the key under the mat", "open the door", "leave")


@pytest.mark.parametrize("bad, exact", [("</Action>", "</action>"), ("</ACTION>", "</action>"),
                                        ("< /action>", "</action>"), ("</action >", "</action>"),
                                        ("<Thought>", "<thought>"), ("</Global_Plan>", "</global_plan>")])
def test_tags_are_exact_and_a_miswritten_tag_is_named(bad, exact):
    """Tags are exact (the sampler stops only on exact closing tags): another case or blanks inside the
    brackets is a format error whose reason names the tag and its exact form."""
    turn = "<thought>t</thought><action>look</action>".replace(exact, bad)
    plan = "<global_plan>Step 1: look</global_plan>".replace(exact, bad)
    text, parse = (plan, parse_plan) if "plan" in exact else (turn, parse_action)
    assert bad in text
    r = parse(text)
    assert not r.ok and repr(bad) in r.error and f"write {exact}" in r.error
    assert parse(text.replace(bad, exact)).ok


def test_plan_numbering_reported_not_error():
    r = parse_plan("<global_plan>Step 1: a\nStep 3: b</global_plan>")
    assert r.ok and not r.plan_numbering_ok


def test_plan_roundtrip_format_plan():
    steps = ["go to fridge 1", "open fridge 1", "take egg 1 from fridge 1"]
    assert parse_plan(format_plan(steps)).plan == tuple(steps)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "missing <global_plan>"),
        ("Step 1: a", "text before <global_plan>"),
        ("<global_plan>Step 1: a", "unclosed"),
        ("<global_plan></global_plan>", "empty plan"),
        ("<global_plan>first do x</global_plan>", "Step 1"),
        ("<global_plan>Step 1:</global_plan>", "no text"),
        ("<global_plan>Step 1: a</global_plan><global_plan>Step 1: b</global_plan>", "after </global_plan>"),
        ("<global_plan>Step 1: <action>x</action></global_plan>", "nested"),
    ],
)
def test_plan_errors(text, reason):
    r = parse_plan(text)
    assert not r.ok and r.format_error
    assert reason in r.error
    assert r.plan is None


def test_action_basic_and_whitespace():
    r = parse_action("\n<thought> According to Step 2, open it. </thought>\n\n<action> open  fridge 1\n</action>")
    assert r.ok, r.error
    assert r.thought == "According to Step 2, open it."
    assert r.action == "open fridge 1"
    assert not r.new_plan and r.plan is None


def test_action_trailing_partial_token_ignored():
    r = parse_action("<thought>t</thought><action>look</action>\n.")
    assert r.ok and r.action == "look" and r.trailing == "\n."


def test_action_empty_thought_allowed_but_empty_action_not():
    assert parse_action("<thought></thought><action>look</action>").ok
    r = parse_action("<thought>x</thought><action>  \n </action>")
    assert not r.ok and "empty <action>" in r.error


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<action>look</action>", "missing <thought>"),
        ("<thought>x</thought>", "missing <action>"),
        ("<thought>a</thought><thought>b</thought><action>c</action>", "2 <thought> blocks"),
        ("<thought>a</thought><action>b</action><action>c</action>", "2 <action> blocks"),
        ("<action>b</action><thought>a</thought>", "must come first"),
        ("<thought>a<action>b</action></thought>", "nested"),
        ("<thought>a</thought><action>b", "unclosed <action>"),
        ("<thought>a</action><action>b</action>", "mismatched"),
        ("Thought: <thought>a</thought><action>b</action>", "text before <thought>"),
        ("<thought>a</thought> so: <action>b</action>", "between </thought> and <action>"),
        ("<thought>a</thought><action>b</action></thought>", "after </action>"),
        ("<global_plan>Step 1: a</global_plan><thought>a</thought><action>b</action>", "unexpected <global_plan>"),
    ],
)
def test_action_errors(text, reason):
    r = parse_action(text)
    assert not r.ok
    assert reason in r.error, r.error
    assert r.action is None


def test_on_demand_new_plan():
    text = "<global_plan>Step 1: look\nStep 2: go to desk 1</global_plan>\n<thought>Step 1.</thought><action>look</action>"
    r = parse_action(text, allow_plan=True)
    assert r.ok and r.new_plan and r.plan == ("look", "go to desk 1") and r.action == "look"
    r = parse_action("<thought>Step 1.</thought><action>look</action>", allow_plan=True)
    assert r.ok and not r.new_plan and r.plan is None


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<global_plan>oops</global_plan><thought>a</thought><action>b</action>", "new plan:"),
        ("<global_plan>Step 1: a<thought>a</thought><action>b</action>", "nested"),
        ("<global_plan>Step 1: a</global_plan>x<thought>a</thought><action>b</action>", "between </global_plan>"),
        ("<global_plan>Step 1: a</global_plan><global_plan>Step 1: b</global_plan><thought>a</thought><action>b</action>",
         "second <global_plan>"),
        ("<thought>a</thought><global_plan>Step 1: a</global_plan><action>b</action>", "expected <action>"),
        ("hi <global_plan>Step 1: a</global_plan><thought>a</thought><action>b</action>", "text before <global_plan>"),
    ],
)
def test_on_demand_errors(text, reason):
    r = parse_action(text, allow_plan=True)
    assert not r.ok and reason in r.error, r.error


def test_non_text_input_is_a_format_error_not_exception():
    assert not parse_action(None).ok
    assert not parse_plan(12).ok
    assert parse_action(b"<thought>a</thought><action>b</action>").ok


def test_unicode():
    r = parse_action("<thought>Шаг 1 — 看</thought><action>take 🍎 1</action>")
    assert r.ok and r.action == "take 🍎 1"


def test_format_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="plan steps"):
        format_plan("go")
    with pytest.raises(ValueError, match="plan steps"):
        format_plan(["ok", ""])
    with pytest.raises(ValueError, match="empty"):
        format_plan([])


_PIECES = [
    "<thought>", "</thought>", "<action>", "</action>", "<global_plan>", "</global_plan>", "< Thought >",
    "</ACTION>", "<thought", "</act", "<", ">", "/", "Step 1: ", "Step 2:", "\n", " ", "look", "go to desk 1",
    "é", "漢字", "🍎", "\u200b", "\x00", "<<", ">>", "<action><action>", "1.", "2)", "step", "\r\n", "\t",
]


def _random_text(rng: random.Random) -> str:
    if rng.random() < 0.3:  # random unicode garbage
        return "".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(rng.randint(0, 40)))
    if rng.random() < 0.2:  # a valid turn, truncated or mutated
        good = "<global_plan>Step 1: a\nStep 2: b</global_plan><thought>t</thought><action>look</action>"
        cut = rng.randint(0, len(good))
        s = good[:cut]
        if rng.random() < 0.5 and s:
            k = rng.randrange(len(s))
            s = s[:k] + rng.choice(_PIECES) + s[k + 1:]
        return s
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 14)))


def test_fuzz_never_raises():
    rng = random.Random(0)
    n_ok = 0
    for _ in range(5000):
        s = _random_text(rng)
        for r in (parse_plan(s), parse_action(s), parse_action(s, allow_plan=True)):
            assert isinstance(r, ParseResult)
            assert r.ok == (r.error is None)
            if r.ok:
                n_ok += 1
                assert r.action is None or (r.action and r.action == " ".join(r.action.split()))
                assert r.plan is None or all(step for step in r.plan)
            else:
                assert isinstance(r.error, str) and r.error
    assert n_ok > 0  # the generator does hit valid turns
