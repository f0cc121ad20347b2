"""ALFWorld on its real engine (TextWorld's PDDL environment + ALFWorld's wrappers), offline.

Games come from `pilotrl_jax.envs.alfworld_gen`. The engine stack is the one `AlfredTWEnv`
registers: `PddlEnv` (fast-downward state, twl2 grammar) wrapped by `AlfredDemangler` (names like
"countertop 1") and `AlfredInfos`. The expert is the engine's planner expert: fast-downward
re-plans from the current state (what ALFWorld's `AlfredExpert(expert_type="planner")` returns as
`policy_commands`), computed on demand instead of on every step, on a relevance-pruned copy of
the current state (only target objects, the held object and the receptacles that matter): the
plan is executable in the full game and as short, and fast-downward answers in ~0.05 s instead of
seconds (pick_two in a 30-receptacle kitchen took 4-17 s on the full state).

`expert="search"` gives an expert that knows only what the agent could have seen: it looks for
the target in the receptacles that can hold it, in the order the room description lists them
(opening closed ones), takes it where it is seen, then puts it in the goal receptacle (or finds
and turns on the lamp); its plan names the places to check. Demonstrations from it teach a
policy that works in rooms it has never seen; the planner expert walks straight to the object.

`score="progress"` (ours; default "won") grades unsolved episodes: the info's score is 1 when won,
else 0.5 once the agent has picked up an object of the goal's type (the first of the goal's two
conditions, in the spirit of ALFRED's goal-condition success), else 0. With `reward.outcome="score"`
RL then also learns from groups in which no episode won.

Speed: the engine re-parses grammar templates with TatSu on every derived command, deep-copies the
whole game state for every symbol it derives, and translates the PDDL problem twice on every reset.
`install_engine_speedups()` (on by default) memoizes the pure text-to-structure functions and copies
only what the text generator changes (tests/envs/test_alfworld.py checks that episodes read the same
with and without it).
"""
from __future__ import annotations

import collections
import copy
import hashlib
import os
import re
import sys
import threading
import time
from typing import Sequence

from pilotrl_jax.envs.base import EnvError, ExpertActions, StepResult, Task, info_defaults

_BANNER = "-= Welcome to TextWorld, ALFRED! =-"
_PUT_ALIAS = re.compile(r"^put (?P<o>.+?) (?:in/on|in|on|into|onto) (?P<r>.+)$")


_APPLIANCE_TYPE = {
    "pick_clean_then_place_in_recep": "sinkbasintype",
    "pick_heat_then_place_in_recep": "microwavetype",
    "pick_cool_then_place_in_recep": "fridgetype",
}
_SPEEDUPS = {"installed": False}
EXPERTS = ("planner", "search")
SCORES = ("won", "progress")
_PICK_RE = re.compile(r"^you pick up the (?P<o>[a-z]+) \d+", re.IGNORECASE)
_INTRO_RE = re.compile(r"you see (?P<list>.+?)\.\s*(?:\n|$)", re.IGNORECASE)


class _LRU(collections.OrderedDict):
    """A small least-recently-used cache."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        """Cached value for key, else make() stored under key."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
        return value


