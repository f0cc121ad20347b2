"""`PagedSamplerEngine`: the `SamplerEngine` API over a paged KV cache, so memory follows the tokens held.

    eng = PagedSamplerEngine(config, params, max_len=16384, num_pages=4096, page_size=16,
                             reserve_len=3000, tokenizer=tok, stop_strings=("</action>",))
    n = eng.num_free                      # episodes that fit now (free pages, less the reserve of live ones)
    hs = eng.start(prompts[:n]); eng.generate(hs, 256); eng.append(...); eng.release(hs)

Design (differences from the dense engine; the rest - token lists, pending token, chunked prefill of
what is not cached, the on-device decode loop (`engine.decode_steps`), stop strings on the host,
fold_in(episode_key, position) randomness, windows and buckets - is the dense engine's):
- Memory: one page pool per layer (`paged_cache.pool_structure`: num_pages pages of page_size token
  slots, plus the trash page 0). Each live episode owns a list of pages (its block table), allocated on
  the host as it grows: before a prefill for its uncached tokens, before every decode chunk for the
  slots the chunk may write. `release` returns an episode's pages to the free list at once.
- Attention (`paged_attention_impl`, `paged_cache`): xla gathers each row's pages into the call's [B, W]
  window per layer and step and runs the model's own block on it (the dense engine's floats; transient:
  one layer's view); window gathers once per round into a dense sub-cache and runs the dense engine's
  kernels on it (its per-step speed and floats; transient: every layer's sub-cache of the call's rows);
  ragged: the Pallas TPU kernel reads the pages (no view).
- Admission: `num_free` = the episodes whose `reserve_len` tokens fit in the free pages after every live
  episode's reserve (ceil(reserve_len / page_size) pages each, less what it holds), at most max_batch
  rows. reserve_len = max_len never overcommits; a smaller one (a typical episode's length) admits more,
  and preemption covers the episodes that outgrow it.
- Preemption: when a row needs a page and none is free, the engine takes one from (1) the youngest
  (latest started) live episode not decoding right now (idle between turns, or done in this call),
  else (2) the youngest decoding row younger than the one asking; else the asking row waits. A victim's
  pages are freed and its cache is dropped (cached = 0); its tokens stay, and the next prefill recomputes
  them. A victim of this call is suspended with what it generated so far and resumed in a later round
  of the same call, so generate still returns one complete result per handle. The oldest row can always
  take every page (the pool holds at least one max_len episode), so every round finishes a row.
  Preempted rows draw the same tokens (the randomness is per position); their recomputed keys/values
  come from a prefill instead of decode steps: equal to float rounding (~1e-6), so a sampled token could
  in principle differ where two log-probs tie to rounding (not seen in tests).
- Mesh: rows are not sharded (data x fsdp must be 1, else refused); on a tensor-parallel mesh (the
  host-local sampler mesh of a config with mesh.tensor = the host's chips) params are placed as the
  dense engine's and each pool's kv heads go over `tensor` (`paged_cache.pool_spec`), so a chip's
  block-table gathers read only its own memory; the ragged kernel runs per chip in shard_map.
- Not supported: share_prefix (refused).
"""
from __future__ import annotations

import functools
import time
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from pilotrl_jax.buckets import bucket_length
from pilotrl_jax.sampling import paged_cache as pc
from pilotrl_jax.sampling.cache import fine_bucket
from pilotrl_jax.sampling.decode_host import collect_chunk, fetch_chunk, new_slots
from pilotrl_jax.sampling.engine import (_FULL, _RUNNING, _STOP, MIN_PREFILL, STOP_REASONS, GenerationResult,
                                         SamplerEngine, decode_steps)
from pilotrl_jax.traces import count_trace


@functools.partial(jax.jit, static_argnames=("config", "mode", "chunk", "window", "impl", "mesh"),
                   donate_argnames=("pools",))
def _paged_decode(config, params, pools, block_table, state, stop_table, trigger, sampling, n_steps, max_len, *,
                  mode, chunk, window, impl, mesh=None):
    """Up to `n_steps` (<= chunk) decode steps over the page pools (block table fixed for the chunk)."""
    count_trace("paged_decode")

    def forward(pools, ids, pos):
        return pc.forward_paged(config, params, ids, pos, pools, block_table, window=window, impl=impl, mesh=mesh)

    return decode_steps(forward, pools, state, stop_table, trigger, sampling, n_steps, max_len, window, mode=mode,
                        chunk=chunk)


