"""A jitted KV-cache generation engine with multi-turn continuation (`SamplerEngine`).

Life of an episode (the rollout loop's view)::

    eng = SamplerEngine(config, params, max_batch=32, max_len=4096, tokenizer=tok,
                        stop_token_ids=tok_eos_ids, stop_strings=("</action>", "</global_plan>"))
    hs = eng.start(prompts)                      # list[list[int]] -> handles (ints); nothing runs yet
    res = eng.generate(hs, max_new_tokens=256, temperature=1.0)   # -> [GenerationResult] per handle
    eng.append(hs[:3], obs_token_lists)          # observation tokens for some episodes
    res = eng.generate(hs[:3], 256, temperature=1.0)              # continues from the cached history
    eng.release(hs)                              # rows are free for new episodes

Design:
- One KV cache (one [max_batch, max_len, kv_heads, head_dim] array per layer: `cache_structure`)
  holds every live episode in a row. A model that scans its layers (scan_layers=True, for training)
  is decoded layer by layer all the same (`decode_config`): the engine keeps a per-layer copy of the
  params, made when they are assigned (`engine.params = ...`, once per weight sync), because a scanned
  decode step slices and re-stacks the whole stacked cache (2-3.4x slower per step on CPU);
  a token's key/value sits at slot == its position (`llama.forward_with_cache`). Every episode keeps
  its full token list; all tokens but the last ("pending") are in the cache. `start`/`append` only
  record tokens; the next `generate` pre-fills what is not cached yet (chunked), then feeds the
  pending token and decodes. So history is pre-filled exactly once and a turn costs one prefill of
  the new tokens plus the decode steps.
- Static shapes: a call works on B rows (a power of two, >= the mesh batch size; padding rows point
  past the cache and write nothing) and a window of the first W cache slots (covering the longest row
  plus max_new_tokens: a power of two >= 64 up to 256, then 2 sizes per octave, `cache.fine_bucket`;
  at most max_len), so attention reads only W slots: the call gathers its rows' first W slots and
  scatters them back (cheaper than decoding in the whole cache with a window: measured). Prefill
  chunks are fine buckets of 16 .. prefill_chunk tokens. A run compiles a handful of times:
  `pilotrl_jax.traces.trace_counts()` counts traces per jitted function.
- Shared prefix (share_prefix=True): when two or more fresh episodes of a call share >= MIN_SHARED
  leading tokens (the system prompt; a GRPO group's whole prompt), those are pre-filled once (one
  row), kept, and copied into every fresh episode's row that starts with (a part of) them, in this
  call or later ones, until the params change. Tokens equal per-episode prefill's; log-probs agree
  to float rounding (~1e-5 on SmolLM2: the prefix is computed in another batch shape, as any change
  of batch composition does).
- Decode runs on device in a `lax.while_loop` of up to `decode_chunk` steps that ends early when
  every row is done. Stop strings are checked on the host between chunks (`stops.StopStrings`);
  a chunk also ends once every running row sampled a token that could complete a stop string.
  Tokens sampled past a stop string are dropped (their cache slots are overwritten later).
- Randomness: the token at position p of an episode is drawn with fold_in(episode_key, p), so the
  result does not depend on batch composition, buckets or chunking; episode keys come from the
  engine seed and the episode number (or pass `seeds` to `start`). Deterministic given the seed.
- Log-probs: `log_softmax(logits / T)[token]` (before top-k/top-p); greedy (T=0) reports T=1.
- With `mesh`, params are placed with `llama.param_shardings` and the cache's batch dim is sharded
  over (data, fsdp) by the rules in `pilotrl_jax.sharding`.
- Cache buffers are donated to every jitted step (updated in place).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from pilotrl_jax import sharding as sh
from pilotrl_jax.buckets import bucket_length
from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.sampling import filters
from pilotrl_jax.sampling.cache import (CACHE_AXES, _gather, _put_prefix, _scatter, cache_structure,  # noqa: F401
                                         common_prefix_length, constrain, decode_config, decode_params,
                                         fine_bucket)
from pilotrl_jax.sampling.stops import StopStrings, check_stop_strings, trigger_table
from pilotrl_jax.traces import count_trace

from pilotrl_jax.sampling.decode_host import (_EOS, _FULL, _MAX, _RUNNING, _STOP, STOP_REASONS,  # noqa: F401
                                              collect_chunk, fetch_chunk, new_slots)
MIN_WINDOW = 64
MIN_PREFILL = 16
MIN_SHARED = 32  # shortest token prefix worth storing and copying (share_prefix)

@dataclasses.dataclass
class GenerationResult:
    """One row's output of a generate call: new token ids, their log-probs, and why it stopped.

    stop_reason is one of "eos", "stop_string", "max_tokens", "cache_full"; for "stop_string",
    `stop_string` says which one (e.g. "</action>").
    """

    tokens: list
    logprobs: list
    stop_reason: str
    handle: Optional[int] = None
    stop_string: Optional[str] = None


@dataclasses.dataclass
class _Episode:
    row: int
    tokens: list
    cached: int  # tokens[:cached] are in the KV cache
    key: np.ndarray


# ----------------------------------------------------------------------------- jitted kernels
@functools.partial(jax.jit, static_argnames=("config", "mesh"), donate_argnames=("cache",))
def _prefill(config, params, cache, ids, pos, *, mesh):
    """Write the keys/values of tokens `ids` [B, C] at `pos` [B, C] into the cache."""
    count_trace("prefill")
    _, cache = llama.forward_with_cache(config, params, ids, pos, cache)
    return constrain(cache, mesh)


@functools.partial(jax.jit, static_argnames=("config", "mode", "chunk", "mesh"), donate_argnames=("cache",))
def _decode(config, params, cache, state, stop_table, trigger, sampling, n_steps, max_len, *, mode, chunk, mesh):
    """Up to `n_steps` (<= chunk) decode steps: feed each row's pending token, sample the next one."""
    count_trace("decode")
    W = jax.tree.leaves(cache)[0].shape[-3]

    def forward(cache, ids, pos):
        logits, cache = llama.forward_with_cache(config, params, ids, pos, cache)
        return logits, constrain(cache, mesh)

    return decode_steps(forward, cache, state, stop_table, trigger, sampling, n_steps, max_len, W, mode=mode,
                        chunk=chunk)


