"""Grounded judge on hand-made episodes, JudgeRequest from real AgentEpisodes, JSON repair."""
import pytest

from pilotrl_jax.agent.adaplan import AgentEpisode
from pilotrl_jax.envs.base import StepResult, Task, info_defaults
from pilotrl_jax.rewards import (GroundedJudge, JudgeRequest, PlanRecord, RewardConfig, compute_rewards, key_terms,
                                 parse_judge_answer, plan_step_coverage, summarize_episode)
from pilotrl_jax.rewards.jsonrepair import parse_json_object
from pilotrl_jax.rewards.judge import aggregate, select_units, unit_messages

TASK_TEXT = "You are in a room with a desk 1 and a shelf 1. Your task is to: put a pen on the shelf."
PLAN = ("go to the desk", "take the pen from the desk", "put the pen on the shelf")
GOOD_ACTIONS = ("go to desk 1", "take pen 1 from desk 1", "move pen 1 to shelf 1")
GOOD_OBS = (TASK_TEXT, "On the desk 1, you see a pen 1.", "You pick up the pen 1 from the desk 1.",
            "You move the pen 1 to the shelf 1.")


def _req(actions, observations, won, plans=(PlanRecord(0, PLAN),), score=None):
    return JudgeRequest(task=TASK_TEXT, plans=tuple(plans), actions=tuple(actions), observations=tuple(observations),
                        won=won, score=float(won) if score is None else score)


def test_key_terms_and_coverage():
    assert key_terms("Step 2: take the apples from the countertop 1") == {"apple", "countertop"}
    cov, matched = plan_step_coverage(PLAN, GOOD_ACTIONS, GOOD_OBS)
    assert cov == 1.0 and matched == [0, 1, 2]
    # A failed action ("Nothing happens.") carries out nothing.
    cov, _ = plan_step_coverage(PLAN, GOOD_ACTIONS, (TASK_TEXT, "Nothing happens.", "Nothing happens.", "Nothing happens."))
    assert cov == 0.0
    # Out of order: the shelf step first, then desk steps cannot match before it.
    cov, matched = plan_step_coverage(PLAN, GOOD_ACTIONS[::-1], (TASK_TEXT, "ok", "ok", "ok"))
    assert cov < 1.0
    # "find the pen" is done by a discovery action whose observation shows the pen.
    cov, _ = plan_step_coverage(["find the pen"], ["go to desk 1"], [TASK_TEXT, "On the desk 1, you see a pen 1."])
    assert cov == 1.0
    cov, _ = plan_step_coverage(["do it"], ["look"], [TASK_TEXT, "ok"])
    assert cov is None


def test_grounded_followed_plan_with_success_beats_ignored_plan():
    judge = GroundedJudge()
    followed = _req(GOOD_ACTIONS, GOOD_OBS, won=True)
    ignored = _req(("look", "inventory", "look"), (TASK_TEXT, "You see a room.", "You carry nothing.", "You see a room."),
                   won=False)
    half = _req(GOOD_ACTIONS[:2], GOOD_OBS[:3], won=False, score=0.5)
    misnumbered = _req(GOOD_ACTIONS, GOOD_OBS, won=True, plans=(PlanRecord(0, PLAN, numbering_ok=False),))
    malformed = _req(GOOD_ACTIONS, GOOD_OBS, won=True, plans=(PlanRecord(0, (), "<global_plan>oops", False, False),))
    f, i, h, m, bad = judge.score([followed, ignored, half, misnumbered, malformed])
    assert all(j.ok for j in (f, i, h, m, bad))
    assert f.score == 5.0 and f.score_norm == 1.0
    assert f.criteria == {"correctness": 5.0, "followability": 5.0, "standardization": 5.0}
    assert i.score < h.score < f.score
    assert i.criteria["followability"] == 1.0 and i.criteria["correctness"] == 1.0
    assert h.criteria["followability"] == pytest.approx(1 + 4 * 2 / 3)
    assert m.criteria["standardization"] == 3.0 and m.score < f.score
    assert bad.score == 1.0
    # No plan at all: a verdict (the worst plan), not a failed judgement that would earn its group's mean.
    (none,) = judge.score([_req(GOOD_ACTIONS, GOOD_OBS, won=True, plans=())])
    assert none.ok and none.score == 1.0 and none.score_norm == 0.0 and none.n_units == 0
    assert none.criteria == {"correctness": 1.0, "followability": 1.0, "standardization": 1.0}
    st = judge.stats()
    assert st["episodes"] == 6 and st["judgement_failures"] == 0 and st["requests"] == 5