def install_engine_speedups() -> None:
    """Speed up the engine (process-wide, idempotent): memoized grammar, template and condition
    parsing and PDDL translation, and shallow context copies in the text generator.

    The memoized functions are pure functions of their text inputs; callers get deep copies (parses)
    or the same read-only objects (translations, conditions), so game behaviour is unchanged
    (tests/envs/test_alfworld.py compares episodes). Only textworld's PDDL modules are touched.
    """
    if _SPEEDUPS["installed"]:
        return
    import fast_downward
    import textworld.envs.pddl.logic as tw_logic
    import textworld.envs.pddl.textgen as tw_textgen

    def memoized_parse(parse, size: int, rule_names=None):
        """TatSu parsing memoized per (text, rule) (only for `rule_names` when given); callers get copies."""
        cache = _LRU(size)

        def cached(text, rule_name=None, **kwargs):
            if kwargs.get("trace") or (rule_names is not None and rule_name not in rule_names):
                return parse(text, rule_name=rule_name, **kwargs)
            key = (hashlib.sha1(text.encode()).hexdigest(), rule_name)
            return copy.deepcopy(cache.get_or(key, lambda: parse(text, rule_name=rule_name)))

        return cached

    cached_parse = memoized_parse(tw_textgen._parse_and_convert, 4096)

    sas_cache = _LRU(1024)
    pddl2sas = fast_downward.pddl2sas

    def cached_pddl2sas(domain, problem, verbose=False, optimize=False):
        key = (hashlib.sha1(domain.encode()).hexdigest(), hashlib.sha1(problem.encode()).hexdigest(), optimize)
        argv = sys.argv  # fast_downward's pddl2sas overwrites sys.argv; give it back
        try:
            return sas_cache.get_or(key, lambda: pddl2sas(domain, problem, verbose=verbose, optimize=optimize))
        finally:
            sys.argv = argv

    class _FastDownward:
        """fast_downward as textworld's PDDL logic sees it, with a memoized pddl2sas."""

        pddl2sas = staticmethod(cached_pddl2sas)

        def __getattr__(self, name):
            return getattr(fast_downward, name)

    tw_textgen._parse_and_convert = cached_parse
    tw_logic.fast_downward = _FastDownward()

    # Loading a game parses its grammar (actions + text templates, which name the game's entities) with
    # TatSu: ~0.13 s a load. Rollouts load the same games again and again, so parse each game once.
    tw_logic._parse_and_convert = memoized_parse(tw_logic._parse_and_convert, 1024, rule_names=("pddlStart",))

    # The text generator copies a symbol's whole context (the game state included) with deepcopy and
    # re-parses every condition of the grammar with TatSu on every derived sentence. A context's
    # state, facts and entity infos are only read, and its variables/mapping dicts are only updated
    # key by key, so shallow dict copies are equivalent; parsed conditions (Rules) are only read.
    rule_cache = _LRU(4096)

    def parse_query(expr):
        return rule_cache.get_or(expr, lambda: tw_textgen.Rule.parse_conjunctive_query(expr))

    def copy_context(context):
        return {"state": context["state"], "facts": context["facts"], "variables": dict(context["variables"]),
                "mapping": dict(context["mapping"]), "entity_infos": context["entity_infos"]}

    def query(expression, context):
        contexts = []
        for mapping in context["state"].all_assignments(parse_query(expression), context["mapping"]):
            context_ = copy_context(context)
            context_["variables"].update({ph.name: context_["entity_infos"][var.name] for ph, var in mapping.items()})
            context_["mapping"].update(mapping)
            contexts.append(context_)
        return contexts

    def symbol_copy(self, context):
        saved, self.context = self.context, {}
        try:
            out = copy.deepcopy(self)  # the symbol's own fields; its context is replaced just below
        finally:
            self.context = saved
        out.context = copy_context(context)
        return out

    def applicable(rule, start):
        if not rule.condition:
            return True
        return any(True for _ in start.context["state"].all_assignments(parse_query(rule.condition), start.context["mapping"]))

    def replace(self, start):
        rules = self._rules.get(str(start))
        if not rules:
            raise tw_textgen.CSGUnknownSymbolError(start)
        rules = [r for r in rules if applicable(r, start)]
        symbols = copy.deepcopy(rules[0].rhs)
        for symbol in symbols:
            symbol.context = copy_context(start.context)
        return symbols

    tw_textgen.copy_context = copy_context
    tw_textgen.query = query
    tw_textgen.Symbol.copy = symbol_copy
    tw_textgen.ContextSensitiveGrammar.replace = replace
    _SPEEDUPS["installed"] = True


# Every engine (and every planner) loads its own copy of fast-downward's 33 MB shared library: the
# library keeps its state in globals, so textworld copies the file to a temporary directory, loads the
# copy and deletes the file. Nothing ever unloads a copy, so the deleted file stays on disk for the
# life of the process. Building an engine per episode therefore leaked 33 MB of disk an episode (a
# few GB a training step, until the disk was full). Engines and planner libraries are kept in these
# process-wide pools instead: `close()` gives them back and the next env reuses them, so a process
# holds as many copies as it ever had envs open at once.
_POOL_LOCK = threading.Lock()
_ENGINES: list = []
_PLANNER_LIBS: list = []
POOL_STATS = {"engines_built": 0, "planners_built": 0}


def _acquire(pool: list, make, stat: str):
    with _POOL_LOCK:
        if pool:
            return pool.pop()
        POOL_STATS[stat] += 1
    return make()


def _release(pool: list, item) -> None:
    if item is not None:
        with _POOL_LOCK:
            pool.append(item)


