"""Functional entry point: `generate(config, params, prompts, max_new_tokens, ...)` on a fresh engine."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.buckets import bucket_length
from pilotrl_jax.sampling.engine import MIN_WINDOW, GenerationResult, SamplerEngine


def generate(config: LlamaConfig, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, stop_token_ids: Sequence[int] = (),
             stop_strings: Sequence[str] = (), tokenizer: Any = None, top_k: int = 0, *, mesh=None,
             max_len: Optional[int] = None, decode_chunk: int = 64, prefill_chunk: int = 256) -> list:
    """Sample continuations of token-id prompts → one `GenerationResult` (tokens, logprobs, stop_reason) each.

    temperature=0 is greedy. EOS stops only when listed in `stop_token_ids` (e.g. config.eos_token_ids).
    Prompt i draws with episode key fold_in(PRNGKey(seed), i): results do not depend on batching.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one token-id list")
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; expected an int >= 1")
    longest = max((len(p) for p in prompts if hasattr(p, "__len__")), default=1)
    if max_len is None:
        max_len = bucket_length(longest + int(max_new_tokens), "pow2", MIN_WINDOW)
        max_len = max(max_len, longest + 1)
    engine = SamplerEngine(config, params, max_batch=bucket_length(len(prompts), "pow2", 1), max_len=max_len, mesh=mesh,
                           seed=seed, tokenizer=tokenizer, stop_token_ids=stop_token_ids,
                           stop_strings=stop_strings, decode_chunk=decode_chunk, prefill_chunk=prefill_chunk)
    handles = engine.start(prompts)
    results = engine.generate(handles, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    for r in results:
        r.handle = None
    return results
