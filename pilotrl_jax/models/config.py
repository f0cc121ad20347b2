"""LLaMA model configuration, read from and written to Hugging Face `config.json`."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Union

SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_MODEL_TYPES = ("llama",)
COMPUTE_DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# LlamaConfig fields that are ours, not HF's (kept in our checkpoints, set from the run config).
ATTENTION_IMPLS = ("xla", "xla_flash", "splash", "cudnn", "auto")  # see pilotrl_jax.models.attention
OUR_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_query_chunk", "attention_impl")

# HF keys that carry no information for inference/training math here.
_IGNORED_HF_KEYS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "pretraining_tp", "attention_dropout", "_name_or_path", "output_attentions",
    "output_hidden_states", "return_dict", "is_encoder_decoder", "tie_encoder_decoder",
    "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "tokenizer_class",
    "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params", "finetuning_task",
    "cross_attention_hidden_size", "add_cross_attention", "pruned_heads", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "is_decoder", "bad_words_ids", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "temperature", "top_k", "top_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "num_return_sequences",
    "typical_p", "diversity_penalty", "num_beam_groups", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "encoder_no_repeat_ngram_size", "chat_template", "quantization_config",
}


class ConfigError(ValueError):
    """A model config that this implementation cannot run faithfully."""


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a LLaMA-family decoder (hashable: usable as a static jit argument)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Hashable rope scaling: ("llama3", factor, low_freq_factor, high_freq_factor, original_max_pos)
    # or ("linear", factor); None for plain rope.
    rope_scaling: Optional[tuple] = None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple = ()
    pad_token_id: Optional[int] = None
    # Ours, not HF's: numerics and compilation.
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    # Queries per block of the causal attention without a KV cache (training, scoring): each block
    # reads only the keys up to its last query, so a T-token row does about half the work of the
    # full T x T score matrix and never holds it whole. 0 = one block (the full matrix).
    attention_query_chunk: int = 128
    # Attention without a KV cache: xla (the blocked einsum above) | splash (Pallas TPU kernel) |
    # cudnn (cuDNN flash attention) | auto (tpu -> splash, gpu -> cudnn, else xla).
    attention_impl: str = "xla"

    def __post_init__(self):
        if self.hidden_size <= 0 or self.num_layers <= 0 or self.vocab_size <= 0:
            raise ConfigError(f"sizes must be positive, got {self}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}; grouped-query attention needs that"
            )
        if self.dtype not in COMPUTE_DTYPES or self.param_dtype not in COMPUTE_DTYPES:
            raise ConfigError(
                f"dtype={self.dtype!r}, param_dtype={self.param_dtype!r}; expected one of {COMPUTE_DTYPES}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
        if not isinstance(self.attention_query_chunk, int) or self.attention_query_chunk < 0:
            raise ConfigError(f"attention_query_chunk={self.attention_query_chunk!r}; expected an int >= 0 "
                              "(queries per causal attention block, e.g. 64; 0 = the full score matrix)")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLS} "
                              "(xla: blocked einsum; splash: Pallas TPU kernel; cudnn: cuDNN flash; auto: by backend)")
        if self.rope_scaling is not None and self.rope_scaling[0] not in ("llama3", "linear"):
            raise ConfigError(f"rope_scaling={self.rope_scaling!r}; expected a ('llama3', ...) or ('linear', f) tuple")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def tiny(cls, **overrides) -> "LlamaConfig":
        """A small random-init config for tests and the CPU demo."""
        base = dict(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, max_position_embeddings=2048, eos_token_ids=(2,),
            bos_token_id=1, pad_token_id=0,
        )
        base.update(overrides)
        return cls(**base)

    def ours(self) -> dict:
        """Our own (non-HF) fields: numerics and compilation choices, as keyword overrides."""
        return {k: getattr(self, k) for k in OUR_FIELDS}

    def replace(self, **kw) -> "LlamaConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf_dict(cls, d: dict, **ours) -> "LlamaConfig":
        """Build from an HF config dict (Hub LLaMA-3.1 `rope_scaling` or transformers-5 `rope_parameters`)."""
        d = dict(d)
        arch = d.get("architectures") or ["LlamaForCausalLM"]
        if not any(a in SUPPORTED_ARCHITECTURES for a in arch):
            raise ConfigError(f"architectures={arch}; only {SUPPORTED_ARCHITECTURES} are supported")
        mt = d.get("model_type", "llama")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"model_type={mt!r}; only {SUPPORTED_MODEL_TYPES} are supported")
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act={d.get('hidden_act')!r}; only 'silu' (SwiGLU) is supported")
        for flag in ("attention_bias", "mlp_bias"):
            if d.get(flag):
                raise ConfigError(f"{flag}=true is not supported by this LLaMA port; use a config without biases")
        try:
            heads = int(d["num_attention_heads"])
            hidden = int(d["hidden_size"])
            kw: dict[str, Any] = dict(
                vocab_size=int(d["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_layers=int(d["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or hidden // heads),
            )
        except KeyError as e:
            raise ConfigError(f"config.json lacks required field {e.args[0]!r}") from None
        kw["rms_norm_eps"] = float(d.get("rms_norm_eps", 1e-5))
        kw["max_position_embeddings"] = int(d.get("max_position_embeddings", 8192))
        kw["tie_word_embeddings"] = bool(d.get("tie_word_embeddings", False))
        kw["bos_token_id"] = d.get("bos_token_id")
        eos = d.get("eos_token_id")
        kw["eos_token_ids"] = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        kw["pad_token_id"] = d.get("pad_token_id")
        theta, scaling = _parse_rope(d)
        kw["rope_theta"] = theta
        kw["rope_scaling"] = scaling
        kw.update(ours)
        return cls(**kw)

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike], **ours) -> "LlamaConfig":
        """Read an HF `config.json`."""
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {path}; point at an HF model directory") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); re-export the model directory") from None
        return cls.from_hf_dict(d, **ours)

    def to_hf_dict(self) -> dict:
        """An HF `config.json` dict (transformers-5 style `rope_parameters`, plus legacy `rope_theta`)."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            if self.rope_scaling[0] == "llama3":
                _, factor, low, high, orig = self.rope_scaling
                rope.update(rope_type="llama3", factor=factor, low_freq_factor=low,
                            high_freq_factor=high, original_max_position_embeddings=orig)
            else:
                rope.update(rope_type="linear", factor=self.rope_scaling[1])
        eos = list(self.eos_token_ids)
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (eos[0] if len(eos) == 1 else eos) if eos else None,
            "pad_token_id": self.pad_token_id,
            "dtype": self.param_dtype,
        }

    @property
    def num_params(self) -> int:
        """Parameter count."""
        d, f, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + L * per_layer + d


