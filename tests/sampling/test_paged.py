"""PagedSamplerEngine: the dense engine's tokens and log-probs (bit for bit), pages, admission, preemption."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pilotrl_jax.sampling import SamplerEngine
from pilotrl_jax.sampling import paged_cache as pc
from pilotrl_jax.sampling.paged import PagedSamplerEngine

PROMPTS = [[1, 5, 9, 13, 17], [1, 7], [1] + list(range(3, 40)), [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69]]


def _pair(config, params, *, num_pages=64, seed=3, impl="xla", **kw):
    """A dense engine (no shared prefix) and a paged one with the same seed and settings."""
    dense = SamplerEngine(config, params, max_batch=4, max_len=256, seed=seed, share_prefix=False, **kw)
    paged = PagedSamplerEngine(config, params, max_len=256, num_pages=num_pages, page_size=16, seed=seed,
                               paged_attention_impl=impl, **kw)
    return dense, paged


def _turns(dense, paged, temperature, top_p=1.0, turns=3):
    """Run the same multi-turn schedule (rows of very different lengths, skipped turns, appended observations)
    on both engines; returns the per-call result pairs."""
    rng = np.random.default_rng(0)
    hd, hp = dense.start(PROMPTS), paged.start(PROMPTS)
    assert hd == hp
    out = []
    for turn in range(turns):
        active = hd if turn % 2 == 0 else hd[1:3]
        limits = [40, 7, 25, 33][:len(active)] if turn == 0 else 12 + 5 * turn
        rd = dense.generate(active, limits, temperature=temperature, top_p=top_p)
        rp = paged.generate(active, limits, temperature=temperature, top_p=top_p)
        out.append((rd, rp))
        obs = [rng.integers(3, 100, size=rng.integers(1, 30)).tolist() for _ in active]
        dense.append(active, obs)
        paged.append(active, obs)
    for h in hd:
        assert dense.tokens(h) == paged.tokens(h)
    return out


@pytest.mark.parametrize("temperature,top_p,impl", [(0.0, 1.0, "xla"), (1.0, 0.9, "xla"), (1.0, 0.9, "window")])
def test_multi_turn_tokens_and_logprobs_equal_the_dense_engine(tiny_hf, temperature, top_p, impl):
    _, config, params = tiny_hf
    dense, paged = _pair(config, params, impl=impl)
    for rd, rp in _turns(dense, paged, temperature, top_p):
        for a, b in zip(rd, rp):
            assert (a.tokens, a.logprobs, a.stop_reason) == (b.tokens, b.logprobs, b.stop_reason)  # bit-identical
    assert paged.stats["preemptions"] == 0
    assert paged.stats["prefill_tokens"] == dense.stats["prefill_tokens"]
    # pages follow the tokens cached: each row holds what it wrote, rounded up to pages (+ a decode chunk ahead)
    held = sum(paged._eps[h].cached for h in range(4))
    assert pc.TRASH_PAGE not in sum(paged._pages.values(), [])
    assert held / 16 <= paged.pages_in_use <= held / 16 + 4 * (64 // 16 + 1)


@pytest.mark.parametrize("impl", ["xla", "window"])
def test_stop_strings_and_cache_full_equal_the_dense_engine(tiny_hf, toy_tokenizer, impl):
    _, config, params = tiny_hf
    free = SamplerEngine(config, params, max_batch=4, max_len=256, share_prefix=False)
    r = free.generate(free.start(PROMPTS), 20)
    stops = [toy_tokenizer.pieces[x.tokens[6 + i]] + toy_tokenizer.pieces[x.tokens[7 + i]] for i, x in enumerate(r)]
    dense, paged = _pair(config, params, tokenizer=toy_tokenizer, stop_strings=stops, decode_chunk=8, impl=impl)
    hd, hp = dense.start(PROMPTS), paged.start(PROMPTS)
    for _ in range(2):
        rd, rp = dense.generate(hd, 20), paged.generate(hp, 20)
        assert [(a.tokens, a.logprobs, a.stop_reason, a.stop_string) for a in rd] == \
               [(b.tokens, b.logprobs, b.stop_reason, b.stop_string) for b in rp]
    assert any(b.stop_reason == "stop_string" for b in rp)
    # a row that reaches max_len stops with cache_full, as in the dense engine
    d = SamplerEngine(config, params, max_batch=1, max_len=64, share_prefix=False)
    p = PagedSamplerEngine(config, params, max_len=64, num_pages=4, page_size=16, paged_attention_impl=impl)
    a, b = d.generate(d.start([PROMPTS[2]]), 100)[0], p.generate(p.start([PROMPTS[2]]), 100)[0]
    assert b.stop_reason == "cache_full" and (a.tokens, a.logprobs) == (b.tokens, b.logprobs)


@pytest.mark.parametrize("temperature,impl", [(1.0, "xla"), (1.0, "window")])
def test_preempted_rows_finish_with_the_tokens_of_an_unpreempted_run(tiny_hf, temperature, impl):
    _, config, params = tiny_hf
    # 16 pages of 16 slots: exactly one 256-token episode, so four growing rows keep preempting each other
    dense, paged = _pair(config, params, num_pages=16, seed=5, decode_chunk=16, impl=impl)
    for rd, rp in _turns(dense, paged, temperature, turns=4):
        for a, b in zip(rd, rp):
            assert a.tokens == b.tokens and a.stop_reason == b.stop_reason
            # recomputed keys/values come from a prefill instead of decode steps: equal to float rounding
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert paged.stats["preemptions"] > 0 and paged.stats["paged_rounds"] > paged.stats["generate_calls"]
    assert paged.pages_in_use <= 16


def test_admission_by_free_pages_and_release(tiny_hf):
    _, config, params = tiny_hf
    eng = PagedSamplerEngine(config, params, max_batch=8, max_len=256, num_pages=20, page_size=16,
                             reserve_len=64, paged_attention_impl="xla")
    assert eng.num_free == 5  # 20 pages // 4 pages reserved per episode
    hs = eng.start(PROMPTS[:2])
    assert eng.num_free == 3
    eng.generate(hs, 100)  # rows outgrow their reserve: they hold more pages, fewer episodes fit
    assert eng.pages_in_use >= 2 * 6 and eng.num_free <= 1
    eng.release(hs)
    assert eng.pages_in_use == 0 and eng.num_free == 5
    # max_batch still caps the rows, pages or not
    big = PagedSamplerEngine(config, params, max_batch=2, max_len=256, num_pages=64, page_size=16,
                             paged_attention_impl="xla")
    assert big.num_free == 2
    with pytest.raises(ValueError, match="rows are free"):
        big.start(PROMPTS[:3])


def test_bad_settings_are_refused_with_the_numbers(tiny_hf):
    _, config, params = tiny_hf
    with pytest.raises(ValueError, match=r"num_pages=15 pages of page_size=16 tokens hold 240 tokens, less than one "
                                         r"episode of max_len=256 tokens \(16 pages\); raise num_pages to >= 16"):
        PagedSamplerEngine(config, params, max_len=256, num_pages=15, page_size=16)
    with pytest.raises(ValueError, match="share_prefix"):
        PagedSamplerEngine(config, params, max_len=256, num_pages=16, share_prefix=True)
    with pytest.raises(ValueError, match="page_size=0"):
        PagedSamplerEngine(config, params, max_len=256, num_pages=16, page_size=0)
    with pytest.raises(ValueError, match="reserve_len=300"):
        PagedSamplerEngine(config, params, max_len=256, num_pages=16, reserve_len=300)
    with pytest.raises(ValueError, match="paged_attention_impl='flash'"):
        PagedSamplerEngine(config, params, max_len=256, num_pages=16, paged_attention_impl="flash")
    if jax.default_backend() != "tpu":
        with pytest.raises(ValueError, match="needs a TPU"):
            PagedSamplerEngine(config, params, max_len=256, num_pages=16, paged_attention_impl="ragged")
    assert [pc.resolve_paged_impl("auto", on=b) for b in ("tpu", "gpu", "cpu")] == ["ragged", "xla", "window"]


def test_gather_attention_matches_the_ragged_kernel_reference():
    """The XLA path's view of the pages and its masked attention equal the ragged kernel's own reference
    (`ref_ragged_paged_attention`: same page/kv_len/cu_q_lens contract as the Pallas kernel) on CPU."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention.kernel import ref_ragged_paged_attention

    from pilotrl_jax.models.llama import _attend

    rng = np.random.default_rng(0)
    P, ps, K, G, hd, B, T, W = 12, 8, 2, 3, 16, 3, 4, 32
    pool = jnp.asarray(rng.standard_normal((P, ps, 2 * K, hd)), jnp.float32)
    bt = jnp.asarray([[3, 7, 1, 0], [5, 2, 0, 0], [9, 4, 11, 6]], jnp.int32)
    last = np.array([20, 11, 31])  # rows of different lengths; T queries each ending at `last`
    pos = jnp.asarray(last[:, None] - T + 1 + np.arange(T)[None], jnp.int32)
    q = jnp.asarray(rng.standard_normal((B, T, K * G, hd)), jnp.float32)
    ck, cv = pc.gather_view(pool, bt, W)
    mask = jnp.arange(W)[None, None, :] <= pos[:, :, None]
    ours = _attend(q.reshape(B, T, K, G, hd), ck, cv, mask, jnp.float32).reshape(B, T, K * G, hd)
    ref = ref_ragged_paged_attention(q.reshape(B * T, K * G, hd), pool, jnp.asarray(last + 1, jnp.int32), bt,
                                     jnp.arange(B + 1, dtype=jnp.int32) * T, jnp.array([B], jnp.int32),
                                     sm_scale=1.0 / np.sqrt(hd))
    np.testing.assert_allclose(np.asarray(ours).reshape(B * T, K * G, hd), np.asarray(ref), atol=2e-6)


