"""ALFWorld on its real engine: generated games, the TextEnv protocol, the planner expert, plan steps."""
import json
import os
import random

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from pilotrl_jax.envs.alfworld_env import AlfWorldEnv, expert_plan_steps  # noqa: E402
from pilotrl_jax.envs.alfworld_gen import TASK_TYPES, generate_tasks, load_manifest  # noqa: E402
from pilotrl_jax.envs.base import Task, TextEnv  # noqa: E402

N_TRAIN, N_HELDOUT = 36, 18


@pytest.fixture(scope="module")
def games(tmp_path_factory):
    """A small generated data set shared by the tests of this module."""
    out = tmp_path_factory.mktemp("alfworld_games")
    return out, generate_tasks(str(out), N_TRAIN, N_HELDOUT, seed=0)


@pytest.fixture(scope="module")
def env():
    """One engine reused across tests (like a rollout worker)."""
    e = AlfWorldEnv()
    yield e
    e.close()


def _records(out):
    """Manifest records without absolute paths."""
    return load_manifest(str(out))["tasks"]


def _sample(tasks, per_type, seed=0):
    """per_type tasks of each type, chosen reproducibly."""
    rng = random.Random(seed)
    out = []
    for tt in TASK_TYPES:
        of_type = [t for t in tasks if t.task_type == tt]
        out += rng.sample(of_type, min(per_type, len(of_type)))
    return out


# -- generator ------------------------------------------------------------------------------
def test_generator_is_deterministic_and_seed_dependent(games, tmp_path):
    out, tasks = games
    again = generate_tasks(str(tmp_path / "a"), N_TRAIN, N_HELDOUT, seed=0)
    assert _records(tmp_path / "a") == _records(out)
    t0, t1 = tasks["train"][5], again["train"][5]
    for name in ("initial_state.pddl", "traj_data.json", "game.tw-pddl"):
        with open(os.path.join(t0.payload["game_dir"], name)) as f0, open(os.path.join(t1.payload["game_dir"], name)) as f1:
            assert f0.read() == f1.read(), name
    other = generate_tasks(str(tmp_path / "b"), N_TRAIN, N_HELDOUT, seed=1)
    assert [t.payload["goal"] for t in other["train"]] != [t.payload["goal"] for t in tasks["train"]]


def test_generation_is_cached_and_idempotent(games):
    out, tasks = games
    game = tasks["train"][0].payload["game_file"]
    mtime = os.stat(game).st_mtime_ns
    again = generate_tasks(str(out), N_TRAIN, N_HELDOUT, seed=0)
    assert again == tasks
    assert os.stat(game).st_mtime_ns == mtime


def test_regenerating_with_other_config_replaces_old_games(tmp_path):
    first = generate_tasks(str(tmp_path), 12, 6, seed=0)
    second = generate_tasks(str(tmp_path), 8, 0, seed=3)
    assert len(second["train"]) == 8 and second["heldout"] == []
    stale = {t.payload["game_dir"] for ts in first.values() for t in ts} - {t.payload["game_dir"] for t in second["train"]}
    assert stale and not any(os.path.exists(d) for d in stale)


def test_an_rl_pool_adds_rooms_of_its_own_and_leaves_train_and_heldout_as_they_were(games, tmp_path):
    out, tasks = games
    with_rl = generate_tasks(str(tmp_path / "rl"), N_TRAIN, N_HELDOUT, seed=0, n_rl=6)
    assert len(with_rl["rl"]) == 6 and tasks["rl"] == []
    for split in ("train", "heldout"):  # same games as without the pool (only the directory differs)
        assert [(t.task_id, t.payload["layout"], t.payload["goal"]) for t in with_rl[split]] == \
            [(t.task_id, t.payload["layout"], t.payload["goal"]) for t in tasks[split]]

    def signatures(ts):
        out_ = set()
        for t in ts:
            with open(os.path.join(t.payload["game_dir"], "traj_data.json")) as f:
                out_.add(json.dumps(json.load(f)["scene"]["layout"]))
        return out_
    rl = signatures(with_rl["rl"])
    assert rl and not (rl & signatures(with_rl["train"])) and not (rl & signatures(with_rl["heldout"]))
    assert all(t.split == "rl" and os.path.exists(t.payload["game_file"]) for t in with_rl["rl"])
    assert generate_tasks(str(tmp_path / "rl"), N_TRAIN, N_HELDOUT, seed=0, n_rl=6) == with_rl  # cached
    with pytest.raises(ValueError, match="n_rl=-2"):
        generate_tasks(str(tmp_path / "x"), 4, 2, seed=0, n_rl=-2)


