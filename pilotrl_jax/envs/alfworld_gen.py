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

CLI: `python -m pilotrl_jax.envs.alfworld_gen --out DIR --n-train 300 --n-heldout 100 --seed 0`.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from typing import Iterable, Sequence

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

# Goal templates as in ALFWorld's goal library (alfworld/gen/goal_library.py).
_GOAL_TEMPLATES = {
    "pick_and_place_simple": ("put a {obj} in {recep}", "put some {obj} on {recep}"),
    "look_at_obj_in_light": ("look at {obj} under the {toggle}", "examine the {obj} with the {toggle}"),
    "pick_clean_then_place_in_recep": ("put a clean {obj} in {recep}", "clean some {obj} and put it in {recep}"),
    "pick_heat_then_place_in_recep": ("put a hot {obj} in {recep}", "heat some {obj} and put it in {recep}"),
    "pick_cool_then_place_in_recep": ("put a cool {obj} in {recep}", "cool some {obj} and put it in {recep}"),
    "pick_two_obj_and_place": ("put two {obj} in {recep}", "find two {obj} and put them in {recep}"),
}

# Goals in PDDL ('-' typing); the same conditions as ALFWorld's goal library.
_GOAL_PDDL = {
    "pick_and_place_simple": """(:goal (and (exists (?r - receptacle) (exists (?o - object) (and
        (inReceptacle ?o ?r) (objectType ?o {obj}Type) (receptacleType ?r {recep}Type))))))""",
    "pick_clean_then_place_in_recep": """(:goal (and (exists (?r - receptacle) (exists (?o - object) (and
        (cleanable ?o) (objectType ?o {obj}Type) (receptacleType ?r {recep}Type) (isClean ?o)
        (inReceptacle ?o ?r))))))""",
    "pick_heat_then_place_in_recep": """(:goal (and (exists (?r - receptacle) (exists (?o - object) (and
        (heatable ?o) (objectType ?o {obj}Type) (receptacleType ?r {recep}Type) (isHot ?o)
        (inReceptacle ?o ?r))))))""",
    "pick_cool_then_place_in_recep": """(:goal (and (exists (?r - receptacle) (exists (?o - object) (and
        (coolable ?o) (objectType ?o {obj}Type) (receptacleType ?r {recep}Type) (isCool ?o)
        (inReceptacle ?o ?r))))))""",
    "pick_two_obj_and_place": """(:goal (and (exists (?r - receptacle) (exists (?o1 - object) (and
        (objectType ?o1 {obj}Type) (receptacleType ?r {recep}Type) (inReceptacle ?o1 ?r)
        (exists (?o2 - object) (and (not (= ?o1 ?o2)) (objectType ?o2 {obj}Type)
            (receptacleType ?r {recep}Type) (inReceptacle ?o2 ?r))))))))""",
    "look_at_obj_in_light": """(:goal (and
        (exists (?ot - object ?r - receptacle ?a - agent ?l - location) (and
            (objectType ?ot {toggle}Type) (toggleable ?ot) (isToggled ?ot)
            (receptacleAtLocation ?r ?l) (atLocation ?a ?l) (inReceptacle ?ot ?r)))
        (exists (?o - object ?a - agent) (and (objectType ?o {obj}Type) (holds ?a ?o)))))""",
}


@dataclasses.dataclass(frozen=True)
class RoomSpec:
    """A room template: receptacle classes with (min, max) counts, the objects that may appear."""

    name: str
    receptacles: dict  # class -> (min, max)
    objects: tuple
    lamp_holders: tuple = ()  # receptacle classes a desk lamp can stand on (rooms with a lamp)


