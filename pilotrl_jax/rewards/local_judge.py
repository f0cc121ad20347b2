"""A plan judge run by one of our checkpoints through the KV-cache sampler (no server needed).

The rubric prompt (judge.py) is rendered with the tokenizer's chat template, all units of a batch
are sampled together with `pilotrl_jax.sampling.generate`, and the decoded answers are parsed as
JSON with repair. An answer that cannot be parsed is a failed unit, counted in `stats()`.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from pilotrl_jax.rewards.judge import Judge


class LocalModelJudge(Judge):
    """The rubric judge answered by a local LLaMA checkpoint (config + params + HF tokenizer)."""

    def __init__(self, config: Any, params: Any, tokenizer: Any, *, max_new_tokens: int = 96,
                 max_prompt_tokens: int = 1536, temperature: float = 0.0, batch_size: int = 8, seed: int = 0,
                 max_units: Optional[int] = 4, min_ok_fraction: float = 0.5, max_history_chars: int = 4000):
        super().__init__()
        from pilotrl_jax.agent.tokenizer import as_chat_tokenizer

        if max_new_tokens < 1 or max_prompt_tokens < 16 or batch_size < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}, max_prompt_tokens={max_prompt_tokens}, "
                             f"batch_size={batch_size}; expected >= 1, >= 16 and >= 1")
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and max_prompt_tokens + max_new_tokens > limit:
            raise ValueError(f"max_prompt_tokens + max_new_tokens = {max_prompt_tokens + max_new_tokens} exceeds the "
                             f"model's max_position_embeddings={limit}; lower max_prompt_tokens")
        self.config, self.params = config, params
        self.chat = as_chat_tokenizer(tokenizer)
        self.max_new_tokens, self.max_prompt_tokens = max_new_tokens, max_prompt_tokens
        self.temperature, self.batch_size, self.seed = temperature, batch_size, seed
        self.max_units, self.min_ok_fraction, self.max_history_chars = max_units, min_ok_fraction, max_history_chars
        self._gen_time = 0.0
        self._calls = 0

    def _encode(self, messages) -> list[int]:
        system, user = messages[0]["content"], messages[1]["content"]
        ids = self.chat.encode(self.chat.prompt_text(system, user))
        if len(ids) > self.max_prompt_tokens:
            # Keep the head (system, task, plan) and the tail (rubric, answer cue); drop the middle.
            head = self.max_prompt_tokens // 3
            ids = ids[:head] + ids[-(self.max_prompt_tokens - head):]
        return ids

    def _answer(self, messages):
        from pilotrl_jax.sampling import generate

        out = []
        for b in range(0, len(messages), self.batch_size):
            chunk = messages[b : b + self.batch_size]
            t0 = time.monotonic()
            try:
                prompts = [self._encode(m) for m in chunk]
                eos = tuple(getattr(self.config, "eos_token_ids", ()) or ())
                res = generate(self.config, self.params, prompts, self.max_new_tokens, temperature=self.temperature,
                               seed=self.seed + b, stop_token_ids=eos, stop_strings=("}",),
                               tokenizer=self.chat.tokenizer)
                out.extend((self.chat.decode(r.tokens), None) for r in res)
            except Exception as e:  # noqa: BLE001 - a judge never raises out of score()
                out.extend((None, f"{type(e).__name__}: {e}") for _ in chunk)
            self._gen_time += time.monotonic() - t0
            self._calls += len(chunk)
        return out

    def stats(self) -> dict:
        """Judge counters plus generation time (s) and units sampled."""
        d = self._stats.as_dict()
        calls = self._calls
        d.update(latency_mean_s=self._gen_time / calls if calls else 0.0, generate_time_s=self._gen_time)
        return d
