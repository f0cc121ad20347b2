"""AgentEpisode: scripted episodes in every mode against a fake env, token-in/token-out checks."""
import numpy as np
import pytest

from pilotrl_jax.agent import prompts
from pilotrl_jax.agent.adaplan import AgentEpisode, Phase
from pilotrl_jax.agent.spans import SpanKind
from pilotrl_jax.agent.tokenizer import ChatTokenizer
from pilotrl_jax.envs.base import StepResult, Task, info_defaults

GOAL = ("go to desk 1", "take pen 1 from desk 1", "move pen 1 to shelf 1")
TASK = Task(env="alfworld", task_id="fake-0", task_type="pick_and_place")


class FakeEnv:
    """Succeeds when GOAL is done in order; any other action gets 'Nothing happens.'"""

    def __init__(self):
        self.k = 0
        self.sent = []

    def reset(self, task):
        self.k = 0
        return "You are in a room with a desk 1 and a shelf 1. Your task is to: put a pen on the shelf.", info_defaults({})

    def step(self, action):
        self.sent.append(action)
        if self.k < len(GOAL) and action == GOAL[self.k]:
            self.k += 1
            won = self.k == len(GOAL)
            return StepResult(f"You did: {action}.", float(won), won, info_defaults({"admissible_actions": ["look"]}, won=won))
        return StepResult("Nothing happens.", 0.0, False, info_defaults({"admissible_actions": ["look"]}))

    def expert_actions(self):
        return list(GOAL[self.k:])

    def close(self):
        pass


def plan_text(env):
    return prompts.plan_text(env.expert_actions())


def action_text(env, step=1):
    return f"\n<thought>According to Step {step} of the global plan, I act.</thought>\n<action>{env.expert_actions()[0]}</action>"


def run_episode(ep, env, policy, rng=None):
    """Drive the episode like a KV-cache sampler; returns the tokens the sampler fed/produced."""
    rng = rng or np.random.default_rng(0)
    obs, info = env.reset(TASK)
    ep.start(obs, info)
    fed, produced = [], []
    while not ep.done:
        req = ep.next_request()
        assert req is not None
        fed.extend(ep.prompt_for_next())
        text = policy(req, ep, env)
        ids = ep.chat.encode(text)
        lps = rng.normal(size=len(ids)).tolist()
        produced.append((ids, lps))
        fed.extend(ids)
        turn = ep.add_policy_output(ids, lps, text)
        if turn.env_action is not None:
            assert ep.next_request() is None
            res = env.step(turn.env_action)
            ep.add_observation(res.observation, done=res.done, info=res.info)
    return fed, produced


def reference_ids(ep):
    """The chat template applied to the episode's conversation (messages rebuilt from span texts)."""
    system = prompts.system_prompt(ep.env, ep.mode, ep.replan, ep.external_plan, style=ep.prompt_style)
    user = prompts.task_message(ep.env, ep.observations[0], ep.mode, ep.replan, ep.external_plan,
                                style=ep.prompt_style)
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    turn = ""
    for s in ep.spans[1:]:
        if s.kind == SpanKind.OBSERVATION:
            msgs += [{"role": "assistant", "content": turn}, {"role": "user", "content": s.text}]
            turn = ""
        else:
            turn += s.text
    if turn:  # the episode ended inside an assistant turn: template up to the last user + that text
        return ep.chat.conversation_ids(msgs) + ep.chat.encode(turn)
    return ep.chat.conversation_ids(msgs)


def check_token_in_token_out(ep, fed, produced):
    ids = ep.token_ids()
    assert fed == ids.tolist()  # what a KV-cache sampler saw is the training sequence
    policy = [s for s in ep.spans if s.kind in (SpanKind.PLAN, SpanKind.ACTION)]
    assert [s.token_ids for s in policy] == [p[0] for p in produced]  # policy tokens kept exactly
    assert [s.logprobs for s in policy] == [p[1] for p in produced]
    tok, kinds, lps = ep.arrays()
    assert len(tok) == len(kinds) == len(lps)
    assert ids.tolist() == reference_ids(ep)