ROOMS = {
    "kitchen": RoomSpec(
        "kitchen",
        {"Cabinet": (3, 12), "CounterTop": (1, 3), "Drawer": (1, 8), "Fridge": (1, 1),
         "Microwave": (1, 1), "SinkBasin": (1, 2), "StoveBurner": (2, 4), "DiningTable": (0, 2),
         "GarbageCan": (1, 1), "CoffeeMachine": (1, 1), "Toaster": (0, 1), "Shelf": (0, 3),
         "SideTable": (0, 1)},
        ("Apple", "Bowl", "Bread", "ButterKnife", "Cup", "DishSponge", "Egg", "Fork", "Kettle",
         "Knife", "Ladle", "Lettuce", "Mug", "Pan", "PepperShaker", "Plate", "Pot", "Potato",
         "SaltShaker", "SoapBottle", "Spatula", "Spoon", "Tomato", "WineBottle", "Glassbottle"),
    ),
    "livingroom": RoomSpec(
        "livingroom",
        {"Sofa": (1, 1), "ArmChair": (0, 2), "CoffeeTable": (1, 2), "SideTable": (1, 3),
         "TVStand": (0, 1), "Drawer": (0, 4), "Cabinet": (0, 4), "Shelf": (0, 6),
         "Dresser": (0, 1), "GarbageCan": (1, 1), "DiningTable": (0, 1), "Ottoman": (0, 1)},
        ("Book", "Box", "CellPhone", "CreditCard", "KeyChain", "Laptop", "Newspaper", "Pillow",
         "RemoteControl", "Statue", "Vase", "Watch", "TissueBox", "Pen", "Pencil", "Plate",
         "Candle", "WateringCan"),
        lamp_holders=("SideTable", "Dresser"),
    ),
    "bedroom": RoomSpec(
        "bedroom",
        {"Bed": (1, 1), "Desk": (0, 1), "SideTable": (1, 2), "Dresser": (0, 1), "Drawer": (2, 8),
         "Shelf": (0, 6), "GarbageCan": (1, 1), "Safe": (0, 1), "LaundryHamper": (0, 1),
         "ArmChair": (0, 1)},
        ("AlarmClock", "BaseballBat", "BasketBall", "Book", "CD", "CellPhone", "CreditCard",
         "KeyChain", "Laptop", "Pen", "Pencil", "Pillow", "Mug", "Bowl", "Cloth", "TennisRacket",
         "Watch", "Vase", "Statue"),
        lamp_holders=("Desk", "SideTable", "Dresser"),
    ),
    "bathroom": RoomSpec(
        "bathroom",
        {"Toilet": (1, 1), "SinkBasin": (1, 2), "BathtubBasin": (0, 1), "Cabinet": (1, 4),
         "CounterTop": (1, 1), "Drawer": (0, 4), "GarbageCan": (1, 1), "HandTowelHolder": (0, 2),
         "TowelHolder": (0, 1), "ToiletPaperHanger": (1, 1), "Shelf": (0, 2), "Cart": (0, 1)},
        ("Candle", "Cloth", "DishSponge", "HandTowel", "Plunger", "SoapBar", "SoapBottle",
         "SprayBottle", "TissueBox", "ToiletPaper", "Towel", "ScrubBrush"),
    ),
}

# "small" rooms (generate_tasks(room_size="small")): the same four templates with fewer receptacle
# classes and at most one or two of each (3-8 receptacles instead of 6-40), one target instance and
# fewer distractors. A curriculum for tiny models on CPU; the engine, affordances and goals are the same.
SMALL_ROOMS = {
    "kitchen": RoomSpec(
        "kitchen",
        {"Cabinet": (1, 2), "CounterTop": (1, 1), "Fridge": (1, 1), "Drawer": (0, 1), "DiningTable": (0, 1),
         "Microwave": (1, 1), "SinkBasin": (0, 1), "GarbageCan": (0, 1)},
        ROOMS["kitchen"].objects,
    ),
    "livingroom": RoomSpec(
        "livingroom",
        {"Sofa": (1, 1), "CoffeeTable": (1, 1), "SideTable": (1, 1), "Drawer": (0, 1), "Shelf": (0, 2),
         "ArmChair": (0, 1), "Cabinet": (0, 1), "GarbageCan": (0, 1)},
        ROOMS["livingroom"].objects, lamp_holders=("SideTable",),
    ),
    "bedroom": RoomSpec(
        "bedroom",
        {"Bed": (1, 1), "SideTable": (1, 1), "Drawer": (1, 2), "Desk": (0, 1), "Dresser": (0, 1),
         "Shelf": (0, 1), "GarbageCan": (0, 1)},
        ROOMS["bedroom"].objects, lamp_holders=("Desk", "SideTable", "Dresser"),
    ),
    "bathroom": RoomSpec(
        "bathroom",
        {"Toilet": (1, 1), "SinkBasin": (1, 1), "Cabinet": (1, 2), "CounterTop": (0, 1), "Drawer": (0, 1),
         "GarbageCan": (0, 1), "TowelHolder": (0, 1)},
        ROOMS["bathroom"].objects,
    ),
}
# "few" (generate_tasks(room_size="few")): small rooms with six object classes per room template
# (21 in all), each placeable on most receptacles of its room. Every object class is then the goal of
# many training tasks, so a model trained from scratch in minutes meets each name often enough to
# learn to read it from the goal; the others are the distractors in the same room.
_FEW_OBJECTS = {
    "kitchen": ("Apple", "Mug", "Potato", "Bowl", "Tomato", "Cup"),
    "livingroom": ("Book", "Vase", "CellPhone", "RemoteControl", "KeyChain", "Statue"),
    "bedroom": ("AlarmClock", "Book", "Pen", "CD", "CellPhone", "KeyChain"),
    "bathroom": ("SoapBar", "Candle", "ToiletPaper", "SprayBottle", "SoapBottle", "Cloth"),
}
FEW_ROOMS = {name: dataclasses.replace(room, objects=_FEW_OBJECTS[name]) for name, room in SMALL_ROOMS.items()}
ROOM_SIZES = {"full": ROOMS, "small": SMALL_ROOMS, "few": FEW_ROOMS}
# per room size: (min, max) target instances (pick_two: at least 2), (min, max) distractor classes
_PLACEMENT = {"full": ((1, 3), (3, 10)), "small": ((1, 1), (2, 5)), "few": ((1, 1), (2, 3))}

