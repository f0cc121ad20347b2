"""Seeded ALFWorld task generator: writes game directories the real ALFWorld engine loads offline.

ALFWorld's package ships the engine (TextWorld's PDDL environment), the PDDL domain
(`alfred.pddl`) and the text grammar (`alfred.twl2`), but no games. A game directory, as
`alfworld-generate` / `AlfredTWEnv` expect it, holds:

- `initial_state.pddl`: the PDDL problem (objects, initial facts, goal) over the alfred domain;
- `traj_data.json`: `task_type` and `pddl_params` (read by the handcoded expert), `scene`, ...;
- `game.tw-pddl`: JSON with `pddl_domain`, `grammar` (the twl2 grammar with the goal text filled
  in), `pddl_problem`, `solvable` and `walkthrough` (what TextWorld's `PddlEnv` loads).

Rooms ("layouts") are sampled per split from room templates (kitchen, living room, bedroom,
bathroom) with numbered receptacles; each task places target objects and distractors in
receptacles that can hold them (ALFWorld's own affordance tables), some containers start open.
The held-out split uses layouts that never occur in train, so no (layout, goal) pair is shared.

Room templates and layouts: `alfworld_rooms`; the PDDL problem and goal text: `alfworld_pddl`.

CLI: `python -m pilotrl_jax.envs.alfworld_gen --out DIR --n-train 300 --n-heldout 100 --seed 0`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
from typing import Iterable, Sequence

from pilotrl_jax.envs.alfworld_pddl import engine_files, goal_text, problem_pddl, recep_id
from pilotrl_jax.envs.alfworld_rooms import (APPLIANCE, DOMAIN_OTYPES, NEVER_PARENT, OPENABLE, PLACEMENT, ROOM_SIZES,
                                             ROOMS, Layout, room_supports, sample_layout)
from pilotrl_jax.envs.base import Task

GENERATOR_VERSION = 1
SPLITS = ("train", "heldout", "rl")  # rl: an optional pool of RL tasks in rooms neither other split has
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
TASKS_PER_LAYOUT = 6  # average number of tasks sampled in one layout of a split
_PER_LAYOUT = {"few": 3}  # room sizes with fewer goals per layout (fewer object classes) use more layouts
MANIFEST = "manifest.json"


def _affordances():
    """ALFWorld's affordance tables (receptacle -> objects it can hold; action -> objects)."""
    from alfworld.gen import constants  # the engine's own tables

    can_contain = {r: frozenset(objs) for r, objs in constants.VAL_RECEPTACLE_OBJECTS.items()}
    actions = {k: frozenset(v) for k, v in constants.VAL_ACTION_OBJECTS.items()}
    return can_contain, actions


@dataclasses.dataclass
class _Placement:
    """Objects of one task: class -> list of receptacle instances, plus opened containers."""

    objects: list  # [(obj_class, (recep_class, idx)), ...]
    opened: list  # [(recep_class, idx), ...]


def _goal_for(rng, layout, task_type, used, can_contain, actions, rooms=ROOMS):
    """Sample an unused goal (task_type, obj, parent, toggle) valid in this layout, or None."""
    room = rooms[layout.room]
    present = layout.classes()
    placeable = [o for o in room.objects if any(o in can_contain.get(r, ()) for r in present)]
    prop = {"pick_clean_then_place_in_recep": "Cleanable", "pick_heat_then_place_in_recep": "Heatable",
            "pick_cool_then_place_in_recep": "Coolable"}.get(task_type)
    if prop:
        placeable = [o for o in placeable if o in actions[prop]]
    options = []
    for obj in placeable:
        if task_type == "look_at_obj_in_light":
            if layout.lamp_holder is not None:
                options.append((task_type, obj, "", "DeskLamp"))
            continue
        for parent in sorted(present):
            if parent in NEVER_PARENT or parent == APPLIANCE.get(task_type):
                continue
            if obj not in can_contain.get(parent, ()):
                continue
            # the target must have somewhere else to start
            starts = [r for r in present if r != parent and r != APPLIANCE.get(task_type)
                      and obj in can_contain.get(r, ())]
            if starts:
                options.append((task_type, obj, parent, ""))
    options = [g for g in options if g not in used]
    return rng.choice(options) if options else None