def _make_engine():
    """The ALFWorld TextWorld stack (PddlEnv + AlfredDemangler + AlfredInfos)."""
    import textworld
    from textworld.envs import PddlEnv
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    infos = textworld.EnvInfos(admissible_commands=True, won=True, extras=["gamefile"])
    env = PddlEnv(infos)
    env = AlfredDemangler(env, shuffle=False)
    env = AlfredInfos(env)
    return env


class AlfWorldEnv:
    """An ALFWorld game on the real engine; implements the TextEnv protocol.

    `max_steps` (optional) ends an episode after that many steps with info["truncated"];
    `strip_banner` drops the "-= Welcome to TextWorld, ALFRED! =-" line from the first observation;
    `put_alias` maps the older ALFWorld command "put X in/on Y" to the engine's "move X to Y".
    """

    def __init__(self, max_steps: int | None = None, strip_banner: bool = True, put_alias: bool = True,
                 speedups: bool = True, expert: str = "planner", score: str = "won"):
        if expert not in EXPERTS:
            raise ValueError(f"expert={expert!r}; expected one of {EXPERTS}")
        if score not in SCORES:
            raise ValueError(f"score={score!r}; expected one of {SCORES} (env.kwargs.score)")
        self.expert = expert
        self.score_mode = score
        self._target_word = ""  # the goal object's name as observations write it ("cellphone")
        self._picked_target = False
        self._seen: set = set()
        self._order: list = []
        if speedups:
            install_engine_speedups()
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps={max_steps!r}; expected None or an integer >= 1")
        self.max_steps = max_steps
        self.strip_banner = strip_banner
        self.put_alias = put_alias
        self._env = None
        self._planner_lib = None
        self._plan_cache = _LRU(512)
        self._loaded: str | None = None
        self._task: Task | None = None
        self._state = None
        self._won = False
        self._steps = 0
        self.timings = {"load_s": 0.0, "reset_s": 0.0, "step_s": 0.0, "n_load": 0, "n_reset": 0, "n_step": 0}

    # -- protocol -------------------------------------------------------------------------
    def reset(self, task: Task) -> tuple[str, dict]:
        """Load the task's game (cached when it is the same file) and return the intro + goal."""
        if not isinstance(task, Task) or task.env != "alfworld":
            raise ValueError(f"task={task!r}; expected a Task with env='alfworld' (see alfworld_gen.generate_tasks)")
        game_file = task.payload.get("game_file")
        if not game_file or not os.path.exists(game_file):
            raise FileNotFoundError(
                f"task {task.task_id}: payload['game_file']={game_file!r} does not exist; "
                "generate games with `python -m pilotrl_jax.envs.alfworld_gen --out DIR`")
        try:
            if self._env is None:
                self._env = _acquire(_ENGINES, _make_engine, "engines_built")
                self._loaded = None
            if game_file != self._loaded:
                t0 = time.perf_counter()
                self._loaded = None
                self._env.load(game_file)
                self._loaded = game_file
                self.timings["load_s"] += time.perf_counter() - t0
                self.timings["n_load"] += 1
            t0 = time.perf_counter()
            self._state = self._env.reset()
            self.timings["reset_s"] += time.perf_counter() - t0
            self.timings["n_reset"] += 1
        except Exception as e:  # engine failure: the rollout loop reports env_error
            raise EnvError(f"ALFWorld engine failed to start {game_file}: {type(e).__name__}: {e}") from e
        self._task = task
        self._steps = 0
        self._won = bool(self._state["won"])
        self._picked_target = False
        self._target_word = str((task.payload.get("pddl_params") or {}).get("object_target", "")).lower()
        self._seen = set()
        self._order = _intro_order(self._state.feedback)
        obs = self._state.feedback
        if self.strip_banner:
            obs = obs.replace(_BANNER, "").strip()
        return obs, self._info()

    def step(self, action: str) -> StepResult:
        """Apply one command; anything the engine cannot parse gets its answer "Nothing happens."."""
        if self._state is None:
            raise RuntimeError("AlfWorldEnv.step called before reset(task)")
        command = self.normalize(action)
        t0 = time.perf_counter()
        try:
            self._state, _, _ = self._env.step(command)
        except Exception as e:
            raise EnvError(f"ALFWorld engine failed on {command!r} in {self._loaded}: {type(e).__name__}: {e}") from e
        self.timings["step_s"] += time.perf_counter() - t0
        self.timings["n_step"] += 1
        self._steps += 1
        if self.expert == "search":
            self._note_seen()
        was_won = self._won
        self._won = self._won or bool(self._state["won"])
        if self.score_mode == "progress" and not self._picked_target:
            m = _PICK_RE.match((self._state.feedback or "").strip())
            self._picked_target = bool(m) and m.group("o").lower() == self._target_word
        reward = 1.0 if (self._won and not was_won) else 0.0
        info = self._info()
        truncated = self.max_steps is not None and self._steps >= self.max_steps and not self._won
        info["truncated"] = truncated
        return StepResult(observation=self._state.feedback, reward=reward, done=self._won or truncated, info=info)

    def expert_actions(self) -> Sequence[str] | None:
        """Planner expert from the current state: the commands to success ([] if won, None if no plan)."""
        if self._state is None:
            raise RuntimeError("AlfWorldEnv.expert_actions called before reset(task)")
        if self._won:
            return []
        if self.expert == "search":
            try:
                return self._search_actions()
            except Exception as e:
                raise EnvError(f"ALFWorld search expert failed in {self._loaded}: {type(e).__name__}: {e}") from e
        return self._planner_actions()

    def _planner_actions(self) -> list | None:
        """The planner's commands from the current state (privileged: it knows where everything is)."""
        inner = self._env.unwrapped
        try:
            problem = self._pruned_problem(inner)
            if problem not in self._plan_cache:
                from textworld.envs.pddl.logic import PddlState
                import fast_downward

                if self._planner_lib is None:  # a private copy: the game's copy holds the game state
                    self._planner_lib = _acquire(_PLANNER_LIBS, fast_downward.load_lib, "planners_built")
                state = PddlState(self._planner_lib, problem, inner._logic)
                self._plan_cache[problem] = list(state.replan(inner._entity_infos))
            plan = self._plan_cache.get_or(problem, list)
        except Exception as e:
            raise EnvError(f"ALFWorld planner failed in {self._loaded}: {type(e).__name__}: {e}") from e
        return list(plan) if plan else None

    # -- search expert -----------------------------------------------------------------------
    def _facts(self) -> list:
        """Current PDDL facts as (name, [argument names]) (lower-case ids)."""
        st = self._env.unwrapped._pddl_state
        return [(f.name, [a.name for a in f.arguments]) for f in st.facts if not f.name.startswith("new-axiom")]

    def _note_seen(self) -> None:
        """Remember the receptacle the agent now sees into (it stands there and it is open or has no door)."""
        facts = self._facts()
        here = {a[1] for n, a in facts if n == "atlocation" and a[0].startswith("agent")}
        opened = {a[0] for n, a in facts if n == "opened"}
        openable = {a[0] for n, a in facts if n == "openable"}
        for n, a in facts:
            if n == "receptacleatlocation" and a[1] in here and (a[0] not in openable or a[0] in opened):
                self._seen.add(a[0])

    def _search_actions(self) -> ExpertActions:
        """Commands the search expert knows it will run next, with its plan steps (see the module doc)."""
        facts = self._facts()
        names = {k.lower(): v.name for k, v in self._env.unwrapped._entity_infos.items()}
        params = self._task.payload.get("pddl_params") or {}
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
        rank = {r: i for i, r in enumerate(self._order)}
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
                if otype.get(o) == otyp and r in self._seen:
                    return o, r
            return None

        def find(otyp, exclude=()):
            """Commands up to where an instance of otyp is (if seen) or the next place to look."""
            got = seen_instance(otyp)
            if got is not None:
                go(got[1])
                return got
            todo = [r for r in candidates(otyp, exclude) if r not in self._seen]
            if todo:
                go(todo[0])
            return None

        parents = [r for r in order if rtype[r] == parent_t]
        obj_word = params.get("object_target", "").lower()
        target_cands = candidates(target, exclude=(parent_t,))
        steps = [f"Find the {obj_word}: check {_join([names[r] for r in target_cands])} one by one.",
                 f"Take the {obj_word}."]
        if self._task.task_type == "look_at_obj_in_light":
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
                return self._planner_fallback(steps)
            acts.append(f"move {names[held[0]]} to {names[p]}")
        step = 2
        if holding is None:
            got = find(target, exclude=(parent_t,))
            if got is None:
                return ExpertActions(acts, steps, step=0)
            step = 0 if acts else 1  # walking to (or clearing the hands for) a seen target is still finding it
            holding = got[0]
            acts.append(f"take {names[holding]} from {names[got[1]]}")
        if self._task.task_type == "look_at_obj_in_light":
            n_before = len(acts)
            lamp = find(toggle_t)
            if lamp is not None:
                if step == 2 and len(acts) == n_before:
                    step = 3  # the lamp is where the agent stands: turning it on is the next command
                acts.append(f"use {names[lamp[0]]}")
            return ExpertActions(acts, steps, step=step)
        if self._task.task_type == "pick_and_place_simple":
            go(parents[0])
            acts.append(f"move {names[holding]} to {names[parents[0]]}")
            return ExpertActions(acts, steps, step=step)
        if acts:  # other types: walk to the object first, then the planner knows the rest
            return ExpertActions(acts, steps, step=step if step < 2 else None)
        return self._planner_fallback(steps)

    def _planner_fallback(self, steps) -> ExpertActions | None:
        """The planner's commands, with the search expert's plan steps."""
        plan = self._planner_actions()
        return None if plan is None else ExpertActions(plan, steps)

    def _pruned_problem(self, inner) -> str:
        """The current state as a PDDL problem keeping only what the goal can need.

        Kept: every instance of the target/toggle object types and the held object; receptacles
        that hold them, of the goal's receptacle type, the task's appliance, and where the agent
        stands (plus one receptacle that can take a held unrelated object, if none of those can).
        Removed objects and receptacles never enable an action, so a plan here runs in the game.
        """
        st = inner._pddl_state
        params = self._task.payload.get("pddl_params") or {}
        otypes = {f"{params.get('object_target', '')}type".lower(), f"{params.get('toggle_target', '')}type".lower()}
        rtypes = {f"{params.get('parent_target', '')}type".lower(), _APPLIANCE_TYPE.get(self._task.task_type, "")}
        facts = [(f.name, [a.name for a in f.arguments]) for f in st.facts if not f.name.startswith("new-axiom")]
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
        problem = inner._game_data["pddl_problem"]
        goal = problem[problem.index("(:goal"):]
        lines = ["(define (problem expert)", "(:domain alfred)", "(:objects"]
        lines += [f"    {n} - {st.name2type[n]}" for n in sorted(keep)]
        lines += [")", "(:init"]
        lines += sorted(f"    ({name} {' '.join(args)})" for name, args in facts if all(a in keep for a in args))
        lines += [")", goal]
        return "\n".join(lines)

    def close(self) -> None:
        """Give the engine and planner back to the process-wide pools (see `_ENGINES`), for reuse.

        Their fast-downward library copies are never dlclose'd: textworld keeps ctypes handles into
        them until garbage collection, and unloading early crashes the interpreter at exit.
        """
        _release(_ENGINES, self._env)
        _release(_PLANNER_LIBS, self._planner_lib)
        self._planner_lib = None
        self._env = None
        self._loaded = None
        self._state = None

    # -- helpers --------------------------------------------------------------------------
    def normalize(self, action: str) -> str:
        """Lower-case, collapse whitespace, drop a trailing period; map "put X in/on Y" to "move X to Y"."""
        if not isinstance(action, str):
            action = "" if action is None else str(action)
        cmd = " ".join(action.strip().lower().split()).rstrip(".").strip()
        if self.put_alias:
            m = _PUT_ALIAS.match(cmd)
            if m:
                cmd = f"move {m.group('o')} to {m.group('r')}"
        return cmd

    @property
    def goal(self) -> str:
        """The task's goal sentence (from the intro's "Your task is to: ...")."""
        if self._task is None:
            return ""
        return self._task.payload.get("goal", "")

    def _info(self) -> dict:
        """Protocol info: won/score, admissible actions, task metadata."""
        won = self._won
        return info_defaults({
            "admissible_actions": list(self._state["admissible_commands"]),
            "task_type": self._task.task_type,
            "task_id": self._task.task_id,
            "goal": self.goal,
            "gamefile": self._loaded,
            "steps": self._steps,
        }, won=won, score=1.0 if won else (0.5 if self.score_mode == "progress" and self._picked_target else 0.0))


