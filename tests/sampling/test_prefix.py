"""Shared-prefix KV reuse: the same tokens and log-probs as per-episode prefill; bucket helpers."""
import numpy as np
import pytest

from pilotrl_jax.sampling import SamplerEngine
from pilotrl_jax.sampling.cache import common_prefix_length, fine_bucket
from pilotrl_jax.sampling.engine import MIN_SHARED

SYSTEM = [1] + [int(x) for x in np.random.default_rng(5).integers(3, 100, size=60)]  # a 61-token shared prompt
TAILS = [[11, 12, 13], [20, 21, 22, 23, 24, 25, 26], [30], [40, 41, 42, 43, 44]]


def _episodes(eng, temperature, top_p=1.0):
    """Two turns of three episodes sharing SYSTEM, then a second wave (released rows, a partial match)."""
    out = []
    hs = eng.start([SYSTEM + t for t in TAILS[:3]])
    out += eng.generate(hs, 9, temperature=temperature, top_p=top_p)
    eng.append(hs[:2], [[50, 51, 52], [53]])
    out += eng.generate(hs[:2], 7, temperature=temperature, top_p=top_p)
    eng.release(hs[:2])
    # a lone fresh episode sharing only SYSTEM[:40] with the stored prefix, and one sharing all of it
    hs2 = eng.start([SYSTEM[:40] + [77, 78, 79], SYSTEM + TAILS[3]])
    out += eng.generate(hs2 + hs[2:], 8, temperature=temperature, top_p=top_p)
    return [(r.tokens, np.asarray(r.logprobs)) for r in out], eng


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (0.8, 1.0), (0.6, 0.9)])
def test_shared_prefix_gives_the_same_tokens_and_logprobs(tiny_hf, temperature, top_p):
    _, config, params = tiny_hf
    ref, plain = _episodes(SamplerEngine(config, params, max_batch=4, max_len=128, seed=2, share_prefix=False),
                           temperature, top_p)
    got, eng = _episodes(SamplerEngine(config, params, max_batch=4, max_len=128, seed=2), temperature, top_p)
    for (t0, l0), (t1, l1) in zip(ref, got):
        assert t0 == t1
        np.testing.assert_allclose(l0, l1, atol=1e-5)
    st = eng.stats
    assert plain.stats["prefix_tokens"] == 0
    # SYSTEM (less nothing: every tail adds >= 1 token) reused by 3 + 1 episodes, SYSTEM[:40] by one
    assert st["prefix_tokens"] == 4 * len(SYSTEM) + 40 and st["prefix_built_tokens"] == len(SYSTEM)
    assert st["prefill_tokens"] == plain.stats["prefill_tokens"] - st["prefix_tokens"] + st["prefix_built_tokens"]


def test_a_group_shares_its_whole_prompt_and_matches_without(tiny_hf):
    _, config, params = tiny_hf
    prompt = SYSTEM + TAILS[1]
    res = {}
    for share in (False, True):
        eng = SamplerEngine(config, params, max_batch=8, max_len=128, seed=4, share_prefix=share)
        hs = eng.start([prompt] * 4, seeds=[1, 2, 3, 4])  # a GRPO group: 4 samples of one task
        res[share] = eng.generate(hs, 12, temperature=1.0)
    assert eng.stats["prefix_tokens"] == 4 * (len(prompt) - 1)  # all but the pending last token
    for a, b in zip(res[False], res[True]):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_the_stored_prefix_is_dropped_when_params_change(tiny_hf):
    _, config, params = tiny_hf
    new = {k: v for k, v in params.items()}
    new["embed"] = params["embed"] * 1.5  # other weights: the old prefix's keys/values are wrong now
    eng = SamplerEngine(config, params, max_batch=4, max_len=128, seed=0)
    hs = eng.start([SYSTEM + t for t in TAILS[:2]])
    eng.generate(hs, 4)
    eng.release(hs)
    eng.params = new
    hs = eng.start([SYSTEM + TAILS[2]])
    got = eng.generate(hs, 10)[0]
    ref = SamplerEngine(config, new, max_batch=4, max_len=128, seed=0, share_prefix=False)
    want = ref.generate(ref.start([SYSTEM + TAILS[2]]), 10)[0]
    assert got.tokens == want.tokens
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)


def test_short_prefixes_are_not_shared(tiny_hf):
    _, config, params = tiny_hf
    eng = SamplerEngine(config, params, max_batch=4, max_len=128)
    eng.generate(eng.start([SYSTEM[:MIN_SHARED - 1] + [5], SYSTEM[:MIN_SHARED - 1] + [6]]), 2)
    assert eng.stats["prefix_tokens"] == 0


def test_fine_buckets_and_prefix_lengths():
    assert [fine_bucket(n, 16, 256) for n in (1, 16, 17, 33, 70, 100, 200, 300)] == [16, 16, 32, 48, 80, 112, 224, 256]
    assert [fine_bucket(n, 64, 2048) for n in (513, 700, 1100, 2000, 5000)] == [640, 768, 1280, 2048, 2048]
    assert [fine_bucket(n, 64, 2048, 2) for n in (300, 513, 700, 1100, 1600)] == [384, 768, 768, 1536, 2048]
    for n in range(1, 3000, 7):
        b = fine_bucket(n, 64, 1 << 20)
        assert n <= b <= max(64, 1.25 * n + 64)
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix_length([], [1]) == 0


def test_power_of_two_buckets_when_fine_buckets_is_off(tiny_hf):
    """fine_buckets=False: windows and prefill chunks are powers of two (the shapes of the engine before
    finer buckets); on, a 300-slot call reads a 384-slot window and a 300-token prefill is not padded
    to 512. Both give the same greedy tokens."""
    _, config, params = tiny_hf
    prompt = [1] + [int(x) for x in np.random.default_rng(9).integers(3, 100, size=299)]
    out = {}
    for fine in (False, True):
        eng = SamplerEngine(config, params, max_batch=1, max_len=1024, seed=0, share_prefix=False, fine_buckets=fine)
        res = eng.generate(eng.start([prompt]), 4, temperature=0.0)
        out[fine] = (res[0].tokens, dict(eng.stats))
    assert out[False][0] == out[True][0]
    assert out[False][1]["rows_x_window"] == 512 and out[True][1]["rows_x_window"] == 384
    assert out[False][1]["prefill_slots"] == 256 + 256 and out[True][1]["prefill_slots"] < 512
