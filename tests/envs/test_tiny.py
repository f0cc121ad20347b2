"""TinyEnv: deterministic tasks, splits, admissible actions, invalid actions, expert, score."""
import json

import pytest

from pilotrl_jax.envs.base import StepResult, Task, TextEnv
from pilotrl_jax.envs.tiny import INVALID, TinyEnv, goal_text, make_tasks


def test_tasks_are_deterministic_and_splits_disjoint():
    a = make_tasks("train", 40, seed=3)
    b = make_tasks("train", 40, seed=3)
    assert a == b
    assert make_tasks("train", 40, seed=4) != a
    held = make_tasks("heldout", 20, seed=3)
    assert len(a) == 40 and len(held) == 20
    assert all(t.split == "train" for t in a) and all(t.split == "heldout" for t in held)
    assert len({t.task_id for t in a + held}) == 60
    train_goals = {goal_text(t.payload["goal"]) for t in make_tasks("train", 300)}
    held_goals = {goal_text(t.payload["goal"]) for t in make_tasks("heldout", 80)}
    assert not train_goals & held_goals  # held-out goals are unseen in training
    assert {t.task_type for t in a} == {"put", "bring"}
    # the payload is plain data
    assert json.loads(json.dumps(a[0].payload)) == a[0].payload


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="split"):
        make_tasks("test", 3)
    env = TinyEnv()
    with pytest.raises(ValueError, match="env='tiny'"):
        env.reset(Task(env="scienceworld", task_id="x"))
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")
    with pytest.raises(ValueError, match="max_steps"):
        TinyEnv(max_steps=0)


def test_protocol_reset_invalid_and_admissible():
    env = TinyEnv()
    assert isinstance(env, TextEnv)
    task = make_tasks("train", 1)[0]
    obs, info = env.reset(task)
    assert "Your task is to: " + goal_text(task.payload["goal"]) in obs
    assert info["won"] is False and info["score"] == 0.0
    adm = info["admissible_actions"]
    assert "look" in adm and adm == sorted(adm)
    res = env.step("dance wildly")
    assert isinstance(res, StepResult)
    assert res.observation == INVALID and res.reward == 0.0 and not res.done
    # every admissible action is accepted (never "Nothing happens.")
    for a in adm:
        env.reset(task)
        assert env.step(a).observation != INVALID, a


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_expert_wins_every_task(split):
    env = TinyEnv()
    for task in make_tasks(split, 60, seed=1):
        env.reset(task)
        plan = env.expert_actions()
        assert plan, task.task_id
        total = 0.0
        for i, a in enumerate(plan):
            assert a in env.admissible_actions()
            res = env.step(a)
            total += res.reward
            assert res.done == (i == len(plan) - 1)
        assert res.info["won"] and res.info["score"] == 1.0 and total == pytest.approx(1.0)
        assert "You won!" in res.observation
        assert env.expert_actions() == []


def test_expert_replans_from_current_state_and_partial_score():
    env = TinyEnv()
    task = next(t for t in make_tasks("train", 50) if t.task_type == "put")
    env.reset(task)
    full = env.expert_actions()
    # wander off first, then ask again: the expert plans from where we are
    for a in env.admissible_actions():
        if a.startswith("go to "):
            env.step(a)
            break
    replanned = env.expert_actions()
    assert replanned is not None and len(replanned) <= len(full) + 1  # BFS: at most one step back
    item = task.payload["goal"]["item"]
    score_seen = []
    for a in replanned:
        res = env.step(a)
        score_seen.append(res.info["score"])
    assert res.info["won"]
    assert 0.5 in score_seen, f"taking the {item} should give partial score 0.5"
    assert score_seen == sorted(score_seen)  # score never decreases


def test_max_steps_ends_episode_without_win():
    env = TinyEnv(max_steps=3)
    env.reset(make_tasks("train", 1)[0])
    r = [env.step("look") for _ in range(3)]
    assert [x.done for x in r] == [False, False, True]
    assert not r[-1].info["won"]
    assert env.step("look").observation == "The episode is over."
