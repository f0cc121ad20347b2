"""The host side of a decode chunk, shared by the dense and the paged engine: the per-slot state a chunk
starts from, fetching a chunk's outputs, and collecting each row's new tokens with stop strings found on
the host (a row that matched is cut after its stop string and reported, for the engine to mark it done)."""
from __future__ import annotations

import time

import jax
import numpy as np

STOP_REASONS = ("running", "eos", "stop_string", "max_tokens", "cache_full")
_RUNNING, _EOS, _STOP, _MAX, _FULL = range(5)
STATE_KEYS = ("tok", "pos", "done", "reason", "n_new")


def new_slots(B: int, W: int) -> tuple:
    """Per-slot state of B slots before any row is placed: (tok, pos, done, reason, limit, keys); pos W
    (past the window) and done for every slot until a row takes it."""
    return (np.zeros(B, np.int32), np.full(B, W, np.int32), np.ones(B, bool), np.full(B, _RUNNING, np.int32),
            np.ones(B, np.int32), np.zeros((B, 2), np.uint32))


def fetch_chunk(engine, state, out_tok, out_lp, t0: float) -> tuple:
    """Bring a decode chunk's outputs to the host and count it in `engine.stats`: returns (t, out_tok,
    out_lp, (tok, pos, done, reason, n_new)) with t the time after the device work (for `engine._tick`)."""
    st = jax.device_get(state)
    out_tok, out_lp = np.asarray(out_tok), np.asarray(out_lp)
    t = engine._tick("decode_s", t0)
    engine.stats["decode_calls"] += 1
    engine.stats["decode_steps"] += int((out_tok >= 0).any(axis=0).sum())
    return t, out_tok, out_lp, tuple(np.array(st[k]) for k in STATE_KEYS)


def collect_chunk(engine, out_tok, out_lp, pairs, gen, lps, fed, matched, checker) -> list:
    """Append each row's new tokens and log-probs (`pairs`: (slot, row index)) to gen[i]/lps[i] and record
    how many were fed (fed[i]); with a stop-string `checker`, cut a row after the first stop string in
    its new tokens (matched[i] = the string). Returns the (slot, row index) pairs that stopped so."""
    stopped = []
    for s, i in pairs:
        got = out_tok[s] >= 0
        if not got.any():
            continue
        start = len(gen[i])
        gen[i].extend(out_tok[s][got].tolist())
        lps[i].extend(out_lp[s][got].tolist())
        fed[i] = len(gen[i])
        if checker is None:
            continue
        t1 = time.perf_counter()
        k = checker.find(gen[i], start)
        engine._tick("stop_check_s", t1)
        if k is not None:
            del gen[i][k + 1:], lps[i][k + 1:]
            matched[i] = checker.matched(gen[i], k)
            stopped.append((s, i))
    return stopped