def test_config_switch_builds_the_paged_engine_or_refuses_by_key(tiny_hf, toy_tokenizer):
    import types

    from pilotrl_jax.train import config as C
    from pilotrl_jax.train.evaluation import make_engine

    _, config, params = tiny_hf
    c = C.base_config()
    c.agent.token_budget = 256
    ctx = types.SimpleNamespace(cfg=c, model_cfg=config, tokenizer=toy_tokenizer, mesh=None)
    assert type(make_engine(ctx, params, rows=4, seed=0)) is SamplerEngine  # default: dense, as before
    with pytest.raises(ValueError, match="rollout.page_size=32 would be ignored"):
        c.rollout.page_size = 32
        C.validate(c)
    c.rollout.kv_cache = "paged"
    with pytest.raises(ValueError, match="share_prefix=True does not work with rollout.kv_cache='paged'"):
        C.validate(c)
    c.rollout.share_prefix = False
    c.rollout.page_reserve_tokens = 300
    with pytest.raises(ValueError, match="page_reserve_tokens=300 is above agent.token_budget=256"):
        C.validate(c)
    c.rollout.page_reserve_tokens = 64
    C.validate(c)
    eng = make_engine(ctx, params, rows=4, seed=0)
    assert isinstance(eng, PagedSamplerEngine) and eng.page_size == 32 and eng.reserve_len == 64
    assert eng.num_pages == 4 * 8 and eng.max_batch == 4  # cache_pages=0: the dense cache's memory at 4 rows
    assert make_engine(ctx, params, rows=4, seed=0, episodes=32).max_batch == 32  # up to all episodes
    c.rollout.cache_pages = 100
    assert make_engine(ctx, params, rows=4, seed=0).num_pages == 100
    c.rollout.kv_cache = "pages"
    with pytest.raises(ValueError, match="rollout.kv_cache='pages'; expected 'dense' or 'paged'"):
        C.validate(c)


