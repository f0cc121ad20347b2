"""The ALFWorld experts' reasoning over the engine's PDDL state.

`SearchExpert` (`AlfWorldEnv(expert="search")`) knows only what the agent could have seen: it looks
for the target in the receptacles that can hold it, in the order the room description lists them
(opening closed ones), takes it where it is seen, then puts it in the goal receptacle (or finds
and turns on the lamp); its plan names the places to check. Demonstrations from it teach a
policy that works in rooms it has never seen; the planner expert walks straight to the object.

`pruned_problem` is the planner expert's view of the game: the current state keeping only what the
goal can need, on which fast-downward answers in ~0.05 s instead of seconds.
"""
from __future__ import annotations

import re
from typing import Sequence

from pilotrl_jax.envs.base import ExpertActions, Task

_APPLIANCE_TYPE = {
    "pick_clean_then_place_in_recep": "sinkbasintype",
    "pick_heat_then_place_in_recep": "microwavetype",
    "pick_cool_then_place_in_recep": "fridgetype",
}
_INTRO_RE = re.compile(r"you see (?P<list>.+?)\.\s*(?:\n|$)", re.IGNORECASE)


def pddl_facts(state) -> list:
    """A PDDL state's facts as (name, [argument names]) (lower-case ids)."""
    return [(f.name, [a.name for a in f.arguments]) for f in state.facts if not f.name.startswith("new-axiom")]


class SearchExpert:
    """The search expert of one episode: what the agent has seen so far, and its next commands."""

    def __init__(self):
        self.seen: set = set()  # receptacles the agent has looked into
        self.order: list = []  # receptacle names in the order the room description lists them

    def reset(self, intro: str) -> None:
        """Start an episode whose first observation is `intro`."""
        self.seen = set()
        self.order = intro_order(intro)

    def note_seen(self, facts: list) -> None:
        """Remember the receptacle the agent now sees into (it stands there and it is open or has no door)."""
        here = {a[1] for n, a in facts if n == "atlocation" and a[0].startswith("agent")}
        opened = {a[0] for n, a in facts if n == "opened"}
        openable = {a[0] for n, a in facts if n == "openable"}
        for n, a in facts:
            if n == "receptacleatlocation" and a[1] in here and (a[0] not in openable or a[0] in opened):
                self.seen.add(a[0])

    def actions(self, facts: list, names: dict, task: Task, planner) -> ExpertActions | None:
        """Commands the search expert knows it will run next, with its plan steps (see the module doc).

        `names` maps PDDL ids to the names observations use; `planner()` gives the planner's commands
        (or None) for the cases the search leaves to it.
        """
        params = task.payload.get("pddl_params") or {}
        target = f"{params.get('object_target', '')}type".lower()
        parent_t = f"{params.get('parent_target', '')}type".lower()
        toggle_t = f"{params.get('toggle_target', '')}type".lower()
        otype = {a[0]: a[1] for n, a in facts if n == "objecttype"}
        rtype = {a[0]: a[1] for n, a in facts if n == "receptacletype"}
        where = {a[0]: a[1] for n, a in facts if n == "inreceptacle"}
        rloc = {a[0]: a[1] for n, a in facts if n == "receptacleatlocation"}
        opened = {a[0] for n, a in facts if n == "opened"}
        openable = {a[0] for n, a in facts if n == "openable"}
        fits = {(a[0], a[1]) for n, a in facts if n == "cancontain"}
        here = {a[1] for n, a in facts if n == "atlocation" and a[0].startswith("agent")}
        held = [a[1] for n, a in facts if n == "holds"]
        rank = {r: i for i, r in enumerate(self.order)}
        order = sorted(rtype, key=lambda r: (rank.get(names.get(r, r), len(rank)), names.get(r, r)))
        pos = next((r for r in order if rloc.get(r) in here), None)
        acts: list = []
        state = {"pos": pos, "opened": set(opened)}

        def go(r):
            if state["pos"] != r:
                acts.append(f"go to {names[r]}")
                state["pos"] = r
            if r in openable and r not in state["opened"]:
                acts.append(f"open {names[r]}")
                state["opened"].add(r)

        def candidates(otyp, exclude=()):
            if otyp == toggle_t:  # lamps are not in the affordance tables: they stand on open surfaces
                return [r for r in order if r not in openable]
            return [r for r in order if (rtype[r], otyp) in fits and rtype[r] not in exclude]

        def seen_instance(otyp):
            for o, r in sorted(where.items(), key=lambda kv: (rank.get(names.get(kv[1], ""), 99), kv[0])):
                if otype.get(o) == otyp and r in self.seen:
                    return o, r
            return None

        def find(otyp, exclude=()):
            """Commands up to where an instance of otyp is (if seen) or the next place to look."""
            got = seen_instance(otyp)
            if got is not None:
                go(got[1])
                return got
            todo = [r for r in candidates(otyp, exclude) if r not in self.seen]
            if todo:
                go(todo[0])
            return None

        parents = [r for r in order if rtype[r] == parent_t]
        obj_word = params.get("object_target", "").lower()
        target_cands = candidates(target, exclude=(parent_t,))
        steps = [f"Find the {obj_word}: check {_join([names[r] for r in target_cands])} one by one.",
                 f"Take the {obj_word}."]
        if task.task_type == "look_at_obj_in_light":
            lamp_word = params.get("toggle_target", "").lower()
            lamp_cands = candidates(toggle_t)
            steps += [f"Find the {lamp_word}: check {_join([names[r] for r in lamp_cands])} one by one.",
                      f"Turn on the {lamp_word} and look at the {obj_word} under it."]
        else:
            if parents:
                steps.append(f"Put the {obj_word} in/on {names[parents[0]]}.")

        # which plan step the next command carries out: 0 find, 1 take, 2 put / find the lamp, 3 turn it on
        holding = next((o for o in held if otype.get(o) == target), None)
        if held and holding is None:  # put an unrelated object down where the agent stands
            p = state["pos"]
            if p is None or (p in openable and p not in opened) or (rtype[p], otype.get(held[0])) not in fits:
                return _fallback(planner, steps)
            acts.append(f"move {names[held[0]]} to {names[p]}")
        step = 2
        if holding is None:
            got = find(target, exclude=(parent_t,))
            if got is None:
                return ExpertActions(acts, steps, step=0)
            step = 0 if acts else 1  # walking to (or clearing the hands for) a seen target is still finding it
            holding = got[0]
            acts.append(f"take {names[holding]} from {names[got[1]]}")
        if task.task_type == "look_at_obj_in_light":
            n_before = len(acts)
            lamp = find(toggle_t)
            if lamp is not None:
                if step == 2 and len(acts) == n_before:
                    step = 3  # the lamp is where the agent stands: turning it on is the next command
                acts.append(f"use {names[lamp[0]]}")
            return ExpertActions(acts, steps, step=step)
        if task.task_type == "pick_and_place_simple":
            go(parents[0])
            acts.append(f"move {names[holding]} to {names[parents[0]]}")
            return ExpertActions(acts, steps, step=step)
        if acts:  # other types: walk to the object first, then the planner knows the rest
            return ExpertActions(acts, steps, step=step if step < 2 else None)
        return _fallback(planner, steps)