def pages_for(tokens: int, page_size: int) -> int:
    """Pages that hold `tokens` token slots."""
    return -(-max(int(tokens), 0) // int(page_size))


class PagedSamplerEngine(SamplerEngine):
    """`SamplerEngine` with a paged KV cache: pages allocated as episodes grow, freed on release,
    admission by free pages, preemption (recompute) of the youngest row when the pool runs dry."""

    def __init__(self, config, params, max_batch: Optional[int] = None, max_len: int = 2048, *, num_pages: int,
                 page_size: int = 16, reserve_len: Optional[int] = None, paged_attention_impl: str = "auto",
                 mesh=None, seed: int = 0, tokenizer=None, stop_token_ids: Sequence[int] = (),
                 stop_strings: Sequence[str] = (), prefill_chunk: int = 256, decode_chunk: int = 64,
                 cache_dtype: Optional[str] = None, timed: bool = False, share_prefix: bool = False,
                 fine_buckets: bool = True):
        if share_prefix:
            raise ValueError("share_prefix=True is not supported by the paged KV cache; pass share_prefix=False "
                             "(config: rollout.share_prefix=False with rollout.kv_cache='paged')")
        if mesh is not None and mesh.shape["data"] * mesh.shape["fsdp"] > 1:
            raise ValueError(f"the paged KV cache shards heads, not rows: the sampler mesh {dict(mesh.shape)} has "
                             "data x fsdp > 1; use a mesh with data = fsdp = 1 (config.mesh.tensor = the host's "
                             "chips) or rollout.kv_cache='dense'")
        if isinstance(page_size, bool) or int(page_size) < 1:
            raise ValueError(f"page_size={page_size}; expected an int >= 1 (token slots per page, e.g. 16)")
        if isinstance(num_pages, bool) or int(num_pages) < 1:
            raise ValueError(f"num_pages={num_pages}; expected an int >= 1 (pages in the pool)")
        page_size, num_pages, max_len = int(page_size), int(num_pages), int(max_len)
        per_episode = pages_for(max_len, page_size)
        if num_pages < per_episode:
            raise ValueError(
                f"num_pages={num_pages} pages of page_size={page_size} tokens hold {num_pages * page_size} tokens, "
                f"less than one episode of max_len={max_len} tokens ({per_episode} pages); raise num_pages to "
                f">= {per_episode} (rollout.cache_pages) or lower max_len (agent.token_budget)")
        reserve_len = max_len if reserve_len is None or int(reserve_len) <= 0 else int(reserve_len)
        if reserve_len > max_len:
            raise ValueError(f"reserve_len={reserve_len} is above max_len={max_len}; expected 1..max_len "
                             "(tokens an episode is expected to reach; 0/None = max_len)")
        self.page_size, self.num_pages, self.reserve_len = page_size, num_pages, reserve_len
        self.paged_attention_impl = paged_attention_impl
        self.impl = pc.resolve_paged_impl(paged_attention_impl)
        super().__init__(config, params, max_batch=num_pages if max_batch is None else max_batch, max_len=max_len,
                         mesh=None if mesh is None or mesh.size == 1 else mesh, seed=seed, tokenizer=tokenizer,
                         stop_token_ids=stop_token_ids,
                         stop_strings=stop_strings, prefill_chunk=prefill_chunk, decode_chunk=decode_chunk,
                         cache_dtype=cache_dtype, timed=timed, share_prefix=False, fine_buckets=fine_buckets)
        self.pools = pc.pool_structure(self.config, num_pages, page_size, self.cache_dtype,
                                       lambda shape, d: jnp.zeros(shape, d))
        if self.mesh is not None:
            self.pools = jax.device_put(self.pools, NamedSharding(self.mesh, pc.pool_spec(self.config, self.mesh)))
        self._free_pages = list(range(num_pages, 0, -1))  # pop() hands out the lowest page id first
        self._pages: dict[int, list] = {}
        self._decoding: set = set()  # handles decoding in the current round (preempted only by older rows)
        self._suspended: set = set()  # handles of the current call preempted this round

    def _new_cache(self, rows: int, length: int):
        """No dense cache: the paged engine keeps its keys/values in `pools`."""
        return None

    # ------------------------------------------------------------------ public API
    @property
    def num_free(self) -> int:
        """Episodes that can start now: those whose reserve fits in the free pages after every live
        episode's outstanding reserve (at most the free rows of max_batch)."""
        per = pages_for(self.reserve_len, self.page_size)
        owed = sum(max(0, per - len(self._pages.get(h, ()))) for h in self._eps)
        return max(0, min(len(self._free), (len(self._free_pages) - owed) // per))

    @property
    def pages_in_use(self) -> int:
        """Pages held by live episodes."""
        return self.num_pages - len(self._free_pages)

    def start(self, prompts, seeds=None) -> list:
        """Open one episode per prompt (token ids) and return their handles; pages come with the first generate."""
        handles = super().start(prompts, seeds)
        for h in handles:
            self._pages[h] = []
        return handles

    def release(self, handles: Sequence[int]) -> None:
        """Finish episodes: their rows and pages are free for new ones at once."""
        for h in handles:
            self._ep(h)
        for h in handles:
            self._free_pages.extend(reversed(self._pages.pop(h, [])))
        super().release(handles)

    def generate(self, handles: Sequence[int], max_new_tokens: Union[int, Sequence[int]], temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, stop_token_ids: Optional[Sequence[int]] = None,
                 stop_strings: Optional[Sequence[str]] = None) -> list:
        """Continue every episode in `handles`; returns one GenerationResult per handle, in order (rows
        preempted on the way are recomputed and finished within the call)."""
        handles = list(handles)
        if not handles:
            return []
        eps, limits, stop_table, trigger, checker, mode = self._prepare_call(
            handles, max_new_tokens, temperature, top_p, top_k, stop_token_ids, stop_strings)
        self.stats["generate_calls"] += 1
        if self.impl == "window":
            results = self._generate_window(handles, eps, limits, stop_table, trigger, checker, mode,
                                            (temperature, top_k, top_p))
            for h, r in zip(handles, results):
                r.handle = h
            return results
        call = dict(base=[len(ep.tokens) for ep in eps], gen=[[] for _ in eps], lps=[[] for _ in eps],
                    matched=[None] * len(eps), reason=[_RUNNING] * len(eps), fed=[0] * len(eps))
        dev = dict(stop_table=jnp.asarray(stop_table), trigger=jnp.asarray(trigger),
                   sampling=(jnp.float32(temperature if temperature > 0 else 1.0), jnp.int32(top_k),
                             jnp.float32(top_p)))
        pending = list(range(len(eps)))
        while pending:
            self.stats["paged_rounds"] += 1
            pending = self._round(pending, handles, eps, limits, call, dev, checker, mode)
        results = []
        for i, (h, ep) in enumerate(zip(handles, eps)):
            self.stats["decode_tokens"] += len(call["gen"][i])
            self.stats["overshoot_tokens"] += call["fed"][i] - len(call["gen"][i])
            results.append(GenerationResult(tokens=call["gen"][i], logprobs=call["lps"][i],
                                            stop_reason=STOP_REASONS[call["reason"][i]], handle=h,
                                            stop_string=call["matched"][i]))
        return results

    def _generate_window(self, handles, eps, limits, stop_table, trigger, checker, mode, sampling) -> list:
        """Rounds of the `window` impl: pages for each row's whole turn first (oldest first; rows that get
        none wait for the next round), then the dense engine's prefill and decode on a gathered sub-cache."""
        ps = self.page_size
        results = [None] * len(eps)
        pending = list(range(len(eps)))
        while pending:
            self.stats["paged_rounds"] += 1
            order = sorted(pending, key=lambda i: handles[i])
            self._decoding, self._suspended = {handles[i] for i in order}, set()
            try:
                for i in order:
                    if handles[i] in self._decoding:
                        extent = min(len(eps[i].tokens) - 1 + limits[i], self.max_len - 1)
                        self._ensure(handles[i], pages_for(extent, ps))
                rows = [i for i in order if handles[i] in self._decoding]
            finally:
                self._decoding = set()
            pending = [i for i in order if i not in rows]
            B = bucket_length(len(rows), "pow2", self.min_batch)
            W = self._window(max(len(eps[i].tokens) + limits[i] for i in rows))
            bt = jnp.asarray(pc.host_block_table([self._pages[handles[i]] for i in rows], B, pages_for(W, ps)))
            t0 = time.perf_counter()
            sub = self._tick("gather_s", t0, pc.gather_window(self.pools, bt, window=W))
            r_eps, slots = [eps[i] for i in rows], list(range(len(rows)))
            sub = self._prefill_pending(sub, r_eps, slots, B, W)
            sub, res = self._decode_loop(sub, r_eps, slots, [limits[i] for i in rows], B, W, stop_table, trigger,
                                         checker, sampling, mode)
            t0 = time.perf_counter()
            self.pools = self._tick("scatter_s", t0, pc.scatter_window(self.pools, sub, bt))
            for i, r in zip(rows, res):
                results[i] = r
                keep = pages_for(eps[i].cached, ps)  # pages reserved for tokens the turn did not use
                extra = self._pages[handles[i]][keep:]
                del self._pages[handles[i]][keep:]
                self._free_pages.extend(reversed(extra))
        return results

    # ------------------------------------------------------------------ pages
    def _evict(self, h: int) -> None:
        """Preempt episode h: free its pages and drop its cache (its tokens are recomputed by the next prefill)."""
        self._free_pages.extend(reversed(self._pages[h]))
        self._pages[h] = []
        self._eps[h].cached = 0
        self.stats["preemptions"] += 1
        if h in self._decoding:
            self._decoding.discard(h)
            self._suspended.add(h)

    def _ensure(self, h: int, n_pages: int) -> bool:
        """Give episode h at least `n_pages` pages, preempting younger/idle episodes when the pool is dry;
        False when only older decoding rows hold pages (h is then preempted itself and waits)."""
        have = self._pages[h]
        while len(have) < n_pages:
            if not self._free_pages:
                idle = [g for g in self._eps if g != h and self._pages.get(g) and g not in self._decoding]
                young = [g for g in self._decoding if g > h and self._pages.get(g)]
                victim = max(idle) if idle else (max(young) if young else None)
                if victim is None:
                    self._evict(h)
                    return False
                self._evict(victim)
                continue
            have.append(self._free_pages.pop())
        self.stats["pages_peak"] = max(self.stats["pages_peak"], self.pages_in_use)
        return True

    # ------------------------------------------------------------------ one round of a call
    def _round(self, pending, handles, eps, limits, call, dev, checker, mode) -> list:
        """Prefill and decode the call's pending rows (oldest first); returns the rows preempted on the way."""
        ps = self.page_size
        order = sorted(pending, key=lambda i: handles[i])
        self._decoding = {handles[i] for i in order}
        self._suspended = set()
        for i in order:  # pages for the tokens the prefill writes (all but the pending one)
            h = handles[i]
            if h in self._decoding:
                self._ensure(h, pages_for(len(eps[i].tokens) - 1, ps))
        rows = [i for i in order if handles[i] in self._decoding]
        waiting = [i for i in order if handles[i] not in self._decoding]
        try:
            if rows:
                self._prefill_rows(rows, handles, eps, limits, call)
                self._decode_rows(rows, handles, eps, limits, call, dev, checker, mode)
        finally:
            self._decoding = set()
        still = waiting + [i for i in rows if call["reason"][i] == _RUNNING]
        for i in still:  # suspended: the tokens so far join the episode; the next round recomputes them
            eps[i].tokens[call["base"][i]:] = call["gen"][i]
        return still

    def _layout(self, rows, eps, limits, call):
        """(B, W, block-table width) of a round: the dense engine's batch and window buckets."""
        B = bucket_length(len(rows), "pow2", self.min_batch)
        need = max(len(eps[i].tokens) + limits[i] - len(call["gen"][i]) for i in rows)
        W = self._window(need)
        return B, W, pages_for(W, self.page_size) + pages_for(self.prefill_chunk, self.page_size) + 1

    def _prefill_rows(self, rows, handles, eps, limits, call):
        """Chunked prefill of the rows' uncached tokens except the pending one (the dense engine's chunks)."""
        B, W, nb = self._layout(rows, eps, limits, call)
        feeds = [eps[i].tokens[eps[i].cached:len(eps[i].tokens) - 1] for i in rows]
        longest = max(len(f) for f in feeds)
        if longest == 0:
            return
        t0 = time.perf_counter()
        bt = jnp.asarray(pc.host_block_table([self._pages[handles[i]] for i in rows], B, nb))
        j = 0
        while j < longest:
            C = (fine_bucket(longest - j, MIN_PREFILL, self.prefill_chunk) if self.fine_buckets
                 else bucket_length(longest, "pow2", MIN_PREFILL, self.prefill_chunk))
            ids = np.zeros((B, C), np.int32)
            pos = np.full((B, C), W, np.int32)  # padding rows write to the trash page
            for s, (i, f) in enumerate(zip(rows, feeds)):
                piece = f[j:j + C]
                ids[s, :len(piece)] = piece
                pos[s] = eps[i].cached + j + np.arange(C)
            self.pools = pc.paged_prefill(self.config, self.params, self.pools, jnp.asarray(ids), jnp.asarray(pos),
                                          bt, window=W, impl=self.impl, mesh=self.mesh)
            self.stats["prefill_calls"] += 1
            self.stats["prefill_slots"] += B * C
            j += C
        self.pools = self._tick("prefill_s", t0, self.pools)
        for i, f in zip(rows, feeds):
            eps[i].cached += len(f)
            self.stats["prefill_tokens"] += len(f)

    def _decode_rows(self, rows, handles, eps, limits, call, dev, checker, mode):
        """Decode chunks until every row is done or preempted: pages for each chunk's writes first."""
        B, W, nb = self._layout(rows, eps, limits, call)
        ps = self.page_size
        n = len(rows)
        tok, pos, done, reason, limit, keys = new_slots(B, W)
        for s, i in enumerate(rows):
            ep = eps[i]
            tok[s], pos[s], keys[s] = ep.tokens[-1], len(ep.tokens) - 1, ep.key
            limit[s] = limits[i] - len(call["gen"][i])
            if pos[s] >= self.max_len - 1:
                reason[s] = _FULL
            else:
                done[s] = False
        n_new = np.zeros(B, np.int32)
        gen, lps = call["gen"], call["lps"]
        while not done[:n].all():
            t0 = time.perf_counter()
            steps = min(self.decode_chunk, int(max(limit[s] - n_new[s] for s in range(n) if not done[s])))
            self._decoding = {handles[i] for s, i in enumerate(rows) if not done[s]}  # done rows are idle
            for s, i in enumerate(rows):  # pages for this chunk's writes, oldest row first
                if done[s] or handles[i] not in self._decoding:
                    continue
                last = min(pos[s] + min(steps, limit[s] - n_new[s]) - 1, self.max_len - 2)
                self._ensure(handles[i], last // ps + 1)
            for s, i in enumerate(rows):
                if not done[s] and handles[i] in self._suspended:
                    done[s] = True  # preempted: resumed by a later round of this call
            if done[:n].all():
                break
            bt = pc.host_block_table([self._pages[handles[i]] for i in rows], B, nb)
            state = dict(tok=tok, pos=pos, done=done, reason=reason, n_new=n_new, limit=limit, keys=keys)
            state = {k: jnp.asarray(v) for k, v in state.items()}
            self.pools, state, out_tok, out_lp = _paged_decode(
                self.config, self.params, self.pools, jnp.asarray(bt), state, dev["stop_table"], dev["trigger"],
                dev["sampling"], jnp.int32(steps), jnp.int32(self.max_len), mode=mode, chunk=self.decode_chunk,
                window=W, impl=self.impl, mesh=self.mesh)
            t0, out_tok, out_lp, (tok, pos, done, reason, n_new) = fetch_chunk(self, state, out_tok, out_lp, t0)
            for s, _ in collect_chunk(self, out_tok, out_lp, list(enumerate(rows)), gen, lps, call["fed"],
                                      call["matched"], checker):
                done[s], reason[s] = True, _STOP
            self._tick("host_s", t0)
        for s, i in enumerate(rows):
            if handles[i] in self._suspended:
                continue
            call["reason"][i] = int(reason[s])
            ep = eps[i]
            ep.tokens[call["base"][i]:] = gen[i]
            if self._pages[handles[i]]:  # not preempted after it finished
                ep.cached = len(ep.tokens) - 1