def test_tensor_parallel_mesh_matches_one_device(tiny_hf):
    from pilotrl_jax import sharding as sh

    _, config, params = tiny_hf
    mesh = sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 2}, jax.devices()[:2])
    one = PagedSamplerEngine(config, params, max_len=256, num_pages=32, page_size=16, paged_attention_impl="xla")
    two = PagedSamplerEngine(config, params, max_len=256, num_pages=32, page_size=16, paged_attention_impl="xla",
                             mesh=mesh)
    assert two.pools[0].sharding.spec[2] == "tensor"  # each chip holds its kv heads of every page
    a = one.generate(one.start(PROMPTS), 12, temperature=1.0)
    b = two.generate(two.start(PROMPTS), 12, temperature=1.0)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    np.testing.assert_allclose([r.logprobs for r in a], [r.logprobs for r in b], atol=1e-5)
    with pytest.raises(ValueError, match="data x fsdp > 1"):
        PagedSamplerEngine(config, params, max_len=256, num_pages=32,
                           mesh=sh.make_mesh({"data": 1, "fsdp": 2, "tensor": 1}, jax.devices()[:2]))


@pytest.mark.slow
def test_smollm2_paged_equals_dense_over_two_turns():
    """SmolLM2-135M (scanned checkpoint, decoded per layer): rows of different lengths, greedy and sampled,
    an appended observation: the paged engine's tokens and log-probs are the dense engine's."""
    import transformers

    from pilotrl_jax.models import hf_io
    from pilotrl_jax.models.smollm2 import ensure_smollm2_hf

    path = ensure_smollm2_hf()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    config, params = hf_io.load_hf(path, scan_layers=True)
    prompts = [tok.encode("<|im_start|>user\nYou are in a kitchen. Put a clean mug in the coffee machine. "
                          "Write a short plan.<|im_end|>\n<|im_start|>assistant\n"), tok.encode("Hello")]
    obs = tok.encode("<|im_end|>\n<|im_start|>user\nObservation: the mug is dirty.<|im_end|>\n"
                     "<|im_start|>assistant\n")
    dense = SamplerEngine(config, params, max_batch=2, max_len=256, share_prefix=False, seed=1)
    paged = PagedSamplerEngine(config, params, max_len=256, num_pages=32, page_size=16, seed=1,
                               paged_attention_impl="xla")
    hd, hp = dense.start(prompts), paged.start(prompts)
    for T in (0.0, 1.0):
        rd, rp = dense.generate(hd, 10, temperature=T), paged.generate(hp, 10, temperature=T)
        assert [(r.tokens, r.logprobs) for r in rd] == [(r.tokens, r.logprobs) for r in rp]
        dense.append(hd, [obs, obs[:5]])
        paged.append(hp, [obs, obs[:5]])