def _parse_rope(d: dict) -> tuple[float, Optional[tuple]]:
    """Read rope theta and scaling from `rope_parameters` (transformers 5) or `rope_theta`+`rope_scaling`."""
    params = d.get("rope_parameters")
    if params is None:
        params = dict(d.get("rope_scaling") or {})
        params.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    params = dict(params)
    if "rope_theta" not in params and "rope_theta" in d:
        params["rope_theta"] = d["rope_theta"]
    theta = float(params.get("rope_theta", 10000.0))
    rtype = params.get("rope_type", params.get("type", "default")) or "default"
    if rtype not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"rope_type={rtype!r} is not supported; expected one of {SUPPORTED_ROPE_TYPES}"
        )
    if rtype == "default":
        return theta, None
    if rtype == "linear":
        return theta, ("linear", float(params["factor"]))
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
               if k not in params]
    if missing:
        raise ConfigError(f"rope_type='llama3' needs {missing} in rope_scaling/rope_parameters")
    return theta, ("llama3", float(params["factor"]), float(params["low_freq_factor"]),
                   float(params["high_freq_factor"]), int(params["original_max_position_embeddings"]))


def run_config_overrides(model_section) -> dict:
    """Our own LlamaConfig fields from a run config's `model` section (missing keys keep the defaults)."""
    out = dict(dtype=model_section.dtype, param_dtype=model_section.param_dtype,
               scan_layers=bool(model_section.scan_layers), remat_policy=model_section.remat_policy)
    chunk = model_section.get("attention_query_chunk")  # absent in configs written before it existed
    if chunk is not None:
        out["attention_query_chunk"] = int(chunk)
    impl = model_section.get("attention_impl")
    if impl is not None:
        out["attention_impl"] = str(impl)
    return out
