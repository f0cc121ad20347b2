"""SFT pieces: per-batch padding width and the loss (tied and untied embeddings)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.train.sft import sft_length, sft_loss


def test_sft_length_pads_to_the_batch_longest_row_in_buckets():
    mask = np.zeros((2, 1024), np.int32)
    mask[0, :100] = 1
    mask[1, :300] = 1
    assert sft_length(mask, 128) == 384
    assert sft_length(mask[:1], 128) == 128
    assert sft_length(mask, 0) == 1024  # 0 keeps the full width
    mask[1, :] = 1
    assert sft_length(mask, 1000) == 1024  # never wider than the data


def _tiny(tie: bool):
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=16, max_position_embeddings=64, tie_word_embeddings=tie)
    return cfg, llama.init_params(cfg, jax.random.PRNGKey(0))


@pytest.mark.parametrize("tie", [False, True])
def test_sft_loss_is_the_mean_nll_of_trained_tokens(tie):
    cfg, params = _tiny(tie)
    assert ("lm_head" in str(jax.tree_util.tree_structure(params))) is not tie
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(2, 12)).astype(np.int32)
    attn = np.ones_like(ids)
    policy = np.zeros((2, 12), np.float32)
    policy[:, 6:9] = 1
    logits = np.asarray(llama.forward(cfg, params, jnp.asarray(ids), jnp.asarray(attn)), np.float64)
    logp = logits[:, :-1] - np.log(np.exp(logits[:, :-1]).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    want = (nll * policy[:, 1:]).sum() / policy[:, 1:].sum()
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(attn), "loss_mask": jnp.asarray(policy)}
    assert float(sft_loss(cfg, params, batch)) == pytest.approx(want, rel=1e-4)
    # padding a batch wider (what sft_length saves) changes nothing
    pad = lambda x: jnp.pad(jnp.asarray(x), ((0, 0), (0, 4)))  # noqa: E731
    wide = {"input_ids": pad(ids), "attention_mask": pad(attn), "loss_mask": pad(policy)}
    assert float(sft_loss(cfg, params, wide)) == pytest.approx(want, rel=1e-4)


def test_demonstrations_hold_a_bounded_number_of_engines(tmp_path, monkeypatch, small_demo_config):
    """collect_demos runs at most DEMO_LIVE_EPISODES expert episodes at once: each live ALFWorld env
    holds engines with their own 33 MB library copy, so 1024 demonstrations at once filled the disk."""
    pytest.importorskip("alfworld")
    from pilotrl_jax.envs import alfworld_env as A
    from pilotrl_jax.train import setup as S
    from pilotrl_jax.train import sft

    cfg = small_demo_config(7, 2)
    ctx = S.build_context(cfg, str(tmp_path))
    monkeypatch.setattr(A, "_ENGINES", [])  # a fresh pool: every engine this rollout needs is built here
    monkeypatch.setattr(A, "_PLANNER_LIBS", [])
    monkeypatch.setattr(A, "POOL_STATS", {"engines_built": 0, "planners_built": 0})
    monkeypatch.setattr(sft, "DEMO_LIVE_EPISODES", 2)
    batch = sft.collect_demos(ctx, ctx.train_tasks, "adaplan", "static", seed=0)
    assert len(batch.episodes) == 7 and all(e.won for e in batch.episodes)
    assert 1 <= A.POOL_STATS["engines_built"] <= 2 and A.POOL_STATS["planners_built"] <= 2