def test_revised_plans_averaged_over_units():
    p2 = PlanRecord(1, ("go to the desk", "take the pen from the desk", "put the pen on the shelf"))
    p1 = PlanRecord(0, ("go to the drawer", "take the pen from the drawer", "put the pen on the shelf"))
    (j,) = GroundedJudge().score([_req(GOOD_ACTIONS, GOOD_OBS, won=True, plans=(p1, p2))])
    assert j.n_units == 2 and len(j.per_unit) == 2
    assert j.per_unit[0]["followability"] < j.per_unit[1]["followability"]
    assert j.score == pytest.approx(sum(sum(u.values()) / 3 for u in j.per_unit) / 2)


class _Env:
    GOAL = GOOD_ACTIONS

    def __init__(self):
        self.k = 0

    def step(self, action):
        if self.k < len(self.GOAL) and action == self.GOAL[self.k]:
            self.k += 1
            won = self.k == len(self.GOAL)
            return StepResult(GOOD_OBS[self.k], float(won), won, info_defaults({}, won=won, score=float(won)))
        return StepResult("Nothing happens.", 0.0, False, info_defaults({}))


def _run(tok, outputs, replan="every_step"):
    ep = AgentEpisode(Task("alfworld", "t0"), "adaplan", replan, tokenizer=tok, max_turns=6)
    env = _Env()
    ep.start(TASK_TEXT)
    for text in outputs:
        if ep.done:
            break
        turn = ep.add_policy_output(ep.chat.encode(text), None, text)
        if turn.env_action is not None:
            r = env.step(turn.env_action)
            ep.add_observation(r.observation, done=r.done, info=r.info)
    if not ep.done:
        ep.finish("max_turns")
    return ep


def _plan(steps, numbers=None):
    numbers = numbers or range(1, len(steps) + 1)
    return "<global_plan>" + "\n".join(f"Step {n}: {s}" for n, s in zip(numbers, steps)) + "</global_plan>"


def _act(a):
    return f"<thought>According to the plan.</thought><action>{a}</action>"


def test_request_from_real_episode_and_rewards(tok):
    plan = _plan(PLAN)
    good = _run(tok, [plan, _act(GOOD_ACTIONS[0]), plan, _act(GOOD_ACTIONS[1]), plan, _act(GOOD_ACTIONS[2])])
    assert good.status == "success"
    bad = _run(tok, ["<global_plan>I will wing it</global_plan>", _act("look"), _plan(PLAN, [1, 3, 5]), _act("look"),
                     "no tags at all", _act("look")], replan="every_step")
    rg, rb = JudgeRequest.from_episode(good), JudgeRequest.from_episode(bad)
    assert rg.won and len(rg.plans) == 3 and rg.plans[0].raw.startswith("<global_plan>") and rg.plans[0].turn == 0
    assert [p.turn for p in rg.plans] == [0, 1, 2]
    assert not rb.won and [p.well_formed for p in rb.plans][:2] == [False, True]
    assert rb.plans[1].numbering_ok is False
    judge = GroundedJudge()
    jg, jb = judge.score([rg, rb])
    assert jg.ok and jb.ok and jg.score > jb.score
    out = compute_rewards([summarize_episode(good, jg), summarize_episode(bad, jb)], RewardConfig(plan_weight=0.5))
    assert out.reward[0] == pytest.approx(1.0 + 0.5 * jg.score_norm)
    assert out.reward[1] == pytest.approx(-0.1 + 0.5 * jb.score_norm)  # format errors in the bad episode
    assert summarize_episode(good).response_len > 0
    msgs = unit_messages(rg, 2)
    assert "correctness" in msgs[1]["content"] and "The task was completed." in msgs[1]["content"]
    assert "move pen 1 to shelf 1" not in unit_messages(rg, 0)[1]["content"]  # only the interaction under plan 0


@pytest.mark.parametrize("text,want", [
    ('{"correctness": 4, "followability": 5, "standardization": 3}', (4, 5, 3)),
    ('Sure! Here it is:\n```json\n{"correctness": "4", "followability": "5/5", "standardization": 2,}\n```', (4, 5, 2)),
    ("{'correctness': 4, 'followability': 2, 'standardization': 5, 'reason': 'it's fine'}", (4, 2, 5)),
    ('{correctness: 9, followability: 0, standardization: 3.5}', (5, 1, 3.5)),
    ('{"Correctness": 3, "Followability": 3, "Format": 4', (3, 3, 4)),
    ('{"scores": {"correctness": 2, "followability": 2, "standardization": 2}}', (2, 2, 2)),
    ('{"correctness": {"score": 4, "why": "ok"}, "followability": 3, "standardization": 1}', (4, 3, 1)),
])
def test_parse_judge_answer_repairs(text, want):
    crit, err = parse_judge_answer(text)
    assert err is None, err
    assert (crit["correctness"], crit["followability"], crit["standardization"]) == want


