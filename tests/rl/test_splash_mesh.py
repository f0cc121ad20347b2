"""The trainer's jitted PPO functions trace under the attention kernel's mesh (`models.attention.mesh_context`):
on a multi-device mesh, splash runs in shard_map (rows over fsdp, heads over tensor) in the PPO step and the
log-prob pass, and the log-probs are the xla path's. Splash runs in Pallas interpret mode here (CPU); the
kernel's logits and gradients against xla are checked in tests/models/test_attention_impl.py."""
import jax
import numpy as np

from pilotrl_jax import sharding as sh
from pilotrl_jax.models import attention, llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.rl import ppo

MC = LlamaConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)


def _rollout(B=4, T=12, seed=0):
    rng = np.random.default_rng(seed)
    attn = np.ones((B, T), np.int32)
    attn[-1, -3:] = 0  # right padding on one row
    lm = (rng.random((B, T)) < 0.6).astype(np.float32) * attn
    lm[:, 0] = 0
    return dict(input_ids=rng.integers(3, MC.vocab_size, (B, T)).astype(np.int32), attention_mask=attn,
                loss_mask=lm, scores=rng.normal(size=B).astype(np.float32),
                group_ids=np.repeat(np.arange(2), B // 2).astype(np.int32))


def _in_shard_map(lowered) -> bool:
    text = lowered.as_text()
    return "sdy.manual_computation" in text or "SPMDFullToShardShape" in text


def test_splash_on_a_mesh_runs_in_shard_map_with_the_xla_numbers():
    mesh = sh.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
    cfg = ppo.PPOConfig(lr=1e-3, num_mini_batches=1, num_micro_batches=1, shuffle=False)
    params = llama.init_params(MC, jax.random.PRNGKey(3))
    roll = _rollout()
    got = {}
    with attention.interpret_splash():
        for impl in ("xla", "splash"):
            mc = MC.replace(attention_impl=impl)
            state = ppo.init_train_state(mc, cfg, params, jax.random.PRNGKey(1), mesh=mesh)
            fns = ppo.build(mc, cfg, mesh=mesh, donate=False)
            batch = fns.prepare(state, roll)
            if impl == "splash":
                assert _in_shard_map(fns.step.jitted.lower(state, batch))
                assert _in_shard_map(fns.logprobs.lower(state.params, batch))
                # the plain jit outside the context traces splash as one (replicated) call: the context matters
                assert not _in_shard_map(fns.step.jitted._jitted.lower(state, batch))
            got[impl] = np.asarray(batch["old_logprobs"])
    real = roll["attention_mask"].astype(bool)
    np.testing.assert_allclose(got["splash"][real], got["xla"][real], atol=1e-5, rtol=0)
