"""The policy's token log-probs and entropies, and the critic's values, as pure functions of params."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.models.projection import project
from pilotrl_jax.rl import losses as L


def _lm_head(model_cfg: LlamaConfig, params):
    """(einsum spec, matrix) of the LM head: the embedding [V, D] when tied, else lm_head [D, V]."""
    if model_cfg.tie_word_embeddings:
        return "btd,vd->btv", params["embed"]
    return "btd,dv->btv", params["lm_head"]


def policy_logprobs_entropy(model_cfg: LlamaConfig, params, input_ids, attention_mask=None, positions=None,
                            temperature: float = 1.0, chunk_size: Optional[int] = None):
    """(token log-probs [B, T], entropies [B, T]) of the policy, aligned like `losses.token_logprobs`.

    chunk_size None: from the full logits. Otherwise the LM head runs on `chunk_size` positions at a
    time under `jax.checkpoint`, so neither forward nor backward holds [B, T, V] float32 logits."""
    if chunk_size is None:
        logits = llama.forward(model_cfg, params, input_ids, attention_mask, positions)
        return L.token_logprobs_and_entropy(logits, input_ids, temperature)
    ids = jnp.asarray(input_ids, jnp.int32)
    h = llama.forward_hidden(model_cfg, params, ids, attention_mask, positions)[:, :-1]
    tgt = ids[:, 1:]
    B, n, D = h.shape
    nc = -(-n // chunk_size)
    pad = nc * chunk_size - n
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(B, nc, chunk_size, D).swapaxes(0, 1)
    tgt = jnp.pad(tgt, ((0, 0), (0, pad))).reshape(B, nc, chunk_size).swapaxes(0, 1)
    spec, w = _lm_head(model_cfg, params)
    w = w.astype(h.dtype)

    @jax.checkpoint
    def one(hc, tc):
        z = project(model_cfg, spec, hc, w).astype(jnp.float32) / temperature
        lse = jax.nn.logsumexp(z, axis=-1)
        lp = jnp.take_along_axis(z, tc[..., None], axis=-1)[..., 0] - lse
        ent = lse - (jnp.exp(z - lse[..., None]) * z).sum(-1)
        return lp, ent

    lp, ent = jax.lax.map(lambda a: one(*a), (h, tgt))  # [nc, B, chunk]
    fix = lambda x: jnp.pad(x.swapaxes(0, 1).reshape(B, -1)[:, :n], ((0, 0), (1, 0)))
    return fix(lp), fix(ent)




def init_critic_params(policy_params, rng: Optional[jax.Array] = None):
    """Critic = the policy's backbone (copied, LM head dropped) + a zero-initialised scalar head."""
    backbone = {k: v for k, v in policy_params.items() if k != "lm_head"}
    backbone = jax.tree.map(jnp.array, backbone)  # a copy, so donation of either tree is safe
    d = backbone["embed"].shape[-1]
    return {"backbone": backbone, "head": {"kernel": jnp.zeros((d,), jnp.float32), "bias": jnp.zeros((), jnp.float32)}}


def critic_values(model_cfg: LlamaConfig, critic_params, input_ids, attention_mask=None, positions=None):
    """Values [B, T] aligned like log-probs: entry t is V(state before token t), from hidden[t-1]; entry 0 is 0."""
    h = llama.forward_hidden(model_cfg, critic_params["backbone"], input_ids, attention_mask, positions)
    v = h.astype(jnp.float32) @ critic_params["head"]["kernel"] + critic_params["head"]["bias"]
    return jnp.pad(v[:, :-1], ((0, 0), (1, 0)))