@pytest.mark.parametrize("text,want", [
    # Paper-style replies: each reason comes before its score and holds digits of its own.
    ('{"correctness_reason": "Step 2 is missing, so 1 of 3 steps fails", "correctness_score": 4, '
     '"followability_reason": "The agent followed steps 1-3.", "followability_score": 2, '
     '"standardization_reason": "Uses Step 1: ... format", "standardization_score": 5}', (4, 2, 5)),
    ('{"Correctness reason": "5 stars would be too many", "Correctness": 3, "followability explanation": "2 steps", '
     '"followability": "4/5", "standardizationReason": "1 typo", "standardizationScore": "score: 2"}', (3, 4, 2)),
    # An exact key beats a *_score key, whatever the order.
    ('{"correctness_score": 2, "correctness": 4, "followability_rating": 3, '
     '"standardization": {"reason": "1", "score": 5}}', (4, 3, 5)),
])
def test_parse_judge_answer_never_reads_a_reason(text, want):
    crit, err = parse_judge_answer(text)
    assert err is None, err
    assert (crit["correctness"], crit["followability"], crit["standardization"]) == want


@pytest.mark.parametrize("text", [
    '{"correctness_reason": "4 of 5 steps work", "followability": 3, "standardization": 3}',  # only a reason
    '{"correctness": "Step 2 is wrong, so 1", "followability": 3, "standardization": 3}',  # prose, not a score
])
def test_parse_judge_answer_flags_a_criterion_with_only_text(text):
    crit, err = parse_judge_answer(text)
    assert crit is None and "correctness" in err


@pytest.mark.parametrize("text", ["no json here", "{{{{", '{"correctness": "good", "followability": 3, "standardization": 3}',
                                  '{"correctness": 4}', "[1, 2, 3]", None, ""])
def test_parse_judge_answer_flags_garbage(text):
    crit, err = parse_judge_answer(text)
    assert crit is None and isinstance(err, str) and err


def test_helpers():
    assert parse_json_object('x {"a": True, "b": None} y')[0] == {"a": True, "b": None}
    assert select_units(10, 3) == [0, 4, 9] or select_units(10, 3) == [0, 5, 9]
    assert select_units(2, 5) == [0, 1] and select_units(7, 1) == [6]
    j = aggregate([{"correctness": 5, "followability": 5, "standardization": 5}, None], [None, "boom"], 0.5)
    assert j.ok and j.n_failed == 1 and j.score == 5.0
    j = aggregate([{"correctness": 5, "followability": 5, "standardization": 5}, None], [None, "boom"], 1.0)
    assert not j.ok and "boom" in j.error and j.score is None
    with pytest.raises(TypeError, match="list of JudgeRequest"):
        GroundedJudge().score(_req(GOOD_ACTIONS, GOOD_OBS, True))


def test_request_from_external_plan_and_on_demand_episodes(tok):
    ep = AgentEpisode(Task("alfworld", "t1"), "adaplan", "every_step", plan_source=lambda e: list(PLAN[e.num_turns:]) or ["done"],
                      tokenizer=tok, max_turns=6)
    env = _Env()
    ep.start(TASK_TEXT)
    for a in GOOD_ACTIONS:
        turn = ep.add_policy_output(ep.chat.encode(_act(a)), None, _act(a))
        r = env.step(turn.env_action)
        ep.add_observation(r.observation, done=r.done, info=r.info)
    req = JudgeRequest.from_episode(ep)
    assert req.won and all(p.external for p in req.plans) and [p.turn for p in req.plans] == [0, 1, 2]
    assert req.plans[1].steps == PLAN[1:]
    od = _run(tok, [_plan(PLAN), _act(GOOD_ACTIONS[0]), _act("look"),
                    _plan(("take the pen from the desk", "put the pen on the shelf")) + _act(GOOD_ACTIONS[1])],
              replan="on_demand")
    req = JudgeRequest.from_episode(od)
    assert [p.turn for p in req.plans] == [0, 2] and req.plans[1].steps[0] == "take the pen from the desk"
    (j,) = GroundedJudge().score([req])
    assert j.ok and j.n_units == 2
    with pytest.raises(TypeError, match="AgentEpisode"):
        JudgeRequest.from_episode("not an episode")