def decode_steps(forward, cache, state, stop_table, trigger, sampling, n_steps, max_len, W, *, mode, chunk):
    """The decode loop (traced inside a jitted step): `forward(cache, ids [B, 1], pos [B, 1])` -> (logits,
    cache) runs the model; done rows feed position W (written nowhere). Returns (cache, state, tokens
    [B, chunk] (-1: none), log-probs [B, chunk]). Shared by the dense and the paged engine."""
    B = state["tok"].shape[0]
    temperature, top_k, top_p = sampling

    def cond(c):
        i, _, st, _, _, hit = c
        return (i < n_steps) & ~jnp.all(st["done"] | hit)

    def body(c):
        i, cache, st, out_tok, out_lp, hit = c
        active = ~st["done"]
        feed_pos = jnp.where(active, st["pos"], W)  # done rows write nothing (out of the window)
        logits, cache = forward(cache, st["tok"][:, None], feed_pos[:, None])
        new_pos = st["pos"] + 1
        keys = jax.vmap(jax.random.fold_in)(st["keys"], new_pos)
        tok, lp = filters.sample_tokens(logits[:, 0], keys, temperature, top_k, top_p, mode)
        out_tok = out_tok.at[:, i].set(jnp.where(active, tok, -1))
        out_lp = out_lp.at[:, i].set(jnp.where(active, lp, 0.0))
        n_new = st["n_new"] + active.astype(jnp.int32)
        is_eos, is_max, is_full = stop_table[tok], n_new >= st["limit"], new_pos >= max_len - 1
        reason = jnp.where(is_eos, _EOS, jnp.where(is_max, _MAX, jnp.where(is_full, _FULL, _RUNNING)))
        reason = jnp.where(active, reason, st["reason"])
        st = dict(st, tok=jnp.where(active, tok, st["tok"]), pos=jnp.where(active, new_pos, st["pos"]),
                  n_new=n_new, reason=reason, done=st["done"] | (reason != _RUNNING))
        hit = hit | (active & trigger[tok])
        return i + 1, cache, st, out_tok, out_lp, hit

    init = (jnp.int32(0), cache, state, jnp.full((B, chunk), -1, jnp.int32), jnp.zeros((B, chunk), jnp.float32),
            jnp.zeros((B,), bool))
    i, cache, state, out_tok, out_lp, _ = jax.lax.while_loop(cond, body, init)
    return cache, state, out_tok, out_lp