def every_step_policy(req, ep, env):
    return plan_text(env) if req.kind == SpanKind.PLAN else action_text(env)


@pytest.mark.parametrize("tok_name", ["tiny_tok", "llama_style_tok", "smollm2_tok"])
def test_every_step_episode(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    env = FakeEnv()
    ep = AgentEpisode(TASK, "adaplan", "every_step", None, tok)
    fed, produced = run_episode(ep, env, every_step_policy)
    assert ep.status == "success" and env.sent == list(GOAL)
    assert ep.num_turns == 3 and ep.format_errors == 0
    kinds = [s.kind for s in ep.spans]
    assert kinds == [SpanKind.PROMPT] + [SpanKind.PLAN, SpanKind.ACTION, SpanKind.OBSERVATION] * 2 + [SpanKind.PLAN, SpanKind.ACTION]
    assert [h[2] for h in ep.plan_history] == [GOAL, GOAL[1:], GOAL[2:]]
    check_token_in_token_out(ep, fed, produced)


def test_static_episode(tiny_tok):
    env = FakeEnv()
    ep = AgentEpisode(TASK, "adaplan", "static", None, tiny_tok)
    fed, produced = run_episode(ep, env, every_step_policy)
    kinds = [s.kind for s in ep.spans]
    assert kinds.count(SpanKind.PLAN) == 1 and kinds[1] == SpanKind.PLAN
    assert kinds.count(SpanKind.ACTION) == 3 and ep.status == "success"
    check_token_in_token_out(ep, fed, produced)


def test_react_episode(tiny_tok):
    env = FakeEnv()
    ep = AgentEpisode(TASK, "react", None, None, tiny_tok)
    seen = []

    def policy(req, ep, env):
        seen.append(req)
        return action_text(env)

    fed, produced = run_episode(ep, env, policy)
    assert all(r.kind == SpanKind.ACTION and r.stop_strings == ("</action>",) and not r.allow_plan for r in seen)
    assert SpanKind.PLAN not in [s.kind for s in ep.spans] and ep.plan is None
    assert "global_plan" not in ep.spans[0].text
    check_token_in_token_out(ep, fed, produced)


@pytest.mark.parametrize("tok_name", ["tiny_tok", "smollm2_tok"])
def test_on_demand_episode(tok_name, request):
    """Turn 1 plans (required); turn 2 re-plans inside one generation (split into PLAN+ACTION);
    turn 3 stops at </global_plan> then writes the action; turn 4 acts without a plan."""
    tok = request.getfixturevalue(tok_name)
    env = FakeEnv()
    ep = AgentEpisode(TASK, "adaplan", "on_demand", None, tok)
    reqs = []
    script = iter([
        "<global_plan>Step 1: look\nStep 2: go to desk 1</global_plan>",  # plan phase, turn 1
        "\n<thought>Step 1.</thought><action>look</action>",  # (no '><' merge across the two samples)
        "<global_plan>Step 1: go to desk 1\nStep 2: take pen 1 from desk 1\nStep 3: move pen 1 to shelf 1</global_plan>"
        "\n<thought>According to Step 1.</thought><action>go to desk 1</action>",
        "<global_plan>Step 1: take pen 1 from desk 1\nStep 2: move pen 1 to shelf 1</global_plan>",
        "\n<thought>Step 1.</thought><action>take pen 1 from desk 1</action>",
        "<thought>Step 2.</thought><action>move pen 1 to shelf 1</action>",
    ])

    def policy(req, ep, env):
        reqs.append(req)
        return next(script)

    fed, produced = run_episode(ep, env, policy)
    assert ep.status == "success" and ep.format_errors == 0
    assert [r.kind for r in reqs] == [SpanKind.PLAN] + [SpanKind.ACTION] * 5
    assert [r.allow_plan for r in reqs] == [False, False, True, True, False, True]
    assert reqs[2].stop_strings == ("</action>", "</global_plan>")
    kinds = [s.kind for s in ep.spans]
    P, A, O = SpanKind.PLAN, SpanKind.ACTION, SpanKind.OBSERVATION
    assert kinds == [SpanKind.PROMPT, P, A, O, P, A, O, P, A, O, A]
    assert ep.plan == ("take pen 1 from desk 1", "move pen 1 to shelf 1")
    assert len(ep.plan_history) == 3
    # The split generation: its PLAN+ACTION spans hold exactly the sampled tokens, in order.
    split = ep.spans[4].token_ids + ep.spans[5].token_ids
    assert split == produced[2][0]
    assert ep.spans[4].logprobs + ep.spans[5].logprobs == produced[2][1]
    assert "</global_plan>" in ep.spans[4].text and "<thought>" not in ep.spans[4].text
    ids = ep.token_ids().tolist()
    assert ids == fed and ids == reference_ids(ep)
    policy_spans = [s for s in ep.spans if s.kind in (P, A)]
    assert sum((s.token_ids for s in policy_spans), []) == sum((p[0] for p in produced), [])


def test_external_plans_every_step(tiny_tok):
    env = FakeEnv()
    calls = []

    def plan_source(ep):
        calls.append(ep.num_turns)
        return env.expert_actions()

    ep = AgentEpisode(TASK, "adaplan", "every_step", plan_source, tiny_tok)
    reqs = []

    def policy(req, ep, env):
        reqs.append(req)
        return action_text(env)

    fed, produced = run_episode(ep, env, policy)
    assert ep.status == "success" and calls == [0, 1, 2]
    assert all(r.kind == SpanKind.ACTION for r in reqs)  # the policy never writes a plan in stage 1
    kinds = [s.kind for s in ep.spans]
    assert SpanKind.PLAN not in kinds and kinds.count(SpanKind.EXTERNAL_PLAN) == 3
    ext = [s for s in ep.spans if s.kind == SpanKind.EXTERNAL_PLAN]
    assert all(s.logprobs is None for s in ext)
    assert ext[0].text == prompts.external_plan_text(GOAL)
    assert "is given" in ep.spans[0].text
    # the external plan is fed to the sampler before it writes the action
    assert ep.spans[1].kind == SpanKind.EXTERNAL_PLAN
    check_token_in_token_out(ep, fed, produced)


@pytest.mark.parametrize("replan, expected", [("static", 1), ("on_demand", 2)])
def test_external_plans_static_and_on_demand(tiny_tok, replan, expected):
    env = FakeEnv()
    # on_demand: the source changes its plan only once (after turn 1), so two plan spans.
    plans = {0: list(GOAL), 1: list(GOAL[1:])}
    ep = AgentEpisode(TASK, "adaplan", replan, lambda e: plans.get(e.num_turns, plans[1]), tiny_tok)
    fed, produced = run_episode(ep, env, lambda r, e, v: action_text(v))
    kinds = [s.kind for s in ep.spans]
    assert kinds.count(SpanKind.EXTERNAL_PLAN) == expected
    assert ep.status == "success"
    check_token_in_token_out(ep, fed, produced)


def test_external_plan_source_must_give_first_plan(tiny_tok):
    ep = AgentEpisode(TASK, "adaplan", "static", lambda e: None, tiny_tok)
    with pytest.raises(ValueError, match="plan_source returned None for the first turn"):
        ep.start("obs")


def test_format_errors_send_noop_and_are_reported(tiny_tok):
    env = FakeEnv()
    ep = AgentEpisode(TASK, "adaplan", "every_step", None, tiny_tok)
    script = iter([
        "Step 1: go to desk 1",  # plan without tags: a plan format error (the executor still acts)
        "<thought>hmm</thought>",  # no action: format error, no-op sent
        plan_text(env),
        "<thought>a</thought><action>go to desk 1</action>",
    ])
    obs, info = env.reset(TASK)
    ep.start(obs, info)
    turns = []
    for _ in range(2):
        for _ in range(2):
            text = next(script)
            ids = ep.chat.encode(text)
            turns.append(ep.add_policy_output(ids, [0.0] * len(ids)))  # text decoded by the episode
        res = env.step(turns[-1].env_action)
        ep.add_observation(res.observation, res.done, res.info)
    assert [t.format_error for t in turns] == [True, True, False, False]
    assert turns[1].env_action == "look" and env.sent[0] == "look"
    assert turns[0].env_action is None and turns[0].kind == SpanKind.PLAN
    assert ep.format_errors == 2 and ep.num_turns == 2
    first_obs = [s for s in ep.spans if s.kind == SpanKind.OBSERVATION][0].text
    assert "broke the format" in first_obs and "'look' was run instead" in first_obs
    second_obs = [s for s in ep.spans if s.kind == SpanKind.OBSERVATION][1].text
    assert "broke the format" not in second_obs
    assert ep.actions == ["look", "go to desk 1"]


def test_garbage_output_never_raises(smollm2_tok):
    rng = np.random.default_rng(1)
    ep = AgentEpisode(TASK, "adaplan", "on_demand", None, smollm2_tok)
    ep.start("obs")
    vocab = len(smollm2_tok)
    for _ in range(30):
        ids = rng.integers(0, vocab, size=int(rng.integers(0, 40))).tolist()
        turn = ep.add_policy_output(ids, None)
        if turn.env_action is not None:
            ep.add_observation("Nothing happens.")
    assert ep.format_errors >= 1
    assert ep.token_ids().tolist() == sum((s.token_ids for s in ep.spans), [])


def test_straddling_token_between_plan_and_action(smollm2_tok):
    """SmolLM2 merges '><': the plan's stop token may hold the '<' of <thought>; the turn still parses."""
    chat = ChatTokenizer(smollm2_tok)
    ids = chat.encode("<global_plan>Step 1: look</global_plan><thought>t</thought><action>look</action>")
    toks = smollm2_tok.convert_ids_to_tokens(ids)
    cut = toks.index("><") + 1
    ep = AgentEpisode(TASK, "adaplan", "every_step", None, smollm2_tok)
    ep.start("obs")
    t1 = ep.add_policy_output(ids[:cut])
    t2 = ep.add_policy_output(ids[cut:])
    assert not t1.format_error and not t2.format_error, (t1.parse.error, t2.parse.error)
    assert t2.env_action == "look"


def test_policy_wrote_end_of_turn(smollm2_tok):
    ep = AgentEpisode(TASK, "react", None, None, smollm2_tok)
    ep.start("obs")
    eot = ep.chat.end_of_turn_ids[0]
    ids = ep.chat.encode("<thought>t</thought><action>look</action>") + [eot]
    assert ep.add_policy_output(ids).env_action == "look"
    ep.add_observation("Nothing happens.")
    obs = ep.spans[-1].token_ids
    assert obs[0] != eot  # the closing token the policy already wrote is not repeated
    msgs = [{"role": "system", "content": prompts.system_prompt("alfworld", "react", None)},
            {"role": "user", "content": prompts.task_message("alfworld", "obs", "react", None)},
            {"role": "assistant", "content": "<thought>t</thought><action>look</action>"},
            {"role": "user", "content": ep.spans[-1].text}]
    assert ep.token_ids().tolist() == ep.chat.conversation_ids(msgs)


def test_end_statuses_and_max_turns(tiny_tok):
    ep = AgentEpisode(TASK, "react", None, None, tiny_tok, max_turns=2)
    ep.start("obs")
    for k in range(2):
        ids = ep.chat.encode("<thought>t</thought><action>look</action>")
        ep.add_policy_output(ids)
        ep.add_observation("Nothing happens.")
    assert ep.done and ep.status == "max_turns" and ep.next_request() is None
    ep2 = AgentEpisode(TASK, "react", None, None, tiny_tok)
    ep2.start("obs")
    ep2.add_policy_output(ep2.chat.encode("<thought>t</thought><action>look</action>"))
    ep2.add_observation("It ends.", done=True, info={"won": False})
    assert ep2.status == "env_done" and ep2.spans[-1].kind == SpanKind.ACTION
    ep3 = AgentEpisode(TASK, "react", None, None, tiny_tok)
    ep3.start("obs")
    ep3.finish("token_budget")
    assert ep3.done and ep3.status == "token_budget"


def test_admissible_actions_shown_when_asked(tiny_tok):
    ep = AgentEpisode(TASK, "react", None, None, tiny_tok, show_admissible=True)
    ep.start("obs")
    ep.add_policy_output(ep.chat.encode("<thought>t</thought><action>look</action>"))
    ep.add_observation("Nothing happens.", info={"admissible_actions": ["look", "inventory"]})
    assert "Available actions: look, inventory" in ep.spans[-1].text


def test_api_misuse_raises_clear_errors(tiny_tok):
    with pytest.raises(ValueError, match="agent mode"):
        AgentEpisode(TASK, "plan", None, None, tiny_tok)
    with pytest.raises(ValueError, match="replan mode"):
        AgentEpisode(TASK, "adaplan", "sometimes", None, tiny_tok)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        AgentEpisode(TASK, "react", None, None, None)
    with pytest.raises(ValueError, match="mode is 'react'"):
        AgentEpisode(TASK, "react", None, lambda e: ["x"], tiny_tok)
    with pytest.raises(ValueError, match="environment family"):
        AgentEpisode(None, "react", None, None, tiny_tok)
    with pytest.raises(ValueError, match="environment family 'web'"):
        AgentEpisode(Task(env="web", task_id="1"), "react", None, None, tiny_tok)
    ep = AgentEpisode(TASK, "react", None, None, tiny_tok)
    with pytest.raises(RuntimeError, match="add_policy_output called in phase not_started"):
        ep.add_policy_output([1])
    ep.start("obs")
    with pytest.raises(RuntimeError, match="start was called twice"):
        ep.start("obs")
    with pytest.raises(RuntimeError, match="add_observation called in phase action"):
        ep.add_observation("x")
    with pytest.raises(ValueError, match="2 token ids but 1 log-probs"):
        ep.add_policy_output([5, 6], [0.0])
    ep.add_policy_output(ep.chat.encode("<thought>t</thought><action>look</action>"))
    assert ep.phase == Phase.OBSERVE
    with pytest.raises(RuntimeError, match="prompt_for_next called in phase observe"):
        ep.prompt_for_next()


def test_plan_phase_edge_cases(tiny_tok):
    env = FakeEnv()
    ep = AgentEpisode(TASK, "adaplan", "every_step", None, tiny_tok)
    ep.start(env.reset(TASK)[0])
    assert ep.next_request().stop_strings == ("</global_plan>", "</action>")
    # 1) thought+action where the plan was due: a format error, the no-op is sent.
    t = ep.add_policy_output(ep.chat.encode("<thought>t</thought><action>go to desk 1</action>"))
    assert t.format_error and t.env_action == "look" and "missing <global_plan>" in t.parse.error
    assert ep.spans[-1].kind == SpanKind.ACTION
    ep.add_observation("Nothing happens.")
    assert "missing <global_plan>" in ep.spans[-1].text
    # 2) plan and action in one generation (a sampler that did not stop): split, the action runs.
    text = prompts.plan_text(GOAL) + "\n<thought>Step 1.</thought><action>go to desk 1</action>"
    ids = ep.chat.encode(text)
    t = ep.add_policy_output(ids, list(range(len(ids))))
    assert not t.format_error and t.env_action == "go to desk 1"
    assert [s.kind for s in ep.spans[-2:]] == [SpanKind.PLAN, SpanKind.ACTION]
    assert ep.spans[-2].token_ids + ep.spans[-1].token_ids == ids
    assert ep.spans[-2].logprobs + ep.spans[-1].logprobs == list(range(len(ids)))
    ep.add_observation("You did it.")
    # 3) a plan with characters past its stop string stays one PLAN span; the action parses.
    ids = ep.chat.encode(prompts.plan_text(GOAL[1:]) + "\n")
    t = ep.add_policy_output(ids)
    assert not t.format_error and ep.spans[-1].token_ids == ids and ep.phase == Phase.ACTION
    t = ep.add_policy_output(ep.chat.encode("<thought>Step 1.</thought><action>take pen 1 from desk 1</action>"))
    assert not t.format_error and t.env_action == "take pen 1 from desk 1"
    assert ep.format_errors == 1


_PIECES = ["<global_plan>", "</global_plan>", "<thought>", "</thought>", "<action>", "</action>", "Step 1: look\n",
           "Step 2: go to desk 1", "look", "go to desk 1", "\n", " ", "é🍎", "<", ">", "/", "<|im_end|>"]


@pytest.mark.parametrize("mode, replan", [("adaplan", "every_step"), ("adaplan", "on_demand"),
                                          ("adaplan", "static"), ("react", None)])
def test_random_policy_invariants(tiny_tok, mode, replan):
    rng = np.random.default_rng(7)
    for episode in range(15):
        env = FakeEnv()
        ep = AgentEpisode(TASK, mode, replan, None, tiny_tok, max_turns=6)

        def policy(req, ep, env):
            if rng.random() < 0.4:  # a well-formed turn
                return plan_text(env) if req.kind == SpanKind.PLAN else action_text(env)
            return "".join(rng.choice(_PIECES, size=int(rng.integers(0, 10))))

        fed, produced = run_episode(ep, env, policy, rng)
        assert fed == ep.token_ids().tolist()
        policy_ids = sum((s.token_ids for s in ep.spans if s.kind in (SpanKind.PLAN, SpanKind.ACTION)), [])
        assert policy_ids == sum((p[0] for p in produced), [])
        assert ep.format_errors == sum(1 for t in ep.turns if not t.parse.ok)
        assert all(t.env_action == "look" for t in ep.turns if t.kind == SpanKind.ACTION and not t.parse.ok)
        assert ep.done and ep.status in ("success", "max_turns")
        assert ep.num_turns == len(ep.actions) == len(env.sent)


def test_compact_prompt_episode_is_shorter_and_parses_the_same(tiny_tok):
    full_env, compact_env = FakeEnv(), FakeEnv()
    full = AgentEpisode(TASK, "adaplan", "static", None, tiny_tok)
    compact = AgentEpisode(TASK, "adaplan", "static", None, tiny_tok, prompt_style="compact")
    run_episode(full, full_env, every_step_policy)
    fed, produced = run_episode(compact, compact_env, every_step_policy)
    assert compact.status == full.status == "success" and compact_env.sent == full_env.sent
    assert [s.kind for s in compact.spans] == [s.kind for s in full.spans]
    n = lambda ep, kind: sum(len(s.token_ids) for s in ep.spans if s.kind == kind)  # noqa: E731
    assert n(compact, SpanKind.PROMPT) < n(full, SpanKind.PROMPT) / 2
    assert n(compact, SpanKind.OBSERVATION) < n(full, SpanKind.OBSERVATION)
    assert n(compact, SpanKind.ACTION) == n(full, SpanKind.ACTION)
    check_token_in_token_out(compact, fed, produced)
    with pytest.raises(ValueError, match="prompt style"):
        AgentEpisode(TASK, "adaplan", "static", None, tiny_tok, prompt_style="terse")


@pytest.mark.parametrize("closing", ["</action>", "</Action>", "</ACTION>", "< /action>", "</action >",
                                     "</global_plan>", "</Global_Plan>", "</ global_plan>"])
def test_sampler_stops_exactly_where_the_parser_closes_a_turn(any_tok, closing):
    """The stop strings the episode asks the sampler for, matched as the sampler matches them (on the
    decoded tokens), stop a generation exactly when the parser accepts its closing tag; the kept tokens
    end with the one that completed the tag and parse as the whole text does."""
    from pilotrl_jax.agent.parser import parse_action, parse_plan
    from pilotrl_jax.sampling.stops import StopStrings

    ep = AgentEpisode(TASK, "adaplan", "every_step", None, any_tok)
    ep.start("obs")
    stops = ep.next_request().stop_strings  # the plan request: both closing tags
    is_plan = "plan" in closing.lower()
    head = "<global_plan>Step 1: look" if is_plan else "<thought>t</thought><action>look"
    parse = parse_plan if is_plan else parse_action
    ids = ep.chat.encode(head + closing + "\nThen more text.")
    k = StopStrings(any_tok, stops).find(ids, 0)
    assert (k is not None) == parse(head + closing).ok
    if k is not None:  # the token-in/token-out cut: up to and including the token that completed the tag
        assert closing in ep.chat.decode(ids[:k + 1]) and closing not in ep.chat.decode(ids[:k])
        assert parse(ep.chat.decode(ids[:k + 1])).ok


def test_requests_stop_on_the_parsers_closing_tags(tiny_tok):
    """One definition of the tags: every request's stop strings are the parser's closing tags (and the
    tokenizer module's copies of them agree)."""
    from pilotrl_jax.agent import parser, tokenizer

    assert parser.STOP_STRINGS == (parser.close_tag("action"), parser.close_tag("global_plan"))
    assert parser.AGENT_TAGS == ("<global_plan>", "</global_plan>", "<thought>", "</thought>", "<action>", "</action>")
    seen = set()
    for replan in ("every_step", "on_demand"):
        ep = AgentEpisode(TASK, "adaplan", replan, None, tiny_tok)
        ep.start("obs")
        seen.update(ep.next_request().stop_strings)
        ep.add_policy_output(ep.chat.encode(prompts.plan_text(GOAL)))
        seen.update(ep.next_request().stop_strings)
    assert seen == set(parser.STOP_STRINGS)


@pytest.mark.parametrize("plan", ["<global_plan>Step 1: go to desk 1", prompts.plan_text(GOAL)],
                         ids=["unclosed", "closed"])
@pytest.mark.parametrize("tok_name", ["tiny_tok", "llama_style_tok", "smollm2_tok"])
def test_plan_that_ends_its_message_opens_a_new_assistant_message(tok_name, plan, request):
    """A plan generation that ends on the end-of-turn token (unclosed, as a sampler stopping on EOS
    leaves it, or closed and then ended) closed the assistant message: the template's new assistant
    header follows as a PROMPT span, the executor writes in that new message, and the episode's tokens
    are what the sampler saw and what the chat template renders for the conversation."""
    tok = request.getfixturevalue(tok_name)
    ep = AgentEpisode(TASK, "adaplan", "every_step", None, tok)
    ep.start("obs")
    eot = ep.chat.end_of_turn_ids[0]
    fed = ep.prompt_for_next()
    plan_ids = ep.chat.encode(plan) + [eot]
    fed += plan_ids
    t = ep.add_policy_output(plan_ids, [-1.0] * len(plan_ids))
    assert t.kind == SpanKind.PLAN and t.env_action is None and t.format_error == ("</global_plan>" not in plan)
    assert [s.kind for s in ep.spans] == [SpanKind.PROMPT, SpanKind.PLAN, SpanKind.PROMPT]
    assert ep.spans[1].token_ids == plan_ids and ep.spans[1].logprobs == [-1.0] * len(plan_ids)
    assert ep.next_request().kind == SpanKind.ACTION
    header = ep.prompt_for_next()
    assert header == ep.spans[2].token_ids and header and header[0] != eot  # the sampled closing is not repeated
    fed += header
    act = "<thought>Step 1.</thought><action>go to desk 1</action>"
    act_ids = ep.chat.encode(act) + [eot]
    fed += act_ids
    t = ep.add_policy_output(act_ids)
    assert t.kind == SpanKind.ACTION and t.env_action == "go to desk 1" and not t.format_error
    ep.add_observation("You arrive at desk 1.")
    fed += ep.prompt_for_next()
    assert fed == ep.token_ids().tolist()
    assert [s.kind for s in ep.spans] == [SpanKind.PROMPT, SpanKind.PLAN, SpanKind.PROMPT, SpanKind.ACTION,
                                          SpanKind.OBSERVATION]
    msgs = [{"role": "system", "content": prompts.system_prompt("alfworld", "adaplan", "every_step")},
            {"role": "user", "content": prompts.task_message("alfworld", "obs", "adaplan", "every_step")},
            {"role": "assistant", "content": plan}, {"role": "assistant", "content": act},
            {"role": "user", "content": ep.spans[-1].text}]
    assert ep.token_ids().tolist() == ep.chat.conversation_ids(msgs)
