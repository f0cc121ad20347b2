"""Speed patches for ALFWorld's engine (TextWorld's PDDL logic and text generator, fast-downward).

The engine re-parses grammar templates with TatSu on every derived command, deep-copies the whole
game state for every symbol it derives, and translates the PDDL problem twice on every reset.
`install_engine_speedups()` (applied by `AlfWorldEnv(speedups=True)`, the default, when an env is
made) memoizes the pure text-to-structure functions and copies only what the text generator changes
(tests/envs/test_alfworld.py checks that episodes read the same with and without it).
"""
from __future__ import annotations

import collections
import copy
import hashlib
import sys

_SPEEDUPS = {"installed": False}


class LRU(collections.OrderedDict):
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
        cache = LRU(size)

        def cached(text, rule_name=None, **kwargs):
            if kwargs.get("trace") or (rule_names is not None and rule_name not in rule_names):
                return parse(text, rule_name=rule_name, **kwargs)
            key = (hashlib.sha1(text.encode()).hexdigest(), rule_name)
            return copy.deepcopy(cache.get_or(key, lambda: parse(text, rule_name=rule_name)))

        return cached

    cached_parse = memoized_parse(tw_textgen._parse_and_convert, 4096)

    sas_cache = LRU(1024)
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
    rule_cache = LRU(4096)

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
