"""The text of a generated ALFWorld game: its PDDL problem and goal sentence, and the engine's
PDDL domain and twl2 grammar that the game is written against."""
from __future__ import annotations

from pilotrl_jax.envs.alfworld_rooms import DOMAIN_OTYPES, DOMAIN_RTYPES, MOVABLE_RECEPTACLES, OPENABLE

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


def recep_id(cls: str, idx: int) -> str:
    """PDDL id of a receptacle; sinks/bathtubs use ALFRED's 'Sink|..|SinkBasin' shape."""
    if cls == "SinkBasin":
        return f"Sink_bar_{idx:02d}_bar_SinkBasin"
    if cls == "BathtubBasin":
        return f"Bathtub_bar_{idx:02d}_bar_BathtubBasin"
    return f"{cls}_bar_{idx:02d}"


def problem_pddl(name, layout, goal, placement, actions, can_contain) -> tuple[str, dict]:
    """Write the PDDL problem; returns (text, {obj_id: class}) for the record."""
    task_type, obj, parent, toggle = goal
    recs = layout.receptacles()
    rec_ids = {r: recep_id(*r) for r in recs}
    loc_of = {r: f"loc_bar_{k + 1:02d}" for k, r in enumerate(recs)}
    counters: dict = {}
    obj_items = []  # (id, class, recep)
    for cls, rec in placement.objects:
        counters[cls] = counters.get(cls, 0) + 1
        obj_items.append((f"{cls}_bar_{counters[cls]:02d}", cls, rec))
    if layout.lamp_holder is not None:
        obj_items.append(("DeskLamp_bar_01", "DeskLamp", tuple(layout.lamp_holder)))
    otypes = sorted({c for _, c, _ in obj_items} | set(DOMAIN_OTYPES) | ({obj} if obj else set()))
    rtypes = sorted({c for c, _ in recs} | set(DOMAIN_RTYPES))

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


def goal_text(rng, goal) -> str:
    """ALFWorld's templated goal description (lower-case class names)."""
    task_type, obj, parent, toggle = goal
    template = rng.choice(_GOAL_TEMPLATES[task_type])
    return template.format(obj=obj.lower(), recep=parent.lower(), toggle=toggle.lower())


def engine_files():
    """The alfred PDDL domain and twl2 grammar shipped inside the alfworld package."""
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

    with open(ALFRED_PDDL_PATH) as f:
        domain = f.read()
    with open(ALFRED_TWL2_PATH) as f:
        grammar = f.read()
    if "UNKNOWN GOAL" not in grammar:
        raise RuntimeError(f"{ALFRED_TWL2_PATH} has no 'UNKNOWN GOAL' placeholder; unsupported alfworld version")
    return domain, grammar