def test_heldout_shares_no_layout_or_layout_goal_pair_with_train(games):
    out, tasks = games
    recs = _records(out)
    train_layouts = {r["layout"] for r in recs["train"]}
    held_layouts = {r["layout"] for r in recs["heldout"]}
    assert held_layouts and not (train_layouts & held_layouts)
    pairs = lambda split: {(r["layout"], tuple(r["goal_key"])) for r in recs[split]}  # noqa: E731
    assert not (pairs("train") & pairs("heldout"))
    assert len(pairs("train")) == N_TRAIN  # no duplicate (layout, goal) inside a split either

    def signature(t):
        with open(os.path.join(t.payload["game_dir"], "traj_data.json")) as f:
            return json.dumps(json.load(f)["scene"]["layout"])
    assert not ({signature(t) for t in tasks["train"]} & {signature(t) for t in tasks["heldout"]})


def test_all_six_task_types_and_varied_layouts(games):
    _, tasks = games
    for split in ("train", "heldout"):
        assert {t.task_type for t in tasks[split]} == set(TASK_TYPES)
        assert all(t.env == "alfworld" and t.split == split for t in tasks[split])
    assert len({t.payload["room"] for t in tasks["train"]}) == 4
    assert len({t.payload["layout"] for t in tasks["train"]}) >= N_TRAIN // 6
    assert len({t.task_id for t in tasks["train"] + tasks["heldout"]}) == N_TRAIN + N_HELDOUT