OPENABLE = frozenset({"Fridge", "Cabinet", "Microwave", "Drawer", "Safe", "Box"})
MOVABLE_RECEPTACLES = frozenset({"Bowl", "Box", "Cup", "Mug", "Plate", "Pan", "Pot"})
# Receptacle types and object types the alfred domain names in its actions (must be declared).
_DOMAIN_RTYPES = ("SinkBasin", "Microwave", "Fridge")
_DOMAIN_OTYPES = ("Knife", "ButterKnife")
# The processing appliance of each state-change task; it is not a goal receptacle for that task
# and targets do not start in it (a target in the fridge would count as cool in ALFRED).
_APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
_NEVER_PARENT = frozenset({"Toaster"})


def _affordances():
    """ALFWorld's affordance tables (receptacle -> objects it can hold; action -> objects)."""
    from alfworld.gen import constants  # the engine's own tables

    can_contain = {r: frozenset(objs) for r, objs in constants.VAL_RECEPTACLE_OBJECTS.items()}
    actions = {k: frozenset(v) for k, v in constants.VAL_ACTION_OBJECTS.items()}
    return can_contain, actions


def _room_supports(room: RoomSpec, task_type: str) -> bool:
    """Whether a room template can host a task type (appliance / lamp present in every layout)."""
    always = {r for r, (lo, _) in room.receptacles.items() if lo >= 1}
    if task_type == "look_at_obj_in_light":
        return bool(room.lamp_holders)
    if task_type in _APPLIANCE:
        return _APPLIANCE[task_type] in always
    return True


@dataclasses.dataclass(frozen=True)
class Layout:
    """A room instance: receptacle classes with counts, and where the desk lamp stands."""

    room: str
    counts: tuple  # ((class, n), ...) sorted by class, n >= 1
    lamp_holder: tuple | None  # (class, index) or None

    @property
    def signature(self) -> str:
        """Canonical text of the layout (two layouts are the same iff signatures are equal)."""
        return json.dumps([self.room, list(map(list, self.counts)), self.lamp_holder])

    @property
    def layout_id(self) -> str:
        """Short stable id: room name plus a hash of the signature."""
        return f"{self.room}-{hashlib.sha1(self.signature.encode()).hexdigest()[:8]}"

    def receptacles(self) -> list[tuple[str, int]]:
        """All receptacle instances as (class, index) with index starting at 1."""
        return [(c, i) for c, n in self.counts for i in range(1, n + 1)]

    def classes(self) -> set[str]:
        """Receptacle classes present."""
        return {c for c, _ in self.counts}