def _fallback(planner, steps) -> ExpertActions | None:
    """The planner's commands, with the search expert's plan steps."""
    plan = planner()
    return None if plan is None else ExpertActions(plan, steps)


def pruned_problem(st, problem: str, task: Task) -> str:
    """The current state `st` as a PDDL problem keeping only what the goal of `problem` can need.

    Kept: every instance of the target/toggle object types and the held object; receptacles
    that hold them, of the goal's receptacle type, the task's appliance, and where the agent
    stands (plus one receptacle that can take a held unrelated object, if none of those can).
    Removed objects and receptacles never enable an action, so a plan here runs in the game.
    """
    params = task.payload.get("pddl_params") or {}
    otypes = {f"{params.get('object_target', '')}type".lower(), f"{params.get('toggle_target', '')}type".lower()}
    rtypes = {f"{params.get('parent_target', '')}type".lower(), _APPLIANCE_TYPE.get(task.task_type, "")}
    facts = pddl_facts(st)
    objs, held, keep_r, keep_l = set(), set(), set(), set()
    for name, args in facts:
        if name == "objecttype" and args[1] in otypes:
            objs.add(args[0])
        elif name == "holds":
            held.add(args[1])
        elif name == "receptacletype" and args[1] in rtypes:
            keep_r.add(args[0])
        elif name == "atlocation":
            keep_l.add(args[1])
    stray = held - objs
    objs |= held
    for name, args in facts:
        if name == "inreceptacle" and args[0] in objs:
            keep_r.add(args[1])
        elif name == "receptacleatlocation" and args[1] in keep_l:
            keep_r.add(args[0])
    if stray:  # somewhere to put the unrelated object down, if no kept receptacle can hold it
        otype = {a[0]: a[1] for n, a in facts if n == "objecttype"}
        rtype = {a[0]: a[1] for n, a in facts if n == "receptacletype"}
        holds = {(a[0], a[1]) for n, a in facts if n == "cancontain"}
        for obj in sorted(stray):
            fits = sorted(r for r, t in rtype.items() if (t, otype.get(obj)) in holds)
            if fits and not keep_r.intersection(fits):
                keep_r.add(fits[0])
    for name, args in facts:
        if name == "receptacleatlocation" and args[0] in keep_r:
            keep_l.add(args[1])
    kinds = {"object": objs, "receptacle": keep_r, "location": keep_l}
    keep = {n for n, t in st.name2type.items() if n in kinds.get(t, (n,))}
    goal = problem[problem.index("(:goal"):]
    lines = ["(define (problem expert)", "(:domain alfred)", "(:objects"]
    lines += [f"    {n} - {st.name2type[n]}" for n in sorted(keep)]
    lines += [")", "(:init"]
    lines += sorted(f"    ({name} {' '.join(args)})" for name, args in facts if all(a in keep for a in args))
    lines += [")", goal]
    return "\n".join(lines)


def intro_order(intro: str) -> list:
    """Receptacle names in the order the first observation lists them ("you see a bed 1, a desk 1, and ...")."""
    m = _INTRO_RE.search(intro or "")
    if not m:
        return []
    out = []
    for part in re.split(r",\s*|\s+and\s+", m.group("list")):
        part = part.strip()
        part = re.sub(r"^(?:and\s+)?(?:a|an|the)\s+", "", part)
        if part:
            out.append(part)
    return out


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items) or "every place"
    return ", ".join(items[:-1]) + " and " + items[-1]