def _place(rng, layout, goal, can_contain, room_size="full") -> _Placement:
    """Place target instances and distractors in receptacles that can hold them."""
    task_type, obj, parent, _ = goal
    room = ROOM_SIZES[room_size][layout.room]
    (t_lo, t_hi), (d_lo, d_hi) = PLACEMENT[room_size]
    recs = layout.receptacles()
    avoid = {parent, APPLIANCE.get(task_type)}
    target_spots = [r for r in recs if r[0] not in avoid and obj in can_contain.get(r[0], ())]
    two = task_type == "pick_two_obj_and_place"
    n_target = rng.randint(max(t_lo, 2) if two else t_lo, max(t_hi, 2) if two else t_hi)
    objects = [(obj, rng.choice(target_spots)) for _ in range(n_target)]
    others = [o for o in room.objects if o != obj and any(o in can_contain.get(r[0], ()) for r in recs)]
    for dist in rng.sample(others, min(len(others), rng.randint(d_lo, d_hi))):
        spots = [r for r in recs if dist in can_contain.get(r[0], ())]
        for _ in range(rng.randint(1, 2)):
            objects.append((dist, rng.choice(spots)))
    opened = [r for r in recs if r[0] in OPENABLE and rng.random() < 0.15]
    return _Placement(objects, opened)


def _write_atomic(path: str, text: str) -> None:
    """Write a file via a temporary file + rename, skipping identical content."""
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _check_types(task_types) -> tuple:
    """Validate the task type filter."""
    if task_types is None:
        return TASK_TYPES
    if isinstance(task_types, str):
        task_types = [task_types]
    task_types = tuple(task_types)
    bad = [t for t in task_types if t not in TASK_TYPES]
    if bad or not task_types:
        raise ValueError(f"task_types has {bad or 'nothing'}; expected a non-empty subset of {list(TASK_TYPES)}")
    return tuple(t for t in TASK_TYPES if t in task_types)  # canonical order


def _split_layouts(rng, n_tasks, task_types, exclude: set, table=ROOMS, per_layout=TASKS_PER_LAYOUT,
                   n_layouts: int = 0) -> list[Layout]:
    """Sample the layouts of one split (disjoint from `exclude` signatures), covering each type;
    n_layouts > 0 fixes their number (else one layout per `per_layout` tasks)."""
    rooms = [r for r in table.values() if any(room_supports(r, t) for t in task_types)]
    n_layouts = max(len(task_types), int(n_layouts) or math.ceil(n_tasks / per_layout))
    # weight of a room: how much of the type mix it can host
    weights = {r.name: sum(1.0 / sum(room_supports(q, t) for q in rooms) for t in task_types
                           if room_supports(r, t)) for r in rooms}
    names = sorted(weights)
    plan = list(names) if n_layouts >= len(names) else []  # every usable room once
    for t in task_types:  # then make sure each type has a room that hosts it
        if not any(room_supports(r, t) for r in rooms):
            raise ValueError(f"task type {t!r} has no room template that can host it in this room size")
        if not any(room_supports(table[r], t) for r in plan):
            plan.append(rng.choice([r.name for r in rooms if room_supports(r, t)]))
    while len(plan) < n_layouts:
        plan.append(rng.choices(names, weights=[weights[n] for n in names])[0])
    layouts, seen = [], set(exclude)
    for room in plan:
        for _ in range(1000):
            lay = sample_layout(rng, table[room])
            if lay.signature not in seen:
                break
        else:
            raise RuntimeError(f"could not sample a new {room} layout; the room templates are too small for "
                               f"{n_layouts} layouts: ask for fewer tasks, or fit them in fewer layouts "
                               f"(train_layouts, config env.train_layouts)")
        seen.add(lay.signature)
        layouts.append(lay)
    return layouts


def _manifest_config(n_train, n_heldout, seed, task_types, room_size="full", n_rl=0, train_layouts=0) -> dict:
    """What identifies one generated data set on disk."""
    config = {"version": GENERATOR_VERSION, "seed": int(seed), "n_train": int(n_train),
              "n_heldout": int(n_heldout), "task_types": list(task_types)}
    if room_size != "full":  # full-size data sets keep the manifests they had before room sizes existed
        config["room_size"] = room_size
    if n_rl:  # likewise for data sets without an RL pool
        config["n_rl"] = int(n_rl)
    if train_layouts:  # and for train splits with the default number of layouts
        config["train_layouts"] = int(train_layouts)
    return config


def _tasks_from_manifest(out_dir, manifest) -> dict[str, list[Task]] | None:
    """Rebuild Task lists from a manifest when every game file is still there."""
    out: dict = {}
    for split in SPLITS:
        tasks = []
        for rec in manifest["tasks"].get(split, []):
            game = os.path.join(out_dir, rec["dir"], "game.tw-pddl")
            if not os.path.exists(game):
                return None
            tasks.append(_make_task(out_dir, split, rec))
        out[split] = tasks
    return out


def _make_task(out_dir, split, rec) -> Task:
    """One Task from a manifest record."""
    game_dir = os.path.join(os.path.abspath(out_dir), rec["dir"])
    payload = {"game_file": os.path.join(game_dir, "game.tw-pddl"), "game_dir": game_dir,
               "layout": rec["layout"], "room": rec["room"], "goal": rec["goal"],
               "pddl_params": dict(rec["pddl_params"])}
    return Task(env="alfworld", task_id=rec["task_id"], task_type=rec["task_type"], split=split,
                payload=payload)