def _intro_order(intro: str) -> list:
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


# -- expert plan -> natural-language plan steps ------------------------------------------------
def _strip_num(name: str) -> str:
    """'apple 2' -> 'apple'."""
    parts = name.split()
    return " ".join(parts[:-1]) if len(parts) > 1 and parts[-1].isdigit() else name


_ACTION_RES = [
    ("goto", re.compile(r"^go to (?P<r>.+)$")),
    ("open", re.compile(r"^open (?P<r>.+)$")),
    ("close", re.compile(r"^close (?P<r>.+)$")),
    ("take", re.compile(r"^take (?P<o>.+?) from (?P<r>.+)$")),
    ("put", re.compile(r"^(?:move (?P<o>.+?) to|put (?P<o2>.+?) (?:in/on|in|on)) (?P<r>.+)$")),
    ("heat", re.compile(r"^heat (?P<o>.+?) with (?P<r>.+)$")),
    ("cool", re.compile(r"^cool (?P<o>.+?) with (?P<r>.+)$")),
    ("clean", re.compile(r"^clean (?P<o>.+?) with (?P<r>.+)$")),
    ("slice", re.compile(r"^slice (?P<o>.+?) with (?P<r>.+)$")),
    ("use", re.compile(r"^use (?P<o>.+)$")),
    ("examine", re.compile(r"^examine (?P<o>.+)$")),
]


