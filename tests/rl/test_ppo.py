"""PPO step on a tiny LLaMA: masking, first-epoch ratio, exact micro-batching, NaN skip, mesh parity,
compile count, and learning a synthetic bandit with grpo, rloo and gae."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pilotrl_jax import sharding as sh
from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.rl import losses as L
from pilotrl_jax.rl import metrics as M
from pilotrl_jax.rl import ppo
from pilotrl_jax.rl.optimizer import update_count

MC = LlamaConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)


@functools.lru_cache(maxsize=None)
def _params():
    return llama.init_params(MC, jax.random.PRNGKey(0))


def _rollout(B=8, T=12, seed=0, n_groups=2):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, MC.vocab_size, (B, T)).astype(np.int32)
    attn = np.ones((B, T), np.int32)
    attn[-1, -3:] = 0  # right padding on one row
    lm = (rng.random((B, T)) < 0.5).astype(np.float32)
    lm[:, 0] = 0
    lm[-1, -3:] = 0
    lm[0] = 0  # an all-masked row
    return dict(input_ids=ids, attention_mask=attn, loss_mask=lm,
                scores=rng.normal(size=B).astype(np.float32),
                group_ids=np.repeat(np.arange(n_groups), B // n_groups).astype(np.int32),
                sampler_logprobs=np.full((B, T), -4.0, np.float32))


def _max_diff(a, b):
    return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_masked_only_tokens_get_exactly_zero_gradient():
    cfg = ppo.PPOConfig(num_mini_batches=1, entropy_coef=0.01, kl_coef=0.1, use_critic=True, advantage_estimator="gae")
    B, T = 4, 10
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 40, (B, T)).astype(np.int32)
    X, Y, Z = 60, 61, 62
    ids[0, 7:] = X  # final observation of row 0: after its last trained token
    ids[1, :] = Y  # row 1 is never trained
    ids[2, 1] = Z  # a prompt token before trained tokens: must get gradient
    lm = np.zeros((B, T), np.float32)
    lm[0, 3:7] = 1
    lm[2, 4:8] = 1
    lm[3, 2:5] = 1
    micro = dict(input_ids=ids, attention_mask=np.ones((B, T), np.int32), loss_mask=lm,
                 advantages=np.where(lm > 0, rng.normal(size=(B, T)), np.nan).astype(np.float32),  # garbage off-mask
                 old_logprobs=np.where(lm > 0, -4.0, np.inf).astype(np.float32),
                 ref_logprobs=np.full((B, T), -3.0, np.float32),
                 returns=rng.normal(size=(B, T)).astype(np.float32), old_values=np.zeros((B, T), np.float32))
    micro = jax.tree.map(jnp.asarray, micro)
    params = _params()
    cparams = ppo.init_critic_params(params)
    cparams["head"]["kernel"] = jnp.ones_like(cparams["head"]["kernel"]) * 0.1
    dens = {"policy": L.agg_denominator(lm, cfg.loss_agg_mode)}
    grads = jax.jit(jax.grad(lambda p: ppo.ppo_loss(MC, cfg, p, micro, dens)[0]))((params, cparams))
    gp, gc = grads
    assert np.isfinite(np.asarray(jax.tree.leaves(grads)[0])).all()
    for g in (gp["embed"], gc["backbone"]["embed"]):
        g = np.asarray(g)
        assert np.all(g[X] == 0) and np.all(g[Y] == 0)
        assert np.abs(g[Z]).sum() > 0
        assert np.all(g[50:60] == 0)  # never-seen tokens
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(grads))


@pytest.fixture(scope="module")
def grpo_setup():
    cfg = ppo.PPOConfig(lr=1e-3, num_mini_batches=1, num_micro_batches=2, weight_decay=0.0)
    fns = ppo.build(MC, cfg, donate=False)
    state = ppo.init_train_state(MC, cfg, _params(), jax.random.PRNGKey(1))
    return cfg, fns, state


def test_first_epoch_ratio_is_one_and_compiles_once(grpo_setup):
    cfg, fns, state = grpo_setup
    batch = fns.prepare(state, _rollout(seed=0))
    s1, m = fns.step(state, batch)
    f = M.finalize(m)
    assert abs(f["ratio"] - 1.0) < 1e-6 and f["approx_kl_old"] < 1e-10
    assert f["pg_clipfrac_low"] == f["pg_clipfrac_high"] == f["pg_clipfrac_dual"] == 0.0
    assert f["skipped_update"] == 0.0 and f["grad_norm"] > 0
    assert f["sampler_abs_logprob_diff"] > 0
    assert int(s1.step) == 1
    # same bucket, new contents: no recompilation
    s = s1
    for seed in (1, 2, 3):
        s, m = fns.step(s, fns.prepare(s, _rollout(seed=seed)))
    assert fns.step.num_traces() == 1
    assert fns.logprobs.num_traces == 1
    # a new length bucket compiles once more
    b16 = {k: np.zeros((8, 16), v.dtype) for k, v in batch.items()}
    b16["attention_mask"][:] = 1
    s, _ = fns.step(s, b16)
    assert fns.step.num_traces() == 2


def test_nonfinite_loss_skips_update(grpo_setup):
    cfg, fns, state = grpo_setup
    batch = dict(fns.prepare(state, _rollout(seed=4)))
    adv = np.asarray(batch["advantages"]).copy()
    adv[1, np.nonzero(np.asarray(batch["loss_mask"])[1])[0][0]] = np.nan
    batch["advantages"] = adv
    s1, m = fns.step(state, batch)
    assert M.finalize(m)["skipped_update"] == 1.0
    assert _max_diff(s1.params, state.params) == 0.0
    assert _max_diff(s1.opt_state, state.opt_state) == 0.0


def test_micro_batching_is_exact(grpo_setup):
    cfg, fns, state = grpo_setup  # 2 micro-batches; compare with 4 (same mini-batch, same normalizer)
    step4 = ppo.make_ppo_step(MC, dataclasses.replace(cfg, num_micro_batches=4), donate=False)
    batch = fns.prepare(state, _rollout(seed=5))
    (a, ma), (b, mb) = fns.step(state, batch), step4(state, batch)
    fa, fb = M.finalize(ma), M.finalize(mb)
    assert abs(fa["policy_loss"] - fb["policy_loss"]) < 1e-6
    assert abs(fa["grad_norm"] - fb["grad_norm"]) < 1e-5 * max(1.0, fa["grad_norm"])
    assert fa["entropy"] == pytest.approx(fb["entropy"], rel=1e-6)
    assert _max_diff(a.params, b.params) < 1e-6


def test_mesh_2x4_matches_single_device():
    cfg = ppo.PPOConfig(lr=1e-4, num_mini_batches=2, num_micro_batches=2, epochs=2, use_critic=True,
                        advantage_estimator="gae", critic_lr=1e-4, entropy_coef=0.01, kl_coef=0.05)
    roll = _rollout(B=32, T=12, seed=6, n_groups=4)
    ref_params = jax.tree.map(lambda x: x * 1.01, _params())
    res = []
    for mesh in (None, sh.make_mesh({"data": 2, "fsdp": 4})):
        state = ppo.init_train_state(MC, cfg, _params(), jax.random.PRNGKey(1), mesh=mesh)
        fns = ppo.build(MC, cfg, mesh=mesh, donate=False)
        batch = fns.prepare(state, roll, ref_params=ref_params)
        s, m = fns.step(state, batch)
        res.append((s, M.finalize(m)))
    (s1, m1), (s8, m8) = res
    assert len(s8.params["embed"].sharding.device_set) == 8
    assert _max_diff(s1.params, s8.params) <= 1e-5
    assert _max_diff(s1.critic_params, s8.critic_params) <= 1e-5
    for k in m1:
        assert abs(m1[k] - m8[k]) <= 1e-5 * max(1.0, abs(m1[k])), k


# ----------------------------------------------------------------------------- synthetic bandit

PROMPT_LEN, RESP_LEN, TARGET = 4, 4, 7


@functools.lru_cache(maxsize=None)
def _sampler():
    @jax.jit
    def sample(params, prompts, key):
        B = prompts.shape[0]
        ids = jnp.concatenate([prompts, jnp.zeros((B, RESP_LEN), jnp.int32)], axis=1)
        lps = jnp.zeros(ids.shape, jnp.float32)
        for i in range(RESP_LEN):
            t = PROMPT_LEN + i
            logits = llama.forward(MC, params, ids)[:, t - 1]
            key, sub = jax.random.split(key)
            tok = jax.random.categorical(sub, logits)
            ids = ids.at[:, t].set(tok)
            lps = lps.at[:, t].set(jax.nn.log_softmax(logits)[jnp.arange(B), tok])
        return ids, lps

    return sample


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "gae"])
def test_bandit_reward_rises(estimator):
    n_prompts, G, steps = 4, 8, 25
    critic = estimator == "gae"
    cfg = ppo.PPOConfig(advantage_estimator=estimator, use_critic=critic, lr=1e-2, critic_lr=1e-2,
                        num_mini_batches=1, weight_decay=0.0)
    fns = ppo.build(MC, cfg)
    state = ppo.init_train_state(MC, cfg, _params(), jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    prompts = np.repeat(rng.integers(3, MC.vocab_size, (n_prompts, PROMPT_LEN)), G, axis=0).astype(np.int32)
    B, T = prompts.shape[0], PROMPT_LEN + RESP_LEN
    lm = np.zeros((B, T), np.float32)
    lm[:, PROMPT_LEN:] = 1
    key = jax.random.PRNGKey(2)
    rewards = []
    for _ in range(steps):
        key, sub = jax.random.split(key)
        ids, lps = _sampler()(state.params, prompts, sub)
        score = (np.asarray(ids)[:, PROMPT_LEN:] == TARGET).mean(-1).astype(np.float32)
        rewards.append(float(score.mean()))
        roll = dict(input_ids=ids, attention_mask=np.ones((B, T), np.int32), loss_mask=lm, sampler_logprobs=lps,
                    scores=score, group_ids=np.repeat(np.arange(n_prompts), G).astype(np.int32))
        state, m = fns.step(state, fns.prepare(state, roll))
        f = M.finalize(m)
        assert f["sampler_abs_logprob_diff"] < 1e-4  # sampler and trainer agree at T=1
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    print(estimator, [round(r, 2) for r in rewards])
    assert first < 0.15 and last > 0.6, (first, last)  # from ~1/64 per token


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="use_critic"):
        ppo.PPOConfig(advantage_estimator="gae")
    with pytest.raises(ValueError, match="loss_agg_mode"):
        ppo.PPOConfig(loss_agg_mode="mean")
    with pytest.raises(ValueError, match="total_steps"):
        ppo.PPOConfig(lr_schedule="cosine")
    cfg = ppo.PPOConfig(lr=1.0, lr_schedule="linear", warmup_steps=2, total_steps=6)
    sched = ppo.lr_schedule(cfg.lr, cfg)
    np.testing.assert_allclose([float(sched(i)) for i in range(7)], [0, 0.5, 1, 0.75, 0.5, 0.25, 0], atol=1e-6)
    d = ppo.PPOConfig()
    assert (d.clip_eps_low, d.clip_eps_high, d.dual_clip, d.loss_agg_mode, d.kl_coef, d.entropy_coef, d.lr,
            d.max_grad_norm) == (0.2, 0.2, 3.0, "token-mean", 0.0, 0.0, 1e-6, 1.0)


def test_step_rejects_bad_batch(grpo_setup):
    cfg, fns, state = grpo_setup
    batch = dict(fns.prepare(state, _rollout(seed=0)))
    with pytest.raises(ValueError, match="old_logprobs"):
        fns.step(state, {k: v for k, v in batch.items() if k != "old_logprobs"})
    with pytest.raises(ValueError, match="divisible"):
        fns.step(state, {k: v[:7] for k, v in batch.items()})


def test_chunked_lm_head_matches_full_logits():
    mc = MC.replace(tie_word_embeddings=True)  # the tied branch; untied reads params["lm_head"] the same way
    params = {k: v for k, v in _params().items() if k != "lm_head"}
    r = _rollout(B=4, T=11, seed=7)  # T-1 = 10 positions, chunk 4: a padded last chunk
    ids, attn = jnp.asarray(r["input_ids"]), jnp.asarray(r["attention_mask"])
    w = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 11)).astype(np.float32))

    def f(p, chunk):
        lp, ent = ppo.policy_logprobs_entropy(mc, p, ids, attn, None, 0.7, chunk)
        return (lp * w[0]).sum() + (ent * w[1]).sum(), (lp, ent)

    g = jax.jit(jax.value_and_grad(f, has_aux=True), static_argnums=1)
    (_, (lp0, e0)), g0 = g(params, None)
    (_, (lp1, e1)), g1 = g(params, 4)
    np.testing.assert_allclose(np.asarray(lp1), np.asarray(lp0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(e1), np.asarray(e0), atol=1e-5)
    assert np.all(np.asarray(lp1)[:, 0] == 0)
    assert _max_diff(g0, g1) < 1e-5


def test_prepare_folds_kl_into_scores(grpo_setup):
    from pilotrl_jax.rl import advantages as A

    _, fns0, state = grpo_setup
    cfg = ppo.PPOConfig(num_mini_batches=1, num_micro_batches=2, kl_coef=0.5, kl_in_reward=True, kl_estimator="k1")
    fns = ppo.build(MC, cfg, donate=False)
    assert fns.logprobs is fns0.logprobs  # shared compiled function
    ref_params = jax.tree.map(lambda x: x * 1.05, _params())
    r = _rollout(seed=8)
    b = fns.prepare(state, r, ref_params=ref_params)
    assert "ref_logprobs" in b and not cfg.kl_in_loss
    kl = ((np.asarray(b["old_logprobs"]) - np.asarray(b["ref_logprobs"])) * r["loss_mask"]).sum(-1)
    assert np.abs(kl).max() > 0
    want = A.grpo(r["scores"] - 0.5 * kl, r["loss_mask"], r["group_ids"], 8)
    np.testing.assert_allclose(np.asarray(b["advantages"]), np.asarray(want), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="ref_params"):
        fns.prepare(state, r)


def test_grpo_advantages_keep_both_signs_as_they_are():
    """make_advantage_fn's GRPO advantages are adv_lib.grpo's, negative ones included (no shaping on top)."""
    from pilotrl_jax.rl import advantages as A

    r = _rollout(seed=9)
    batch = {k: jnp.asarray(v) for k, v in r.items() if k in ("scores", "group_ids", "loss_mask")}
    got, _ = ppo.make_advantage_fn(ppo.PPOConfig())(batch)
    got = np.asarray(got)
    np.testing.assert_allclose(got, np.asarray(A.grpo(r["scores"], r["loss_mask"], r["group_ids"], 8)),
                               rtol=1e-5, atol=1e-6)
    assert (got < 0).any() and (got > 0).any()


def test_target_kl_skips_the_rest_of_the_step_once_a_mini_batch_leaves_the_trust_region():
    def run(target_kl):
        cfg = ppo.PPOConfig(lr=1e-2, num_mini_batches=2, epochs=2, weight_decay=0.0, target_kl=target_kl)
        fns = ppo.build(MC, cfg, donate=False)
        state = ppo.init_train_state(MC, cfg, _params(), jax.random.PRNGKey(1))
        new, m = fns.step(state, fns.prepare(state, _rollout(seed=3)))
        return new, M.finalize(m)

    free, f_free = run(None)
    wide, f_wide = run(1e9)
    tight, f_tight = run(1e-9)  # the first update (ratio exactly 1 before it) is the only one applied
    assert int(update_count(free.opt_state)) == 4 and f_free["kl_stopped"] == 0.0
    assert _max_diff(free.params, wide.params) == 0.0 and f_wide["kl_stopped"] == 0.0
    assert int(update_count(tight.opt_state)) == 1
    assert f_tight["kl_stopped"] == 0.75 and f_tight["skipped_update"] == 0.0
    assert _max_diff(tight.params, _params()) > 0 and _max_diff(tight.params, free.params) > 0
    with pytest.raises(ValueError, match="target_kl=0"):
        ppo.PPOConfig(target_kl=0.0)