def generate_tasks(out_dir: str, n_train: int, n_heldout: int, seed: int,
                   task_types: Sequence[str] | None = None, room_size: str = "full",
                   n_rl: int = 0, train_layouts: int = 0) -> dict[str, list[Task]]:
    """Write (or reuse) ALFWorld game directories under out_dir; returns {'train': [...], 'heldout': [...],
    'rl': [...]}. Every split's room layouts are disjoint from the others'. The `n_rl` RL tasks are
    generated last, so asking for them leaves the train and held-out tasks as they were.

    room_size: "full" (ALFWorld-like rooms, 6-40 receptacles) or "small" (3-8 receptacles, one
    target instance, fewer distractors: a curriculum for tiny models; see alfworld_rooms.SMALL_ROOMS)
    or "few" (small rooms with 6 object classes per room template; see alfworld_rooms.FEW_ROOMS).

    train_layouts: 0 spreads the train tasks over one room layout per few tasks (6; "few" rooms: 3);
    k > 0 puts them in exactly k layouts, so more train tasks (other goals and object placements in
    the same rooms) fit the room templates; once a layout's goals are used up, a goal recurs there with
    a new placement. The held-out and RL splits do not change with it while k is the number of layouts
    the default would give.
    """
    if room_size not in ROOM_SIZES:
        raise ValueError(f"room_size={room_size!r}; expected one of {sorted(ROOM_SIZES)}")
    for name, n in (("n_train", n_train), ("n_heldout", n_heldout), ("n_rl", n_rl), ("train_layouts", train_layouts)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{name}={n!r}; expected an integer >= 0")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r}; expected an integer")
    types = _check_types(task_types)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config = _manifest_config(n_train, n_heldout, seed, types, room_size, n_rl, train_layouts)
    man_path = os.path.join(out_dir, MANIFEST)
    old = None
    if os.path.exists(man_path):
        with open(man_path) as f:
            old = json.load(f)
        if old.get("config") == config:
            tasks = _tasks_from_manifest(out_dir, old)
            if tasks is not None:
                return tasks
        # a different data set lives here: remove the game directories it listed
        for split in SPLITS:
            for rec in old.get("tasks", {}).get(split, []):
                shutil.rmtree(os.path.join(out_dir, rec["dir"]), ignore_errors=True)

    can_contain, actions = _affordances()
    domain, grammar = engine_files()
    records: dict = {}
    taken: set = set()
    for split, n in (("train", n_train), ("heldout", n_heldout), ("rl", n_rl)):
        records[split] = _generate_split(out_dir, split, n, seed, types, taken, can_contain, actions,
                                         domain, grammar, room_size,
                                         n_layouts=train_layouts if split == "train" else 0)
    manifest = {"config": config, "tasks": records}
    _write_atomic(man_path, json.dumps(manifest, indent=1))
    return {split: [_make_task(out_dir, split, rec) for rec in records[split]] for split in SPLITS}


def _generate_split(out_dir, split, n, seed, types, taken, can_contain, actions, domain, grammar,
                    room_size="full", n_layouts: int = 0):
    """Generate one split's layouts and tasks, write their directories, return manifest records
    (n_layouts > 0: exactly that many layouts, goals recurring with new placements when used up)."""
    table = ROOM_SIZES[room_size]
    lay_rng = random.Random(f"alfworld-gen:{seed}:{split}:layouts")
    rng = random.Random(f"alfworld-gen:{seed}:{split}:tasks")
    per_layout = _PER_LAYOUT.get(room_size, TASKS_PER_LAYOUT)
    layouts = (_split_layouts(lay_rng, n, types, exclude=taken, table=table, per_layout=per_layout,
                              n_layouts=n_layouts) if n else [])
    taken.update(lay.signature for lay in layouts)
    used = {lay.layout_id: set() for lay in layouts}
    load = {lay.layout_id: 0 for lay in layouts}
    order = [types[i % len(types)] for i in range(n)]
    rng.shuffle(order)
    records = []
    for i, task_type in enumerate(order):
        cands = [lay for lay in layouts if room_supports(table[lay.room], task_type)]
        rng.shuffle(cands)
        cands.sort(key=lambda lay: load[lay.layout_id])
        goal = None
        for lay in cands:
            goal = _goal_for(rng, lay, task_type, used[lay.layout_id], can_contain, actions, table)
            if goal is not None:
                break
        else:
            for lay in cands if n_layouts else ():  # a fixed number of layouts: goals may recur
                goal = _goal_for(rng, lay, task_type, set(), can_contain, actions, table)
                if goal is not None:
                    break
        if goal is None:
            raise RuntimeError(f"split {split}: no unused {task_type} goal left in {len(cands)} layouts; "
                               f"ask for fewer tasks, more layouts ({per_layout} tasks per layout) or a "
                               f"fixed number of train layouts (train_layouts)")
        used[lay.layout_id].add(goal)
        load[lay.layout_id] += 1
        records.append(_write_game(out_dir, split, i, lay, goal, rng, can_contain, actions, domain, grammar,
                                   room_size))
    return records