# ----------------------------------------------------------------------------- the engine
class SamplerEngine:
    """Stateful batched sampler: per-episode KV cache rows, chunked prefill, on-device decode loop."""

    def __init__(self, config: LlamaConfig, params, max_batch: int = 8, max_len: int = 2048, *,
                 mesh=None, seed: int = 0, tokenizer: Any = None, stop_token_ids: Sequence[int] = (),
                 stop_strings: Sequence[str] = (), prefill_chunk: int = 256, decode_chunk: int = 64,
                 cache_dtype: Optional[str] = None, timed: bool = False, share_prefix: bool = True,
                 fine_buckets: bool = True):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}; expected >= 1 (episodes held at once)")
        if max_len < 2:
            raise ValueError(f"max_len={max_len}; expected >= 2 (cache slots per episode)")
        if prefill_chunk < MIN_PREFILL or decode_chunk < 1:
            raise ValueError(f"prefill_chunk={prefill_chunk}, decode_chunk={decode_chunk}; expected "
                             f"prefill_chunk >= {MIN_PREFILL} and decode_chunk >= 1")
        self.model_config = config
        self.config = config = decode_config(config)  # what the jitted kernels run
        self.mesh = mesh
        self.max_len = int(max_len)
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self.prefill_chunk = bucket_length(prefill_chunk, "pow2", MIN_PREFILL)
        self.decode_chunk = int(decode_chunk)
        self.min_batch = 1 if mesh is None else int(mesh.shape["data"] * mesh.shape["fsdp"])
        self.max_batch = int(max_batch)
        self.stop_token_ids = self._check_stop_ids(stop_token_ids)
        self.stop_strings = check_stop_strings(stop_strings, tokenizer)
        # share_prefix: a token prefix fresh episodes share (the system prompt) is pre-filled once, its
        # keys/values kept (`_prefix_kv`) and copied into their rows (`_share_prefix`)
        self.share_prefix = bool(share_prefix)
        # fine_buckets: windows above 256 slots in 2 sizes per octave and prefill chunks in 4 (less padding,
        # a few more compiles); False = powers of two (shapes, and so float rounding, of the engine before)
        self.fine_buckets = bool(fine_buckets)
        self._prefix_tokens, self._prefix_kv = [], None
        self.params = params  # laid out per layer by the setter
        self.cache_dtype = llama.dtype_of(cache_dtype or config.dtype)
        self.cache = self._new_cache(self.max_batch, self.max_len)
        self._eps: dict[int, _Episode] = {}
        self._free = list(range(self.max_batch))
        self._next_id = 0
        self.stats = collections.Counter()
        # timed=True: wait for each kernel so `stats` attributes wall time (gather_s, prefill_s, decode_s,
        # scatter_s, host_s, stop_check_s); without it the *_s entries only count dispatch + sync points.
        self.timed = bool(timed)

    @property
    def params(self):
        """The params the engine decodes with (per layer; see `decode_params`)."""
        return self._params

    @params.setter
    def params(self, value):
        """Assign new params (a weight sync): kept in the engine's per-layer decode layout."""
        self._params = decode_params(self.model_config, value, self.mesh)
        self._prefix_tokens, self._prefix_kv = [], None  # keys/values of the old params

    def _new_cache(self, rows: int, length: int):
        """A zero KV cache of `rows` rows and `length` slots (sharded over the mesh's batch axes)."""
        make = lambda: cache_structure(self.config, rows, length, self.cache_dtype,
                                       lambda shape, d, axes: jnp.zeros(shape, d))
        if self.mesh is None:
            return make()
        shard = cache_structure(self.config, rows, length, self.cache_dtype,
                                lambda shape, d, axes: sh.named_sharding(self.mesh, axes, shape))
        return jax.jit(make, out_shardings=shard)()

    # ------------------------------------------------------------------ validation helpers
    def _check_stop_ids(self, ids) -> tuple:
        if isinstance(ids, (int, np.integer)):
            ids = (int(ids),)
        out = tuple(int(i) for i in (ids or ()))
        bad = [i for i in out if not 0 <= i < self.config.vocab_size]
        if bad:
            raise ValueError(f"stop_token_ids {bad} are outside the vocabulary [0, {self.config.vocab_size}); "
                             "pass ids the model can emit (e.g. tokenizer.eos_token_id)")
        return out

    def _check_tokens(self, what: str, toks) -> list:
        try:
            out = [int(t) for t in toks]
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be a list of int token ids, got {type(toks).__name__}") from None
        bad = [t for t in out if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"{what} has token ids {bad[:5]} outside the vocabulary [0, {self.config.vocab_size})")
        return out

    def _ep(self, h) -> _Episode:
        if h not in self._eps:
            raise KeyError(f"handle {h!r} is not a live episode (released, or never returned by start())")
        return self._eps[h]

    # ------------------------------------------------------------------ public API
    @property
    def num_free(self) -> int:
        """Rows available for new episodes."""
        return len(self._free)

    def tokens(self, handle: int) -> list:
        """The episode's full token sequence so far (prompt, generations, appended tokens)."""
        return list(self._ep(handle).tokens)

    def start(self, prompts: Sequence[Sequence[int]], seeds: Optional[Sequence[int]] = None) -> list:
        """Open one episode per prompt (token ids) and return their handles; prefill happens lazily."""
        if isinstance(prompts, (str, bytes)) or (len(prompts) and isinstance(prompts[0], (int, np.integer))):
            raise TypeError("prompts must be a list of token-id lists, e.g. [[1, 5, 9], [1, 7]]")
        prompts = [self._check_tokens(f"prompts[{i}]", p) for i, p in enumerate(prompts)]
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompts[{i}] is empty; a prompt needs at least one token (e.g. the BOS id)")
            if len(p) >= self.max_len:
                raise ValueError(f"prompts[{i}] has {len(p)} tokens but the cache holds max_len={self.max_len} "
                                 "(and generation needs room); shorten the prompt or raise max_len")
        if len(prompts) > len(self._free):
            raise ValueError(f"start() got {len(prompts)} prompts but only {len(self._free)} of max_batch="
                             f"{self.max_batch} rows are free; release() finished episodes or raise max_batch")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts; give one per prompt")
        handles = []
        base = jax.random.PRNGKey(self.seed)
        for i, p in enumerate(prompts):
            h = self._next_id
            self._next_id += 1
            key = jax.random.PRNGKey(seeds[i]) if seeds is not None else jax.random.fold_in(base, h)
            self._eps[h] = _Episode(row=self._free.pop(0), tokens=p, cached=0, key=np.asarray(key, np.uint32))
            handles.append(h)
        return handles

    def append(self, handles: Sequence[int], token_lists: Sequence[Sequence[int]]) -> None:
        """Add tokens (e.g. an observation) to episodes; they are pre-filled by the next generate."""
        if len(handles) != len(token_lists):
            raise ValueError(f"append got {len(handles)} handles and {len(token_lists)} token lists; pair them up")
        checked = []
        for h, toks in zip(handles, token_lists):
            ep = self._ep(h)
            toks = self._check_tokens(f"token list for handle {h}", toks)
            if len(ep.tokens) + len(toks) > self.max_len:
                raise ValueError(f"append would make episode {h} {len(ep.tokens) + len(toks)} tokens long; "
                                 f"max_len={self.max_len}; release the episode or raise max_len")
            checked.append((ep, toks))
        for ep, toks in checked:
            ep.tokens.extend(toks)

    def release(self, handles: Sequence[int]) -> None:
        """Finish episodes and free their rows for new ones."""
        for h in handles:
            ep = self._ep(h)
            del self._eps[h]
            self._free.append(ep.row)
        self._free.sort()

    def generate(self, handles: Sequence[int], max_new_tokens: Union[int, Sequence[int]], temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, stop_token_ids: Optional[Sequence[int]] = None,
                 stop_strings: Optional[Sequence[str]] = None) -> list:
        """Continue every episode in `handles`; returns one GenerationResult per handle, in order.

        The new tokens are added to the episodes. Stop ids/strings default to the engine's.
        """
        handles = list(handles)
        if not handles:
            return []
        eps, limits, stop_table, trigger, checker, mode = self._prepare_call(
            handles, max_new_tokens, temperature, top_p, top_k, stop_token_ids, stop_strings)

        # Sub-batch layout: slot s of the B-row sub-batch holds cache row rows[s] (>= max_batch: padding).
        n = len(eps)
        B = bucket_length(n, "pow2", self.min_batch)
        need = max(len(ep.tokens) + lim for ep, lim in zip(eps, limits))
        W = self._window(need)
        whole = B == self.max_batch and W == self.max_len
        if whole:  # the call spans the whole cache: use it in place, rows in their own order
            rows = np.arange(B)
            slots = [ep.row for ep in eps]
        else:
            rows = np.full(B, self.max_batch, np.int32)
            slots = list(range(n))
            rows[:n] = [ep.row for ep in eps]
        rows = jnp.asarray(rows, jnp.int32)
        cache, self.cache = self.cache, None
        self.stats["generate_calls"] += 1
        self.stats["rows_x_window"] += B * W
        try:
            t0 = time.perf_counter()
            sub = cache if whole else self._tick("gather_s", t0, _gather(cache, rows, window=W, mesh=self.mesh))
            sub = self._share_prefix(sub, eps, slots, B)
            sub = self._prefill_pending(sub, eps, slots, B, W)
            sub, results = self._decode_loop(sub, eps, slots, limits, B, W, stop_table, trigger, checker,
                                             (temperature, top_k, top_p), mode)
            t0 = time.perf_counter()
            cache = sub if whole else self._tick("scatter_s", t0, _scatter(cache, sub, rows, mesh=self.mesh))
        finally:
            self.cache = cache
        for h, r in zip(handles, results):
            r.handle = h
        return results

    # ------------------------------------------------------------------ internals
    def _window(self, need: int) -> int:
        """The cache window (slots attention reads) of a call whose longest row needs `need` slots: powers of
        two up to 256, then 2 per octave (each size is one more decode compile); at most max_len."""
        fine = self.fine_buckets and need > 4 * MIN_WINDOW
        return fine_bucket(need, MIN_WINDOW, self.max_len, 2) if fine else bucket_length(
            need, "pow2", MIN_WINDOW, self.max_len)

    def _prepare_call(self, handles, max_new_tokens, temperature, top_p, top_k, stop_token_ids, stop_strings):
        """Check a generate call's arguments -> (episodes, per-row limits, stop-id table, stop-string trigger
        table, StopStrings checker or None, sampling mode); shared by the dense and paged engines."""
        if len(set(handles)) != len(handles):
            raise ValueError(f"generate got duplicate handles {handles}; pass each episode once")
        eps = [self._ep(h) for h in handles]
        filters.check_settings(temperature, top_k, top_p)
        limits = ([int(max_new_tokens)] * len(eps) if isinstance(max_new_tokens, (int, np.integer))
                  else [int(m) for m in max_new_tokens])
        if len(limits) != len(eps) or min(limits) < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}; expected an int >= 1 or one per handle")
        stop_ids = self.stop_token_ids if stop_token_ids is None else self._check_stop_ids(stop_token_ids)
        strings = self.stop_strings if stop_strings is None else check_stop_strings(stop_strings, self.tokenizer)
        V = self.config.vocab_size
        stop_table = np.zeros(V, bool)
        stop_table[list(stop_ids)] = True
        checker = StopStrings(self.tokenizer, strings) if strings else None
        trigger = (trigger_table(self.tokenizer, strings, V) if strings else np.zeros(V, bool))
        return eps, limits, stop_table, trigger, checker, filters.mode_for(temperature, top_k, top_p)

    def _tick(self, key: str, t0: float, out=None):
        """Add the time since t0 to stats[key] (after `out` is ready when timed); returns `out`, or now."""
        if self.timed and out is not None:
            jax.block_until_ready(out)
        now = time.perf_counter()
        self.stats[key] += now - t0
        return now if out is None else out

    def _share_prefix(self, sub, eps, slots, B):
        """Give fresh episodes the stored prefix's keys/values (copied into their rows), first storing the
        prefix two or more of them share when it is longer than what the stored one gives them."""
        fresh = [(ep, s) for ep, s in zip(eps, slots) if ep.cached == 0]
        if not self.share_prefix or not fresh:
            return sub
        feeds = [ep.tokens[:-1] for ep, _ in fresh]
        got = [common_prefix_length(self._prefix_tokens, f) for f in feeds]
        shared = min((common_prefix_length(feeds[0], f) for f in feeds[1:]), default=0)
        if shared >= MIN_SHARED and shared > min(got):
            self._prefix_tokens, self._prefix_kv = [], None
            P = min(self.max_len, bucket_length(shared, "pow2", MIN_WINDOW))
            probe = _Episode(row=0, tokens=feeds[0][:shared] + [0], cached=0, key=None)
            self._prefix_kv = self._prefill_pending(self._new_cache(self.min_batch, P), [probe], [0],
                                                    self.min_batch, P)
            self._prefix_tokens = feeds[0][:shared]
            self.stats["prefix_built_tokens"] += shared
            got = [common_prefix_length(self._prefix_tokens, f) for f in feeds]
        use = [(ep, s, m) for (ep, s), m in zip(fresh, got) if m >= MIN_SHARED]
        if use:
            rows = np.full(B, B, np.int32)  # row B: past the sub-cache, dropped
            rows[:len(use)] = [s for _, s, _ in use]
            t0 = time.perf_counter()
            sub = _put_prefix(sub, self._prefix_kv, jnp.asarray(rows), mesh=self.mesh)
            sub = self._tick("prefix_copy_s", t0, sub)
            for ep, _, m in use:
                ep.cached = m
                self.stats["prefix_tokens"] += m
        return sub

    def _prefill_pending(self, sub, eps, slots, B, W):
        """Chunked prefill of every episode's uncached tokens except the pending last one (W: the
        sub-cache's slots, where padding rows write nothing)."""
        feeds = [ep.tokens[ep.cached:len(ep.tokens) - 1] for ep in eps]
        longest = max(len(f) for f in feeds)
        if longest == 0:
            return sub
        t0 = time.perf_counter()
        j = 0
        while j < longest:
            C = (fine_bucket(longest - j, MIN_PREFILL, self.prefill_chunk) if self.fine_buckets
                 else bucket_length(longest, "pow2", MIN_PREFILL, self.prefill_chunk))
            ids = np.zeros((B, C), np.int32)
            pos = np.full((B, C), W, np.int32)  # padding rows write nothing
            for ep, s, f in zip(eps, slots, feeds):
                piece = f[j:j + C]
                ids[s, :len(piece)] = piece
                # padding after a row's real tokens sits at later positions: overwritten before it is read
                pos[s] = ep.cached + j + np.arange(C)
            sub = _prefill(self.config, self.params, sub, jnp.asarray(ids), jnp.asarray(pos), mesh=self.mesh)
            self.stats["prefill_calls"] += 1
            self.stats["prefill_slots"] += B * C
            j += C
        sub = self._tick("prefill_s", t0, sub)
        for ep, f in zip(eps, feeds):
            ep.cached += len(f)
            self.stats["prefill_tokens"] += len(f)
        return sub

    def _decode_loop(self, sub, eps, slots, limits, B, W, stop_table, trigger, checker, sampling, mode):
        """Run decode chunks until every row is done; apply stop strings on the host between chunks."""
        n = len(eps)
        slots = np.asarray(slots)
        tok, pos, done, reason, limit, keys = new_slots(B, W)
        for ep, s, lim in zip(eps, slots, limits):
            tok[s], pos[s], limit[s], keys[s] = ep.tokens[-1], len(ep.tokens) - 1, lim, ep.key
            if pos[s] >= self.max_len - 1:
                reason[s] = _FULL
            else:
                done[s] = False
        gen = [[] for _ in range(n)]
        lps = [[] for _ in range(n)]
        matched = [None] * n
        fed = [0] * n
        dev_sampling = (jnp.float32(sampling[0] if sampling[0] > 0 else 1.0), jnp.int32(sampling[1]),
                        jnp.float32(sampling[2]))
        stop_table, trigger = jnp.asarray(stop_table), jnp.asarray(trigger)
        n_new = np.zeros(B, np.int32)
        while not done[slots].all():
            t0 = time.perf_counter()
            steps = min(self.decode_chunk, int(max(limit[s] - n_new[s] for s in slots if not done[s])))
            state = dict(tok=tok, pos=pos, done=done, reason=reason, n_new=n_new, limit=limit, keys=keys)
            state = {k: jnp.asarray(v) for k, v in state.items()}
            sub, state, out_tok, out_lp = _decode(
                self.config, self.params, sub, state, stop_table, trigger, dev_sampling, jnp.int32(steps),
                jnp.int32(self.max_len), mode=mode, chunk=self.decode_chunk, mesh=self.mesh)
            t0, out_tok, out_lp, (tok, pos, done, reason, n_new) = fetch_chunk(self, state, out_tok, out_lp, t0)
            pairs = [(s, i) for i, s in enumerate(slots)]
            for s, i in collect_chunk(self, out_tok, out_lp, pairs, gen, lps, fed, matched, checker):
                done[s], reason[s] = True, _STOP
                tok[s], pos[s], n_new[s] = gen[i][-1], len(eps[i].tokens) - 1 + len(gen[i]), len(gen[i])
            self._tick("host_s", t0)
        results = []
        for i, (ep, s) in enumerate(zip(eps, slots)):
            ep.tokens.extend(gen[i])
            ep.cached = len(ep.tokens) - 1
            self.stats["decode_tokens"] += len(gen[i])
            self.stats["overshoot_tokens"] += fed[i] - len(gen[i])
            results.append(GenerationResult(tokens=gen[i], logprobs=lps[i], stop_reason=STOP_REASONS[reason[s]],
                                           stop_string=matched[i]))
        return sub, results
