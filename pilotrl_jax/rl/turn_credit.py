"""GiGPO's step-level credit on episodes: per-turn advantage terms, placed on each turn's own tokens.

GRPO gives every token of an episode its group-normalized episode score. With
`rl.step_advantage_weight` > 0 each executor turn's ACTION tokens also get weight x that turn's
step-group advantage: turns taken from the same anchor state (`anchor_keys`: same GRPO group, same
accepted commands so far) compare their discounted returns (`turn_rewards`, `rl.step_gamma`),
normalized within that state's group (`rl.step_norm`; the pure math is `rl.step_groups`). The result
is the [B, T] `token_advantages` that `ppo.make_advantage_fn` adds to the advantages. Rewards stay
per-episode scalars (`rewards.shaping`): only the outcome term is spread over the turns here.
"""
from __future__ import annotations

from typing import Any, Hashable, Optional, Sequence

import numpy as np

from pilotrl_jax.agent.spans import SpanKind
from pilotrl_jax.rewards.shaping import rejected_action
from pilotrl_jax.rl.ppo_config import PPOConfig
from pilotrl_jax.rl.step_groups import discounted_returns, step_group_advantages


def wasted_turns(episode: Any) -> list[bool]:
    """One flag per ACTION span of an `AgentEpisode` (span order): True when that turn was wasted, i.e.
    it broke the format or the environment rejected its command (the next observation has a failure marker)."""
    spans = list(getattr(episode, "spans", None) or [])
    executor = [t for t in getattr(episode, "turns", []) if t.kind == SpanKind.ACTION]
    actions = [i for i, s in enumerate(spans) if s.kind == SpanKind.ACTION]
    if len(executor) != len(actions):
        raise ValueError(f"episode has {len(actions)} action spans but {len(executor)} executor turns; "
                         "wasted_turns needs an AgentEpisode built by add_policy_output")
    flags = []
    for k, i in enumerate(actions):
        nxt = next((s for s in spans[i + 1:] if s.kind in (SpanKind.OBSERVATION, SpanKind.ACTION)), None)
        rejected = nxt is not None and nxt.kind == SpanKind.OBSERVATION and rejected_action(nxt.text)
        flags.append(bool(executor[k].format_error) or rejected)
    return flags


def anchor_keys(episode: Any, group: Hashable) -> list[tuple]:
    """One anchor-state key per ACTION span of an `AgentEpisode`: (group, the commands the environment
    accepted before that turn). In a deterministic environment those commands fix the state, so two
    turns with one key act from the same state (a rejected command or a format error leaves it as it was)."""
    flags = wasted_turns(episode)
    actions = list(getattr(episode, "actions", []))
    if len(actions) != len(flags):
        raise ValueError(f"episode has {len(flags)} executor turns but {len(actions)} env actions; "
                         "anchor_keys needs an AgentEpisode built by add_policy_output")
    keys, accepted = [], []
    for a, wasted in zip(actions, flags):
        keys.append((group, tuple(accepted)))
        if not wasted:
            accepted.append(" ".join(str(a).lower().split()))
    return keys


def turn_rewards(episode: Any, terminal: float, from_scores: bool = False) -> np.ndarray:
    """Per executor turn of an `AgentEpisode`, the reward that turn earned.

    With `from_scores` and the env's score reported after every turn (`AgentEpisode.turn_scores`, e.g.
    ALFWorld's progress score): each turn's rise of the score. Otherwise 0, and `terminal` (the
    episode's outcome, >= 0) on the last turn. Never a penalty: a negative reward, discounted, would
    credit a turn for how many turns were left after it (a failed episode's early turns would look
    better than its late ones)."""
    n = sum(1 for s in episode.spans if s.kind == SpanKind.ACTION)  # executor turns
    scores = list(getattr(episode, "turn_scores", []))[:n]
    if from_scores and n and scores and all(x is not None for x in scores):
        s = np.clip(np.asarray(scores + [scores[-1]] * (n - len(scores)), np.float64), 0.0, 1.0)
        return np.maximum(np.diff(s, prepend=0.0), 0.0)  # the last turn may have had no observation
    r = np.zeros(n)
    if n:
        r[-1] = max(float(terminal), 0.0)
    return r


def step_advantage_token_values(episodes: Sequence[Any], groups: Sequence[Hashable], terminal: Sequence[float],
                                cfg: PPOConfig, from_scores: bool = False) -> list[np.ndarray]:
    """GiGPO's step-level credit as per-token arrays (`flatten_spans` order), one per episode:
    `cfg.step_advantage_weight` x the turn's step-group advantage on every token of its ACTION span, 0
    elsewhere; `from_scores`: turns earn the rises of the env's score (`turn_rewards`). Episodes without
    an agent (None) get an empty array."""
    live = [i for i, e in enumerate(episodes) if e is not None]
    keys = [anchor_keys(episodes[i], groups[i]) for i in live]
    rets = [discounted_returns(turn_rewards(episodes[i], terminal[i], from_scores), cfg.step_gamma) for i in live]
    adv = step_group_advantages(keys, rets, cfg.step_norm)
    out = [np.zeros(0, np.float32) for _ in episodes]
    for i, a in zip(live, adv):
        turn = iter(a)
        vals = []
        for s in episodes[i].spans:
            v = float(cfg.step_advantage_weight) * float(next(turn)) if s.kind == SpanKind.ACTION else 0.0
            vals.extend([v] * len(s.token_ids))
        out[i] = np.asarray(vals, np.float32)
    return out


def token_rows(values, T: int) -> np.ndarray:
    """[B, T] float32 from one per-token array per episode (flattened-span order), zero-padded on the right."""
    out = np.zeros((len(values), T), np.float32)
    for b, v in enumerate(values):
        out[b, :len(v)] = v
    return out


def step_advantages(episodes, outcome, cfg: PPOConfig, T: int, from_scores: bool = False) -> np.ndarray:
    """[B, T] step-level advantage terms of a rollout's `EpisodeResult`s; `outcome` [B] is each episode's
    outcome reward (the terminal return; penalties stay episode-level, in GRPO's score)."""
    terminal = np.asarray(outcome, np.float64)
    agents = [e.agent if e.status != "env_error" else None for e in episodes]  # cut short: not comparable
    return token_rows(step_advantage_token_values(agents, [e.group_id for e in episodes], terminal, cfg,
                                                  from_scores), T)


def turn_credit(episodes, outcome, cfg: PPOConfig, T: int, from_scores: bool = False) -> Optional[np.ndarray]:
    """The per-token advantage terms [B, T] a stage adds to its advantages (the step-level credit), or
    None when `cfg.step_advantage_weight` is 0."""
    if cfg.step_advantage_weight:
        return step_advantages(episodes, outcome, cfg, T, from_scores)
    return None
