"""TextWorldExpress through the TextEnv protocol: the real JVM, gold paths win, fold seeds."""
import pytest

from pilotrl_jax.envs.base import StepResult, Task, TextEnv

pytest.importorskip("textworld_express")

from pilotrl_jax.envs.twx_env import GAMES, TWXEnv, check_params, load_tasks  # noqa: E402


@pytest.fixture(scope="module")
def env():
    e = TWXEnv(step_limit=100)
    yield e
    e.close()


def test_load_tasks_folds_and_determinism(env):
    train = load_tasks("train", n=9, seed=0, params="small", env=env)
    held = load_tasks("heldout", n=9, seed=0, params="small", env=env)
    assert [t.task_type for t in train[:3]] == ["cookingworld", "twc", "coin"]
    assert all(t.payload["fold"] == "train" and 0 <= t.payload["seed"] < 1000 for t in train)
    assert all(t.payload["fold"] == "test" and t.split == "heldout" for t in held)
    assert not {t.payload["seed"] for t in train} & {t.payload["seed"] for t in held}
    assert load_tasks("train", n=9, seed=0, params="small", env=env) == train
    assert load_tasks("train", n=9, seed=1, params="small", env=env) != train
    assert len({t.task_id for t in train}) == 9
    with pytest.raises(ValueError, match="games"):
        load_tasks("train", n=1, games=["zork"], env=env)
    with pytest.raises(ValueError, match="split"):
        load_tasks("val", env=env)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_gold_path_wins_every_game(env, split):
    assert isinstance(env, TextEnv)
    engine = env._engine
    tasks = load_tasks(split, n=len(GAMES) * 2, seed=3, games=GAMES, params="small", env=env)
    assert {t.task_type for t in tasks} == set(GAMES)
    for task in tasks:
        obs, info = env.reset(task)
        assert env._engine is engine
        assert info["task_description"] in obs and info["admissible_actions"]
        gold = env.expert_actions()
        assert gold, task.task_id
        total = 0.0
        for i, a in enumerate(gold):
            res = env.step(a)
            assert isinstance(res, StepResult) and 0.0 <= res.info["score"] <= 1.0
            total += res.reward
            if res.done:
                break
            assert env.expert_actions() == gold[i + 1:]
        assert res.done and res.info["won"] and res.info["score"] == 1.0, task.task_id
        assert total == pytest.approx(1.0)
        assert env.expert_actions() == []
    assert env.timings["n_reset"] >= len(tasks) and env.timings["step_s"] > 0


def test_invalid_action_off_path_limits_and_errors():
    env = TWXEnv(step_limit=4)
    try:
        task = load_tasks("train", n=1, games=["cookingworld"], params="small", env=env)[0]
        obs, info = env.reset(task)
        res = env.step("juggle the stove")
        assert "Unknown action" in res.observation
        assert res.reward == 0.0 and not res.done and not res.info["won"]
        assert env.expert_actions() is None
        for _ in range(3):
            res = env.step("look around")
        assert res.done and not res.info["won"]  # step limit
        assert env.step("look around").observation == "The episode is over."
        # a reset of the same task is identical
        assert env.reset(task)[0] == obs and env.expert_actions()
        bad = Task("twx", "b", payload={"game": "coin", "seed": 20001, "fold": "train"})
        with pytest.raises(ValueError, match="not a train seed"):
            env.reset(bad)
        with pytest.raises(ValueError, match="game"):
            env.reset(Task("twx", "b", payload={"game": "zork", "seed": 1}))
        with pytest.raises(ValueError, match="env='twx'"):
            env.reset(Task("tiny", "b"))
    finally:
        env.close()
    with pytest.raises(ValueError, match="key=integer"):
        check_params("numLocations=three")
    assert check_params("numLocations=3, includeDoors=0") == "numLocations=3,includeDoors=0"
