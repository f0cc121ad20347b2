"""Logit parity of our Flax LLaMA with transformers' torch LlamaForCausalLM."""
import jax
import numpy as np
import pytest
import torch

from pilotrl_jax.models import hf_io, llama

CONFIGS = {
    "gqa": dict(),
    "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "llama3_rope": dict(rope_theta=500000.0, max_position_embeddings=256,
                        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=64)),
    "odd_sizes": dict(vocab_size=61, hidden_size=36, intermediate_size=50, num_attention_heads=3,
                      num_key_value_heads=1, head_dim=10, num_hidden_layers=3),
    "linear_rope": dict(rope_scaling=dict(rope_type="linear", factor=2.0)),
}


def _torch_logits(model, ids, mask=None):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(np.asarray(ids)),
                    attention_mask=None if mask is None else torch.tensor(np.asarray(mask)))
    return out.logits.float().numpy()


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("scan", [False, True])
def test_logits_match_transformers(hf_factory, name, scan):
    model, path = hf_factory(**CONFIGS[name])
    config, params = hf_io.load_hf(path, scan_layers=scan)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, config.vocab_size, size=(2, 150))  # past original_max_pos for llama3 rope
    ours = np.asarray(jax.jit(lambda p, x: llama.forward(config, p, x))(params, ids))
    ref = _torch_logits(model, ids)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4


def test_left_padded_batch_matches_transformers(hf_factory):
    model, path = hf_factory()
    config, params = hf_io.load_hf(path)
    rng = np.random.default_rng(1)
    ids = rng.integers(3, config.vocab_size, size=(3, 20))
    mask = np.ones_like(ids)
    mask[1, :7] = 0
    mask[2, :3] = 0
    ids = np.where(mask == 1, ids, 0)
    ours = np.asarray(llama.forward(config, params, ids, attention_mask=mask))
    ref = _torch_logits(model, ids, mask)
    real = mask.astype(bool)
    assert np.abs(ours[real] - ref[real]).max() <= 1e-4


def test_remat_and_scan_give_same_logits(hf_factory):
    _, path = hf_factory()
    ids = np.arange(3, 40)[None]
    c0, p0 = hf_io.load_hf(path)
    c1, p1 = hf_io.load_hf(path, scan_layers=True, remat_policy="dots")
    a = np.asarray(llama.forward(c0, p0, ids))
    b = np.asarray(llama.forward(c1, p1, ids))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bf16_compute_is_close_to_fp32(hf_factory):
    _, path = hf_factory()
    ids = np.arange(3, 40)[None]
    c32, p32 = hf_io.load_hf(path)
    c16, p16 = hf_io.load_hf(path, dtype="bfloat16")
    a = np.asarray(llama.forward(c32, p32, ids))
    b = np.asarray(llama.forward(c16, p16, ids))
    assert b.dtype == np.float32
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max() + 0.05
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.8


@pytest.mark.parametrize("per_layer", [False, True])
def test_cache_path_matches_full_forward(hf_factory, per_layer):
    """Prefill chunks and single-token steps (the decode form) against the KV cache give the full
    forward's logits, with the stacked cache and with one array per layer."""
    _, path = hf_factory()
    config, params = hf_io.load_hf(path)
    ids = np.random.default_rng(2).integers(3, config.vocab_size, size=(2, 24))
    full = np.asarray(llama.forward(config, params, ids))
    cache = llama.init_cache(config, 2, 32)
    if per_layer:
        cache = {n: [x[i] for i in range(config.num_layers)] for n, x in cache.items()}
    outs = []
    for lo, hi in ((0, 10), (10, 11), (11, 12), (12, 24)):
        pos = np.broadcast_to(np.arange(lo, hi), (2, hi - lo))
        lg, cache = llama.forward_with_cache(config, params, ids[:, lo:hi], pos, cache)
        outs.append(np.asarray(lg))
    assert isinstance(cache["k"], list) == per_layer
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


def test_per_layer_cache_is_refused_with_scanned_layers(hf_factory):
    _, path = hf_factory()
    config, params = hf_io.load_hf(path, scan_layers=True)
    cache = llama.init_cache(config, 1, 8)
    cache = {n: [x[i] for i in range(config.num_layers)] for n, x in cache.items()}
    with pytest.raises(ValueError, match="scan_layers=False"):
        llama.forward_with_cache(config, params, np.ones((1, 1)), np.zeros((1, 1)), cache)


@pytest.mark.parametrize("chunk", [16])
def test_query_blocked_attention_matches_the_full_matrix(hf_factory, chunk):
    """Blocked causal attention (the training path) gives the full matrix's logits and gradients,
    with left and right padding and a length that is not a multiple of the block."""
    model, path = hf_factory()
    config, params = hf_io.load_hf(path)
    rng = np.random.default_rng(3)
    ids = rng.integers(3, config.vocab_size, size=(3, 150))
    mask = np.ones_like(ids)
    mask[1, :40] = 0  # left padding
    mask[2, 97:] = 0  # right padding
    ids = np.where(mask == 1, ids, 0)
    full_cfg, blocked_cfg = config.replace(attention_query_chunk=0), config.replace(attention_query_chunk=chunk)

    def loss(cfg, p):
        lp = jax.nn.log_softmax(llama.forward(cfg, p, ids, attention_mask=mask), -1)
        return (lp[:, :-1].max(-1) * mask[:, :-1] * mask[:, 1:]).sum()  # real positions only

    real = mask.astype(bool)
    # jitted, as training runs it (op by op, each block's ops compile on their own: over twice as slow)
    a = np.asarray(jax.jit(lambda p: llama.forward(full_cfg, p, ids, attention_mask=mask))(params))
    b = np.asarray(jax.jit(lambda p: llama.forward(blocked_cfg, p, ids, attention_mask=mask))(params))
    np.testing.assert_allclose(b[real], a[real], atol=1e-5)
    np.testing.assert_allclose(b[real], _torch_logits(model, ids, mask)[real], atol=1e-4)
    ga = jax.jit(jax.grad(lambda p: loss(full_cfg, p)))(params)
    gb = jax.jit(jax.grad(lambda p: loss(blocked_cfg, p)))(params)
    for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=2e-4, rtol=1e-4)
    with pytest.raises(Exception, match="attention_query_chunk"):
        config.replace(attention_query_chunk=-1)