def _sample_layout(rng: random.Random, room: RoomSpec) -> Layout:
    """Draw receptacle counts for a room template (and a lamp position where the room has one)."""
    counts = {}
    for cls, (lo, hi) in sorted(room.receptacles.items()):
        n = rng.randint(lo, hi)
        if n:
            counts[cls] = n
    lamp = None
    if room.lamp_holders:
        holders = [c for c in room.lamp_holders if c in counts]
        if not holders:
            cls = room.lamp_holders[0]
            counts[cls] = 1
            holders = [cls]
        cls = rng.choice(holders)
        lamp = (cls, rng.randint(1, counts[cls]))
    return Layout(room.name, tuple(sorted(counts.items())), lamp)


@dataclasses.dataclass
class _Placement:
    """Objects of one task: class -> list of receptacle instances, plus opened containers."""

    objects: list  # [(obj_class, (recep_class, idx)), ...]
    opened: list  # [(recep_class, idx), ...]


def _recep_id(cls: str, idx: int) -> str:
    """PDDL id of a receptacle; sinks/bathtubs use ALFRED's 'Sink|..|SinkBasin' shape."""
    if cls == "SinkBasin":
        return f"Sink_bar_{idx:02d}_bar_SinkBasin"
    if cls == "BathtubBasin":
        return f"Bathtub_bar_{idx:02d}_bar_BathtubBasin"
    return f"{cls}_bar_{idx:02d}"


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
            if parent in _NEVER_PARENT or parent == _APPLIANCE.get(task_type):
                continue
            if obj not in can_contain.get(parent, ()):
                continue
            # the target must have somewhere else to start
            starts = [r for r in present if r != parent and r != _APPLIANCE.get(task_type)
                      and obj in can_contain.get(r, ())]
            if starts:
                options.append((task_type, obj, parent, ""))
    options = [g for g in options if g not in used]
    return rng.choice(options) if options else None


def _place(rng, layout, goal, can_contain, room_size="full") -> _Placement:
    """Place target instances and distractors in receptacles that can hold them."""
    task_type, obj, parent, _ = goal
    room = ROOM_SIZES[room_size][layout.room]
    (t_lo, t_hi), (d_lo, d_hi) = _PLACEMENT[room_size]
    recs = layout.receptacles()
    avoid = {parent, _APPLIANCE.get(task_type)}
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


def _problem_pddl(name, layout, goal, placement, actions, can_contain) -> tuple[str, dict]:
    """Write the PDDL problem; returns (text, {obj_id: class}) for the record."""
    task_type, obj, parent, toggle = goal
    recs = layout.receptacles()
    rec_ids = {r: _recep_id(*r) for r in recs}
    loc_of = {r: f"loc_bar_{k + 1:02d}" for k, r in enumerate(recs)}
    counters: dict = {}
    obj_items = []  # (id, class, recep)
    for cls, rec in placement.objects:
        counters[cls] = counters.get(cls, 0) + 1
        obj_items.append((f"{cls}_bar_{counters[cls]:02d}", cls, rec))
    if layout.lamp_holder is not None:
        obj_items.append(("DeskLamp_bar_01", "DeskLamp", tuple(layout.lamp_holder)))
    otypes = sorted({c for _, c, _ in obj_items} | set(_DOMAIN_OTYPES) | ({obj} if obj else set()))
    rtypes = sorted({c for c, _ in recs} | set(_DOMAIN_RTYPES))

    lines = [f"(define (problem {name})", "(:domain alfred)", "(:objects", "    agent1 - agent"]
    lines += [f"    {t}Type - otype" for t in otypes]
    lines += [f"    {t}Type - rtype" for t in rtypes]
    lines += [f"    {oid} - object" for oid, _, _ in obj_items]
    lines += [f"    {rec_ids[r]} - receptacle" for r in recs]
    lines += [f"    {loc_of[r]} - location" for r in recs]
    lines += ["    loc_bar_00 - location", ")", "(:init", "    (atLocation agent1 loc_bar_00)"]
    for r in recs:
        lines.append(f"    (receptacleType {rec_ids[r]} {r[0]}Type)")
        lines.append(f"    (receptacleAtLocation {rec_ids[r]} {loc_of[r]})")
        if r[0] in OPENABLE:
            lines.append(f"    (openable {rec_ids[r]})")
    for r in placement.opened:
        lines.append(f"    (opened {rec_ids[r]})")
    for oid, cls, rec in obj_items:
        lines.append(f"    (objectType {oid} {cls}Type)")
        lines.append(f"    (inReceptacle {oid} {rec_ids[rec]})")
        lines.append(f"    (objectAtLocation {oid} {loc_of[rec]})")
        if cls in ("DeskLamp", "FloorLamp"):
            lines.append(f"    (toggleable {oid})")
            continue
        lines.append(f"    (pickupable {oid})")
        lines.append(f"    (moveable {oid})")
        for pred, key in (("cleanable", "Cleanable"), ("heatable", "Heatable"),
                          ("coolable", "Coolable"), ("sliceable", "Sliceable")):
            if cls in actions[key]:
                lines.append(f"    ({pred} {oid})")
        if cls in MOVABLE_RECEPTACLES:
            lines.append(f"    (isReceptacleObject {oid})")
    for rt in rtypes:
        for ot in otypes:
            if ot in can_contain.get(rt, ()):
                lines.append(f"    (canContain {rt}Type {ot}Type)")
    lines.append(")")
    lines.append(_GOAL_PDDL[task_type].format(obj=obj, recep=parent, toggle=toggle))
    lines.append(")")
    return "\n".join(lines) + "\n", {oid: cls for oid, cls, _ in obj_items}


