"""Batched KV-cache sampling: the functional `generate`, the multi-turn `SamplerEngine` and its paged-cache
variant `PagedSamplerEngine`."""
from pilotrl_jax.sampling.api import generate
from pilotrl_jax.sampling.engine import STOP_REASONS, GenerationResult, SamplerEngine
from pilotrl_jax.sampling.paged import PagedSamplerEngine
from pilotrl_jax.traces import trace_counts
from pilotrl_jax.sampling.filters import filter_logits, sample_tokens
from pilotrl_jax.sampling.stops import StopStrings

__all__ = ["generate", "SamplerEngine", "PagedSamplerEngine", "GenerationResult", "STOP_REASONS", "trace_counts",
           "filter_logits", "sample_tokens", "StopStrings"]