def _parse(action: str):
    """(kind, groups) for an ALFWorld command; ('other', {}) when unknown."""
    a = " ".join(action.strip().lower().split())
    for kind, rx in _ACTION_RES:
        m = rx.match(a)
        if m:
            g = {k: v for k, v in m.groupdict().items() if v}
            if "o2" in g:
                g["o"] = g.pop("o2")
            return kind, g
    return "other", {"a": a}


def expert_plan_steps(actions: Sequence[str]) -> list[str]:
    """Turn an expert command sequence into short natural-language plan steps (no "Step k:" prefix).

    E.g. go to countertop 1 / take apple 1 from countertop 1 / go to microwave 1 /
    heat apple 1 with microwave 1 / go to diningtable 1 / move apple 1 to diningtable 1 ->
    ["Go to countertop 1 and take the apple.", "Heat the apple with microwave 1.",
     "Put the apple in/on diningtable 1."].
    """
    if isinstance(actions, str):
        raise ValueError("actions is a single string; expected a list of commands such as ['go to desk 1', ...]")
    steps: list[str] = []
    taken: set[str] = set()
    pending_go: str | None = None  # receptacle we went to, not yet described
    opened: str | None = None  # receptacle opened after that go-to
    last_taken: str | None = None

    def flush():
        nonlocal pending_go, opened
        if pending_go is not None:
            steps.append(f"Go to {pending_go} and open it." if opened == pending_go else f"Go to {pending_go}.")
        elif opened is not None:
            steps.append(f"Open {opened}.")
        pending_go, opened = None, None

    for action in actions:
        kind, g = _parse(str(action))
        if kind == "goto":
            flush()
            pending_go = g["r"]
        elif kind == "open":
            if pending_go is None and opened is not None:
                flush()
            opened = g["r"]
        elif kind == "close" or (kind == "other" and g["a"] in ("look", "inventory", "help")):
            continue
        elif kind == "take":
            obj = _strip_num(g["o"])
            art = "another" if obj in taken else "the"
            taken.add(obj)
            last_taken = obj
            where = g["r"]
            if opened == where:
                steps.append(f"Go to {where}, open it, and take {art} {obj}." if pending_go == where
                             else f"Open {where} and take {art} {obj}.")
            else:
                steps.append(f"Go to {where} and take {art} {obj}.")
            pending_go, opened = None, None
        elif kind == "put":
            obj, where = _strip_num(g["o"]), g["r"]
            if opened == where:
                steps.append(f"Open {where} and put the {obj} in/on it.")
            else:
                steps.append(f"Put the {obj} in/on {where}.")
            pending_go, opened = None, None
        elif kind in ("heat", "cool", "clean"):
            steps.append(f"{kind.capitalize()} the {_strip_num(g['o'])} with {g['r']}.")
            pending_go, opened = None, None
        elif kind == "slice":
            steps.append(f"Slice the {_strip_num(g['o'])} with the {_strip_num(g['r'])}.")
            pending_go, opened = None, None
        elif kind == "use":
            what = f" to look at the {last_taken}" if last_taken else ""
            where = f"Go to {pending_go} and turn on" if pending_go else "Turn on"
            steps.append(f"{where} the {_strip_num(g['o'])}{what}.")
            pending_go, opened = None, None
        elif kind == "examine":
            flush()
            steps.append(f"Examine the {g['o']}.")
        else:
            flush()
            steps.append(f"{g['a'][:1].upper()}{g['a'][1:]}.")
    flush()
    return steps