def _goal_text(rng, goal) -> str:
    """ALFWorld's templated goal description (lower-case class names)."""
    task_type, obj, parent, toggle = goal
    template = rng.choice(_GOAL_TEMPLATES[task_type])
    return template.format(obj=obj.lower(), recep=parent.lower(), toggle=toggle.lower())


def _engine_files():
    """The alfred PDDL domain and twl2 grammar shipped inside the alfworld package."""
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

    with open(ALFRED_PDDL_PATH) as f:
        domain = f.read()
    with open(ALFRED_TWL2_PATH) as f:
        grammar = f.read()
    if "UNKNOWN GOAL" not in grammar:
        raise RuntimeError(f"{ALFRED_TWL2_PATH} has no 'UNKNOWN GOAL' placeholder; unsupported alfworld version")
    return domain, grammar


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
    rooms = [r for r in table.values() if any(_room_supports(r, t) for t in task_types)]
    n_layouts = max(len(task_types), int(n_layouts) or math.ceil(n_tasks / per_layout))
    # weight of a room: how much of the type mix it can host
    weights = {r.name: sum(1.0 / sum(_room_supports(q, t) for q in rooms) for t in task_types
                           if _room_supports(r, t)) for r in rooms}
    names = sorted(weights)
    plan = list(names) if n_layouts >= len(names) else []  # every usable room once
    for t in task_types:  # then make sure each type has a room that hosts it
        if not any(_room_supports(r, t) for r in rooms):
            raise ValueError(f"task type {t!r} has no room template that can host it in this room size")
        if not any(_room_supports(table[r], t) for r in plan):
            plan.append(rng.choice([r.name for r in rooms if _room_supports(r, t)]))
    while len(plan) < n_layouts:
        plan.append(rng.choices(names, weights=[weights[n] for n in names])[0])
    layouts, seen = [], set(exclude)
    for room in plan:
        for _ in range(1000):
            lay = _sample_layout(rng, table[room])
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
    target instance, fewer distractors: a curriculum for tiny models; see SMALL_ROOMS) or "few"
    (small rooms with 6 object classes per room template; see FEW_ROOMS).

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
    domain, grammar = _engine_files()
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
        cands = [lay for lay in layouts if _room_supports(table[lay.room], task_type)]
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
    problem, objects = _problem_pddl(f"{split}_{i:04d}", layout, goal, placement, actions, can_contain)
    goal_desc = _goal_text(rng, goal)
    pddl_params = {"object_target": obj, "parent_target": parent, "toggle_target": toggle,
                   "mrecep_target": "", "object_sliced": False}
    traj = {
        "task_id": task_id,
        "task_type": task_type,
        "pddl_params": pddl_params,
        "scene": {"floor_plan": layout.layout_id, "room": layout.room, "layout": json.loads(layout.signature),
                  "objects": objects, "opened": [_recep_id(*r) for r in placement.opened]},
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
    names |= {"DeskLamp"} | set(_DOMAIN_OTYPES)
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