def test_ragged_path_plumbing_with_a_stand_in_kernel(tiny_hf, monkeypatch):
    """The `ragged` path end to end (keys/values written into the pool before attention, kv_lens, cu_q_lens,
    padding and finished rows, the block table's width, the per-layer module) with the Pallas kernel
    replaced by a stand-in of the same contract (XLA: gather the pages, causal mask from kv_len), since the
    kernel itself cannot run off TPU in this JAX (see test_gather_attention_matches_the_ragged_kernel_reference)."""
    import jax.experimental.pallas.ops.tpu.ragged_paged_attention as rpa

    from pilotrl_jax.models.llama import _attend

    def stand_in(q, pool, kv_lens, pages, cu, num_seqs, *, sm_scale, **kw):
        (B, nb), (_, ps, K2, hd) = pages.shape, pool.shape
        T, H, S = q.shape[0] // B, q.shape[1], nb * ps
        assert np.allclose(sm_scale, 1 / np.sqrt(hd)) and cu.shape == (B + 1,) and num_seqs.shape == (1,)
        k, v = pc.gather_view(pool, pages, S)
        qpos = kv_lens[:, None] - T + jnp.arange(T)[None]
        mask = jnp.arange(S)[None, None, :] <= qpos[:, :, None]
        out = _attend(q.reshape(B, T, K2 // 2, H // (K2 // 2), hd), k, v, mask, q.dtype)
        return out.reshape(B * T, H, hd)

    monkeypatch.setattr(rpa, "ragged_paged_attention", stand_in)
    _, config, params = tiny_hf
    # one episode's worth of pages: rows of different lengths, padding rows, preemption and recompute
    dense, paged = _pair(config, params, num_pages=16, seed=5, decode_chunk=16, impl="xla")
    paged.impl = "ragged"  # (resolve_paged_impl refuses it off TPU)
    for rd, rp in _turns(dense, paged, 1.0, turns=4):
        for a, b in zip(rd, rp):
            assert a.tokens == b.tokens
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert paged.stats["preemptions"] > 0