def test_task_type_filter_and_bad_inputs(tmp_path):
    only = generate_tasks(str(tmp_path / "h"), 6, 2, seed=0, task_types=["pick_heat_then_place_in_recep"])
    assert {t.task_type for ts in only.values() for t in ts} == {"pick_heat_then_place_in_recep"}
    assert {t.payload["room"] for t in only["train"]} == {"kitchen"}
    with pytest.raises(ValueError, match="task_types"):
        generate_tasks(str(tmp_path / "x"), 4, 2, seed=0, task_types=["pick_and_fly"])
    with pytest.raises(ValueError, match="n_train"):
        generate_tasks(str(tmp_path / "x"), -1, 2, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_tasks(str(tmp_path / "x"), 1, 2, seed="0")


def test_game_directories_have_what_alfworld_loads(games):
    out, tasks = games
    task = next(t for t in tasks["train"] if t.task_type == "pick_clean_then_place_in_recep")
    d = task.payload["game_dir"]
    with open(os.path.join(d, "traj_data.json")) as f:
        traj = json.load(f)
    assert traj["task_type"] == task.task_type
    assert set(traj["pddl_params"]) >= {"object_target", "parent_target", "toggle_target", "mrecep_target", "object_sliced"}
    with open(os.path.join(d, "game.tw-pddl")) as f:
        game = json.load(f)
    assert game["solvable"] is True and "(define (domain alfred)" in game["pddl_domain"]
    assert f"Your task is to: {task.payload['goal']}." in game["grammar"] and "UNKNOWN GOAL" not in game["grammar"]
    with open(os.path.join(d, "initial_state.pddl")) as f:
        assert f.read() == game["pddl_problem"]
    # ALFWorld's own game collector accepts the directory tree
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    config = {"env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6]},
              "dataset": {"data_path": os.path.join(str(out), "train"), "num_train_games": -1}}
    found = AlfredTWEnv(config, train_eval="train").game_files
    assert sorted(os.path.abspath(p) for p in found) == sorted(t.payload["game_file"] for t in tasks["train"])


# -- environment -----------------------------------------------------------------------------
def test_env_implements_protocol_and_reset_shows_goal(games, env):
    _, tasks = games
    assert isinstance(env, TextEnv)
    task = tasks["heldout"][0]
    obs, info = env.reset(task)
    assert "You are in the middle of a room" in obs and f"Your task is to: {task.payload['goal']}." in obs
    assert "Welcome to TextWorld" not in obs
    assert info["won"] is False and info["score"] == 0.0
    assert any(a.startswith("go to ") for a in info["admissible_actions"])
    assert "look" in info["admissible_actions"]


def test_expert_solves_generated_tasks_of_every_type(games, env):
    _, tasks = games
    sample = _sample(tasks["train"], 3) + _sample(tasks["heldout"], 1, seed=1)
    assert {t.task_type for t in sample} == set(TASK_TYPES) and len(sample) >= 20
    for task in sample:
        env.reset(task)
        plan = env.expert_actions()
        assert plan, task.task_id
        _check_plan_steps(task, plan)
        for i, action in enumerate(plan):
            res = env.step(action)
            assert res.observation != "Nothing happens.", (task.task_id, action)
            last = i == len(plan) - 1
            assert res.info["won"] is last and res.done is last, (task.task_id, i, plan)
        assert res.reward == 1.0 and res.info["score"] == 1.0
        assert env.expert_actions() == []


_VERBS = {"pick_heat_then_place_in_recep": "Heat", "pick_cool_then_place_in_recep": "Cool",
          "pick_clean_then_place_in_recep": "Clean", "look_at_obj_in_light": "turn on"}


def _check_plan_steps(task, plan):
    """expert_plan_steps on a real expert plan: short, sentence-like, naming the task's actions."""
    steps = expert_plan_steps(plan)
    obj = task.payload["pddl_params"]["object_target"].lower()
    assert 2 <= len(steps) <= len(plan), (plan, steps)
    assert all(s[0].isupper() and s.endswith(".") and not s.lower().startswith("step") for s in steps)
    assert any(f"take the {obj}." in s for s in steps), steps
    if task.task_type in _VERBS:
        assert any(_VERBS[task.task_type] in s for s in steps), steps
    if task.task_type == "pick_two_obj_and_place":
        assert sum("take" in s for s in steps) == 2 and any("another" in s for s in steps), steps


def test_expert_replans_from_a_perturbed_state(games, env):
    _, tasks = games
    rng = random.Random(0)
    for task in _sample(tasks["heldout"], 1, seed=2):
        _, info = env.reset(task)
        # wander: go somewhere, pick up whatever is there (often a distractor), maybe open things
        for _ in range(4):
            acts = [a for a in info["admissible_actions"] if a.split()[0] in ("go", "take", "open")]
            info = env.step(rng.choice(acts)).info
        if info["won"]:
            continue
        plan = env.expert_actions()
        assert plan, task.task_id
        for action in plan:
            res = env.step(action)
        assert res.info["won"], (task.task_id, plan)


def test_expert_puts_down_an_unrelated_held_object(games, env):
    _, tasks = games
    kitchen = [t for t in tasks["train"] if t.payload["room"] == "kitchen"]  # the largest rooms
    task = next((t for t in kitchen if t.task_type == "pick_two_obj_and_place"), kitchen[0])
    _, info = env.reset(task)
    target = task.payload["pddl_params"]["object_target"].lower()
    held = None
    for go in [a for a in info["admissible_actions"] if a.startswith("go to ")]:
        res = env.step(go)
        if "is closed" in res.observation:
            res = env.step("open " + go[len("go to "):])
        takes = [a for a in res.info["admissible_actions"] if a.startswith("take ") and not a.startswith(f"take {target} ")]
        if takes:
            held = takes[0].split(" from ")[0][len("take "):]
            env.step(takes[0])
            break
    assert held is not None
    plan = env.expert_actions()
    assert any(a.startswith(f"move {held} to ") for a in plan), plan
    for action in plan:
        res = env.step(action)
    assert res.info["won"]


def test_invalid_actions_get_the_engine_answer(games, env):
    _, tasks = games
    env.reset(tasks["train"][0])
    for bad in ("fly to the moon", "take unicorn 1 from countertop 1", "", "go to nowhere 7", None):
        res = env.step(bad)
        assert res.observation == "Nothing happens."
        assert res.reward == 0.0 and res.done is False
        assert res.info["won"] is False and res.info["score"] == 0.0
    assert res.info["steps"] == 5


def test_command_normalization_and_put_alias(games, env):
    _, tasks = games
    task = next(t for t in tasks["train"] if t.task_type == "pick_and_place_simple")
    env.reset(task)
    plan = env.expert_actions()
    assert plan[-1].startswith("move ")
    for action in plan[:-1]:
        env.step("  " + action.upper() + ". ")
    obj, recep = plan[-1][len("move "):].split(" to ")
    res = env.step(f"put {obj} in/on {recep}")
    assert res.info["won"] and res.reward == 1.0 and res.done


def test_max_steps_truncates(games):
    _, tasks = games
    e = AlfWorldEnv(max_steps=2)
    try:
        e.reset(tasks["train"][1])
        assert e.step("look").done is False
        res = e.step("look")
        assert res.done and res.info["truncated"] and not res.info["won"]
    finally:
        e.close()


def test_reset_rejects_bad_tasks(env, tmp_path):
    with pytest.raises(ValueError, match="env='alfworld'"):
        env.reset(Task(env="scienceworld", task_id="x"))
    with pytest.raises(FileNotFoundError, match="alfworld_gen"):
        env.reset(Task(env="alfworld", task_id="x", payload={"game_file": str(tmp_path / "none.tw-pddl")}))
    with pytest.raises(ValueError, match="max_steps"):
        AlfWorldEnv(max_steps=0)
    with pytest.raises(RuntimeError, match="before reset"):
        AlfWorldEnv().step("look")


# -- plan steps --------------------------------------------------------------------------------
def test_expert_plan_steps_heat():
    steps = expert_plan_steps([
        "go to countertop 1", "take apple 1 from countertop 1", "go to microwave 1",
        "heat apple 1 with microwave 1", "go to fridge 1", "open fridge 1", "move apple 1 to fridge 1"])
    assert steps == ["Go to countertop 1 and take the apple.", "Heat the apple with microwave 1.",
                     "Open fridge 1 and put the apple in/on it."]


def test_expert_plan_steps_two_objects_light_and_open():
    steps = expert_plan_steps([
        "go to drawer 2", "open drawer 2", "take cd 3 from drawer 2", "go to safe 1", "open safe 1",
        "move cd 3 to safe 1", "go to shelf 1", "take cd 1 from shelf 1", "go to safe 1", "move cd 1 to safe 1"])
    assert steps == ["Go to drawer 2, open it, and take the cd.", "Open safe 1 and put the cd in/on it.",
                     "Go to shelf 1 and take another cd.", "Put the cd in/on safe 1."]
    light = expert_plan_steps(["go to bed 1", "take book 2 from bed 1", "go to sidetable 1", "use desklamp 1"])
    assert light == ["Go to bed 1 and take the book.", "Go to sidetable 1 and turn on the desklamp to look at the book."]
    assert all(not s.lower().startswith("step") for s in steps + light)
    with pytest.raises(ValueError, match="list of commands"):
        expert_plan_steps("go to bed 1")


# -- small rooms and the search expert ---------------------------------------------------------
_SMALL_TYPES = ["pick_and_place_simple", "look_at_obj_in_light"]


@pytest.fixture(scope="module")
def small_games(tmp_path_factory):
    """A small-room data set (the demo's curriculum)."""
    out = tmp_path_factory.mktemp("alfworld_small")
    return out, generate_tasks(str(out), 24, 12, seed=3, task_types=_SMALL_TYPES, room_size="small")


def test_small_rooms_are_small_and_still_split_by_layout(small_games, games, tmp_path):
    out, tasks = small_games
    man = load_manifest(str(out))
    assert man["config"]["room_size"] == "small"
    assert "room_size" not in load_manifest(str(games[0]))["config"]  # full-size manifests unchanged
    for split in ("train", "heldout"):
        for t in tasks[split]:
            with open(os.path.join(t.payload["game_dir"], "traj_data.json")) as f:
                traj = json.load(f)
            n_recep = sum(n for _, n in traj["scene"]["layout"][1])
            assert 3 <= n_recep <= 9, (t.task_id, traj["scene"]["layout"])
            obj = t.payload["pddl_params"]["object_target"]
            assert sum(c == obj for c in traj["scene"]["objects"].values()) == 1, t.task_id
    train_layouts = {t.payload["layout"] for t in tasks["train"]}
    assert not train_layouts & {t.payload["layout"] for t in tasks["heldout"]}
    with pytest.raises(ValueError, match="room_size"):
        generate_tasks(str(tmp_path / "x"), 2, 2, seed=0, room_size="huge")


def test_few_rooms_draw_goals_from_six_object_classes_per_room_and_the_expert_solves_them(tmp_path):
    from pilotrl_jax.envs.alfworld_rooms import FEW_ROOMS, SMALL_ROOMS

    tasks = generate_tasks(str(tmp_path), 40, 16, seed=5, task_types=_SMALL_TYPES, room_size="few")
    assert load_manifest(str(tmp_path))["config"]["room_size"] == "few"
    assert {r: FEW_ROOMS[r].receptacles for r in FEW_ROOMS} == {r: SMALL_ROOMS[r].receptacles for r in SMALL_ROOMS}
    allowed = {o for r in FEW_ROOMS.values() for o in r.objects}
    assert len(allowed) == 21 and all(len(r.objects) == 6 for r in FEW_ROOMS.values())
    seen = set()
    for split in ("train", "heldout"):
        for t in tasks[split]:
            with open(os.path.join(t.payload["game_dir"], "traj_data.json")) as f:
                traj = json.load(f)
            assert set(traj["scene"]["objects"].values()) <= allowed | {"DeskLamp"}, t.task_id
            seen.add(t.payload["pddl_params"]["object_target"])
    assert len(seen) >= 10  # goals spread over the classes
    held = {t.payload["layout"] for t in tasks["heldout"]}
    assert len(held) >= 16 // 3 and not held & {t.payload["layout"] for t in tasks["train"]}
    env = AlfWorldEnv(expert="search")
    try:
        for t in tasks["heldout"][:6]:
            env.reset(t)
            served = []  # (step of the plan the expert says it carries out, command)
            for _ in range(30):
                acts = env.expert_actions()
                served.append((acts.step, acts[0]))
                if env.step(acts[0]).info["won"]:
                    break
            else:
                raise AssertionError((t.task_id, served))
            steps = [k for k, _ in served]
            assert steps == sorted(steps) and steps[0] == 0, served  # the plan is carried out in order
            assert all(k == 1 for k, c in served if c.startswith("take ")), served
            last = 3 if t.task_type == "look_at_obj_in_light" else 2
            assert steps[-1] == last and len(set(steps)) >= 3, served
    finally:
        env.close()


def test_fixed_train_layouts_fit_more_tasks_and_leave_heldout_as_it_was(tmp_path):
    """train_layouts=k: four times the train tasks in the default's k rooms; goals recur there with new
    object placements, and the held-out split (rooms, goals, placements) is byte for byte the same."""
    kw = dict(seed=5, task_types=_SMALL_TYPES, room_size="few")
    base = generate_tasks(str(tmp_path / "base"), 12, 6, **kw)
    k = len({t.payload["layout"] for t in base["train"]})
    with pytest.raises(RuntimeError, match="train_layouts"):  # the default runs out of rooms
        generate_tasks(str(tmp_path / "many"), 3000, 6, **kw)
    more = generate_tasks(str(tmp_path / "more"), 48, 6, train_layouts=k, **kw)
    man = load_manifest(str(tmp_path / "more"))
    assert man["config"]["train_layouts"] == k and "train_layouts" not in load_manifest(str(tmp_path / "base"))["config"]
    assert len(more["train"]) == 48
    assert {t.payload["layout"] for t in more["train"]} == {t.payload["layout"] for t in base["train"]}
    assert man["tasks"]["heldout"] == load_manifest(str(tmp_path / "base"))["tasks"]["heldout"]
    for a, b in zip(base["heldout"], more["heldout"]):
        for name in ("initial_state.pddl", "traj_data.json"):
            with open(os.path.join(a.payload["game_dir"], name)) as fa, open(os.path.join(b.payload["game_dir"], name)) as fb:
                assert fa.read() == fb.read(), (a.task_id, name)
    by_goal: dict = {}
    for t in more["train"]:
        with open(os.path.join(t.payload["game_dir"], "initial_state.pddl")) as f:
            by_goal.setdefault((t.payload["layout"], json.dumps(t.payload["pddl_params"], sort_keys=True)), []).append(f.read())
    recurring = [p for p in by_goal.values() if len(p) > 1]
    assert recurring and all(len(set(p)) == len(p) for p in recurring)  # same goal, another placement
    with pytest.raises(ValueError, match="train_layouts"):
        generate_tasks(str(tmp_path / "bad"), 4, 2, train_layouts=-1, **kw)


def _run_expert(env, task, max_steps=40):
    """Follow the expert's first command until done; returns (won, commands, first expert answer)."""
    env.reset(task)
    first = env.expert_actions()
    done, cmds = False, []
    for _ in range(max_steps):
        plan = env.expert_actions()
        if not plan:
            break
        cmds.append(plan[0])
        done = env.step(plan[0]).info["won"]
        if done:
            break
    return done, cmds, first


def test_search_expert_solves_unseen_rooms_by_looking(small_games):
    _, tasks = small_games
    env = AlfWorldEnv(expert="search")
    searched = 0
    try:
        for task in tasks["train"][:12] + tasks["heldout"]:
            won, cmds, first = _run_expert(env, task)
            assert won, (task.task_id, cmds)
            steps = first.plan_steps
            obj = task.payload["pddl_params"]["object_target"].lower()
            assert steps[0].startswith(f"Find the {obj}: check ") and steps[1] == f"Take the {obj}.", steps
            # the expert knows only what it saw: it goes to candidates in the listed order and
            # takes the object where it is; sometimes the first places it checks are empty
            visits = [c[len("go to "):] for c in cmds if c.startswith("go to ")]
            take = next(i for i, c in enumerate(cmds) if c.startswith("take "))
            searched += sum(c.startswith("go to ") for c in cmds[:take]) > 1
            assert visits[0] in steps[0], (steps, cmds)
    finally:
        env.close()
    assert searched >= 3  # the planner expert never visits an empty place before taking


def test_search_expert_in_full_rooms_and_its_plan_feeds_the_writers(games):
    from pilotrl_jax.envs.base import ExpertActions
    from pilotrl_jax.rollout.policies import expert_plan_from_actions
    import pickle

    _, tasks = games
    env = AlfWorldEnv(expert="search")
    try:
        for task in [t for t in tasks["heldout"] if t.task_type in _SMALL_TYPES][:4]:
            won, cmds, first = _run_expert(env, task, max_steps=80)
            assert won, (task.task_id, cmds)
            assert isinstance(first, ExpertActions)
            assert expert_plan_from_actions("alfworld", first) == first.plan_steps
            again = pickle.loads(pickle.dumps(first))
            assert again == first and again.plan_steps == first.plan_steps and again.step == first.step == 0
    finally:
        env.close()
    with pytest.raises(ValueError, match="expert"):
        AlfWorldEnv(expert="oracle")


def test_progress_score_credits_taking_the_goal_object(small_games):
    _, tasks = small_games
    env, plain = AlfWorldEnv(expert="search", score="progress"), AlfWorldEnv(expert="search")
    try:
        for task in tasks["heldout"][:4]:
            obj = task.payload["pddl_params"]["object_target"].lower()
            env.reset(task)
            plain.reset(task)
            scores, plain_scores, took = [], [], None
            for _ in range(30):
                cmd = env.expert_actions()[0]
                res, res_plain = env.step(cmd), plain.step(cmd)
                scores.append(res.info["score"])
                plain_scores.append(res_plain.info["score"])
                if cmd.startswith(f"take {obj} ") and took is None:
                    took = len(scores) - 1
                if res.info["won"]:
                    break
            assert took is not None and res.info["won"], (task.task_id, scores)
            assert scores[:took] == [0.0] * took and set(scores[took:-1]) <= {0.5} and scores[-1] == 1.0, scores
            assert plain_scores == [0.0] * (len(scores) - 1) + [1.0]  # the default score is won/lost
            env.reset(task)
            assert env.step(f"take {obj} 1 from nowhere 1").info["score"] == 0.0  # rejected: no credit
    finally:
        env.close()
        plain.close()
    with pytest.raises(ValueError, match="env.kwargs.score"):
        AlfWorldEnv(score="partial")


_TRANSCRIPT = r'''
import json, random, sys
from pilotrl_jax.envs.alfworld_env import AlfWorldEnv
from pilotrl_jax.envs.alfworld_gen import generate_tasks
speedups = sys.argv[2] == "1"
env = AlfWorldEnv(speedups=speedups)
out = []
for i, task in enumerate(generate_tasks(sys.argv[1], int(sys.argv[3]), int(sys.argv[4]), seed=0)["heldout"][:6]):
    rng = random.Random(i)
    obs, info = env.reset(task)
    lines = [obs, sorted(info["admissible_actions"])]
    for t in range(8):  # some admissible (valid) commands, some the engine rejects, then the expert
        cmd = rng.choice(info["admissible_actions"]) if t % 3 else "take the moon from the sky"
        res = env.step(cmd)
        info = res.info
        lines += [cmd, res.observation, sorted(info["admissible_actions"]), info["score"]]
    for cmd in env.expert_actions() or []:
        res = env.step(cmd)
        lines += [cmd, res.observation, res.info["won"]]
    out.append(lines)
import textworld.envs.pddl.textgen as tg
print(json.dumps({"patched": tg.query.__module__ != tg.__name__, "episodes": out}))
'''


def test_engine_speedups_leave_every_observation_unchanged(games):
    """Episodes (valid, rejected and expert commands) read the same with and without the speedups."""
    import subprocess
    import sys

    out, _ = games
    runs = {}
    for flag in ("0", "1"):
        p = subprocess.run([sys.executable, "-c", _TRANSCRIPT, str(out), flag, str(N_TRAIN), str(N_HELDOUT)], capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        runs[flag] = json.loads(p.stdout.strip().splitlines()[-1])
    assert runs["1"]["patched"] and not runs["0"]["patched"]
    assert runs["1"]["episodes"] == runs["0"]["episodes"]
    assert sum(len(e) for e in runs["1"]["episodes"]) > 6 * 30


def _deleted_lib_copies():
    """Distinct deleted fast-downward library copies this process still maps (each holds 33 MB of disk)."""
    with open("/proc/self/maps") as f:
        return len({line.split()[-2] for line in f if "libdownward.so (deleted)" in line})


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc (Linux)")
def test_envs_reuse_engines_so_library_copies_do_not_pile_up(games):
    """Rollouts open and close an env per episode; the engine (and its library copy) is reused, so
    rounds of episodes after the first add no engine and no leaked library copy."""
    from pilotrl_jax.envs import alfworld_env as A

    _, tasks = games
    sample = tasks["train"][:4]

    def one_round():
        envs = [AlfWorldEnv() for _ in sample]
        for e, t in zip(envs, sample):  # all open at once, like a rollout's rows
            e.reset(t)
            plan = e.expert_actions()
            assert plan
            e.step(plan[0])
        for e in envs:
            e.close()

    one_round()
    built, copies = dict(A.POOL_STATS), _deleted_lib_copies()
    for _ in range(3):
        one_round()
    assert A.POOL_STATS == built
    assert _deleted_lib_copies() == copies