def _write_game(out_dir, split, i, layout, goal, rng, can_contain, actions, domain, grammar,
                room_size="full") -> dict:
    """Place objects, write initial_state.pddl, traj_data.json and game.tw-pddl; return the record."""
    task_type, obj, parent, toggle = goal
    placement = _place(rng, layout, goal, can_contain, room_size)
    task_id = f"alfworld-{split}-{i:04d}"
    rel_dir = os.path.join(split, f"{i:04d}-{task_type}-{layout.layout_id}")
    game_dir = os.path.join(out_dir, rel_dir)
    os.makedirs(game_dir, exist_ok=True)
    problem, objects = problem_pddl(f"{split}_{i:04d}", layout, goal, placement, actions, can_contain)
    goal_desc = goal_text(rng, goal)
    pddl_params = {"object_target": obj, "parent_target": parent, "toggle_target": toggle,
                   "mrecep_target": "", "object_sliced": False}
    traj = {
        "task_id": task_id,
        "task_type": task_type,
        "pddl_params": pddl_params,
        "scene": {"floor_plan": layout.layout_id, "room": layout.room, "layout": json.loads(layout.signature),
                  "objects": objects, "opened": [recep_id(*r) for r in placement.opened]},
        "turk_annotations": {"anns": [{"task_desc": goal_desc[0].upper() + goal_desc[1:] + ".",
                                       "high_descs": [], "assignment_id": "generated", "votes": []}]},
        "generator": {"name": "pilotrl_jax.envs.alfworld_gen", "version": GENERATOR_VERSION},
    }
    game = {"pddl_domain": domain, "grammar": grammar.replace("UNKNOWN GOAL", goal_desc),
            "pddl_problem": problem, "solvable": True, "walkthrough": None}
    _write_atomic(os.path.join(game_dir, "initial_state.pddl"), problem)
    _write_atomic(os.path.join(game_dir, "traj_data.json"), json.dumps(traj, indent=1))
    _write_atomic(os.path.join(game_dir, "game.tw-pddl"), json.dumps(game))
    return {"task_id": task_id, "task_type": task_type, "dir": rel_dir, "layout": layout.layout_id,
            "room": layout.room, "goal": goal_desc, "goal_key": list(goal), "pddl_params": pddl_params}


def vocabulary() -> list[str]:
    """Every object and receptacle name the generator can write, as the engine shows them ("apple")."""
    names = {c for r in ROOMS.values() for c in r.receptacles} | {o for r in ROOMS.values() for o in r.objects}
    names |= {"DeskLamp"} | set(DOMAIN_OTYPES)
    return sorted(n.lower() for n in names)


def load_manifest(out_dir: str) -> dict:
    """Read the manifest written by generate_tasks (config + per-split task records)."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; run `python -m pilotrl_jax.envs.alfworld_gen --out {out_dir}` first")
    with open(path) as f:
        return json.load(f)


def main(argv: Iterable[str] | None = None) -> None:
    """CLI entry point: generate train/held-out ALFWorld games and print a summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-heldout", type=int, default=100)
    p.add_argument("--n-rl", type=int, default=0, help="RL tasks in rooms neither train nor held-out has")
    p.add_argument("--train-layouts", type=int, default=0, help="room layouts of the train split (0 = default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task-types", nargs="*", default=None, help=f"subset of {list(TASK_TYPES)}")
    p.add_argument("--room-size", default="full", choices=sorted(ROOM_SIZES), help="full, small or few (small rooms, 6 object classes each)")
    args = p.parse_args(list(argv) if argv is not None else None)
    tasks = generate_tasks(args.out, args.n_train, args.n_heldout, args.seed, args.task_types, args.room_size,
                           args.n_rl, args.train_layouts)
    for split, ts in tasks.items():
        if split == "rl" and not ts:
            continue
        by_type: dict = {}
        for t in ts:
            by_type[t.task_type] = by_type.get(t.task_type, 0) + 1
        layouts = {t.payload["layout"] for t in ts}
        print(f"{split}: {len(ts)} tasks over {len(layouts)} layouts; " +
              ", ".join(f"{k}={v}" for k, v in sorted(by_type.items())))
    print(f"games under {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
