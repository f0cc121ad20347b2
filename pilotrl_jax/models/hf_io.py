"""Hugging Face interop: load an HF LLaMA directory into our params and write ours back as HF.

Loading streams tensor by tensor (safetensors is memory-mapped; each parameter is built with
`jax.make_array_from_callback`, so a device only reads the slice it holds and no host ever holds the
model twice). Saving gathers one tensor at a time to host and writes sharded safetensors + index.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from pilotrl_jax.models import llama
from pilotrl_jax.models.config import ConfigError, LlamaConfig

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


class CheckpointError(ValueError):
    """An HF directory that cannot be loaded: names the file/tensor and what was expected."""


# ----------------------------------------------------------------------------- name/layout mapping
# Our per-layer param path -> (HF suffix, to_ours(hf_array) , to_hf(our_array)).
def _layer_map(c: LlamaConfig) -> dict[tuple[str, ...], tuple[str, Callable, Callable]]:
    D, H, K, Dh = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim

    def in_heads(n):  # HF [n*Dh, D] -> ours [D, n, Dh]
        return (lambda w: w.T.reshape(D, n, Dh), lambda w: w.reshape(D, n * Dh).T)

    t = (lambda w: w.T, lambda w: w.T)
    ident = (lambda w: w, lambda w: w)
    return {
        ("attn", "wq"): ("self_attn.q_proj.weight", *in_heads(H)),
        ("attn", "wk"): ("self_attn.k_proj.weight", *in_heads(K)),
        ("attn", "wv"): ("self_attn.v_proj.weight", *in_heads(K)),
        ("attn", "wo"): ("self_attn.o_proj.weight", lambda w: w.T.reshape(H, Dh, D),
                         lambda w: w.reshape(H * Dh, D).T),
        ("mlp", "w_gate"): ("mlp.gate_proj.weight", *t),
        ("mlp", "w_up"): ("mlp.up_proj.weight", *t),
        ("mlp", "w_down"): ("mlp.down_proj.weight", *t),
        ("input_norm", "scale"): ("input_layernorm.weight", *ident),
        ("post_attn_norm", "scale"): ("post_attention_layernorm.weight", *ident),
    }


def _hf_shape(c: LlamaConfig, suffix: str) -> tuple[int, ...]:
    D, F = c.hidden_size, c.intermediate_size
    qd, kd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return {
        "self_attn.q_proj.weight": (qd, D), "self_attn.k_proj.weight": (kd, D),
        "self_attn.v_proj.weight": (kd, D), "self_attn.o_proj.weight": (D, qd),
        "mlp.gate_proj.weight": (F, D), "mlp.up_proj.weight": (F, D), "mlp.down_proj.weight": (D, F),
        "input_layernorm.weight": (D,), "post_attention_layernorm.weight": (D,),
    }[suffix]


def hf_tensor_plan(c: LlamaConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Every HF tensor name of the model with its expected shape, in HF order."""
    out = [("model.embed_tokens.weight", (c.vocab_size, c.hidden_size))]
    for i in range(c.num_layers):
        for suffix, *_ in _layer_map(c).values():
            out.append((f"model.layers.{i}.{suffix}", _hf_shape(c, suffix)))
    out.append(("model.norm.weight", (c.hidden_size,)))
    if not c.tie_word_embeddings:
        out.append(("lm_head.weight", (c.vocab_size, c.hidden_size)))
    return out


# ----------------------------------------------------------------------------- reading
class _TensorSource:
    """Lazily opened safetensors files of an HF directory, addressed by tensor name."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                self.where = dict(json.load(f)["weight_map"])
        elif os.path.exists(single):
            with safe_open(single, "np") as f:
                self.where = {k: "model.safetensors" for k in f.keys()}
        else:
            have = sorted(os.listdir(path))[:20]
            hint = ("; it has PyTorch .bin weights: re-save with safe_serialization=True"
                    if any(h.endswith(".bin") for h in have) else "")
            raise CheckpointError(
                f"{path} has neither model.safetensors nor model.safetensors.index.json (found {have}){hint}"
            )
        self._open: dict[str, Any] = {}

    def _file(self, name: str):
        if name not in self.where:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint at {self.path}")
        fn = self.where[name]
        if fn not in self._open:
            full = os.path.join(self.path, fn)
            if not os.path.exists(full):
                raise CheckpointError(f"{full} (listed in the index for {name!r}) does not exist")
            self._open[fn] = safe_open(full, "np")
        return self._open[fn]

    def get(self, name: str, expected: tuple[int, ...]) -> np.ndarray:
        """One tensor, checked against its expected shape."""
        f = self._file(name)
        shape = tuple(f.get_slice(name).get_shape())
        if shape != tuple(expected):
            raise CheckpointError(
                f"tensor {name!r} in {self.path} has shape {shape}; the config expects {tuple(expected)}"
            )
        return f.get_tensor(name)


def _flatten(tree, prefix=()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict):
        for k in tree:
            yield from _flatten(tree[k], prefix + (k,))
    else:
        yield prefix, tree


def _unflatten(items: dict[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, v in items.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _our_param_loaders(c: LlamaConfig, src: _TensorSource) -> dict[tuple[str, ...], Callable[[], np.ndarray]]:
    """Our param path -> a function that reads and converts it (full tensor, our layout)."""
    lm = _layer_map(c)
    loaders: dict[tuple[str, ...], Callable[[], np.ndarray]] = {
        ("embed",): lambda: src.get("model.embed_tokens.weight", (c.vocab_size, c.hidden_size)),
        ("final_norm", "scale"): lambda: src.get("model.norm.weight", (c.hidden_size,)),
    }
    if not c.tie_word_embeddings:
        loaders[("lm_head",)] = lambda: src.get("lm_head.weight", (c.vocab_size, c.hidden_size)).T
    for sub, (suffix, to_ours, _) in lm.items():
        shp = _hf_shape(c, suffix)
        if c.scan_layers:
            loaders[("layers",) + sub] = (
                lambda suffix=suffix, to_ours=to_ours, shp=shp: _StackedLoader(src, suffix, to_ours, shp, c.num_layers)
            )
        else:
            for i in range(c.num_layers):
                loaders[(f"layers_{i}",) + sub] = (
                    lambda i=i, suffix=suffix, to_ours=to_ours, shp=shp:
                    to_ours(src.get(f"model.layers.{i}.{suffix}", shp))
                )
    return loaders


class _StackedLoader:
    """A [layers, ...] parameter read layer by layer (a device shard only reads its layers)."""

    def __init__(self, src, suffix, to_ours, shp, n):
        self.src, self.suffix, self.to_ours, self.shp, self.n = src, suffix, to_ours, shp, n

    def layer(self, i: int) -> np.ndarray:
        """Layer i in our layout."""
        return self.to_ours(self.src.get(f"model.layers.{i}.{self.suffix}", self.shp))


def load_hf(path: str, mesh=None, rules=None, **config_overrides) -> tuple[LlamaConfig, dict]:
    """Load an HF LLaMA directory → (config, params); with `mesh`, each tensor lands with its sharding.

    `config_overrides` set our own fields (`LlamaConfig.ours()`: dtype, scan, remat, attention blocks).
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path!r} is not a readable directory; pass an HF model directory")
    try:
        config = LlamaConfig.from_json_file(os.path.join(path, "config.json"), **config_overrides)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    src = _TensorSource(path)
    shapes = dict(_flatten(llama.param_shapes(config)))
    shardings = dict(_flatten(llama.param_shardings(config, mesh, rules))) if mesh is not None else {}
    np_dt = _NP_DTYPES[config.param_dtype]
    loaders = _our_param_loaders(config, src)
    params = {}
    for key, shp in shapes.items():
        load = loaders[key]
        if mesh is None:
            obj = load()
            arr = (np.stack([obj.layer(i) for i in range(obj.n)]) if isinstance(obj, _StackedLoader) else obj)
            params[key] = jnp.asarray(np.asarray(arr).astype(np_dt))
        else:
            params[key] = _make_sharded(load, shp.shape, shardings[key], np_dt)
    return config, _unflatten(params)


def _make_sharded(load, shape, sharding, np_dt) -> jax.Array:
    """Build one sharded parameter; devices read only their slice (layers for stacked params)."""
    state: dict = {}

    def cb(index):
        if "obj" not in state:
            obj = load()
            state["obj"] = obj if isinstance(obj, _StackedLoader) else np.asarray(obj).astype(np_dt)
        obj = state["obj"]
        if isinstance(obj, _StackedLoader):
            layers = range(*index[0].indices(obj.n))
            return np.stack([obj.layer(i) for i in layers]).astype(np_dt)[(slice(None),) + tuple(index[1:])]
        return obj[index]

    return jax.make_array_from_callback(tuple(shape), sharding, cb)


# ----------------------------------------------------------------------------- writing
def _to_host(x) -> np.ndarray:
    """Gather one (possibly sharded, possibly multi-host) array to host memory."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def iter_hf_tensors(config: LlamaConfig, params: dict, dtype: Optional[str] = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, host array) one tensor at a time, in HF order."""
    np_dt = _NP_DTYPES[dtype or config.param_dtype]
    lm = _layer_map(config)

    def cast(a):
        return np.ascontiguousarray(np.asarray(a).astype(np_dt))

    yield "model.embed_tokens.weight", cast(_to_host(params["embed"]))
    for i in range(config.num_layers):
        for sub, (suffix, _, to_hf) in lm.items():
            if config.scan_layers:
                leaf = params["layers"][sub[0]][sub[1]][i]
            else:
                leaf = params[f"layers_{i}"][sub[0]][sub[1]]
            yield f"model.layers.{i}.{suffix}", cast(to_hf(_to_host(leaf)))
    yield "model.norm.weight", cast(_to_host(params["final_norm"]["scale"]))
    if not config.tie_word_embeddings:
        yield "lm_head.weight", cast(_to_host(params["lm_head"]).T)


def save_hf(config: LlamaConfig, params: dict, path: str, tokenizer=None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: Optional[str] = None) -> str:
    """Write an HF directory (safetensors, sharded above `max_shard_bytes`, config, generation config)."""
    _check_params(config, params)
    os.makedirs(path, exist_ok=True)
    for old in os.listdir(path):  # stale shards from an earlier export would confuse loaders
        if re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?", old):
            os.remove(os.path.join(path, old))
    if jax.process_index() != 0:
        # every process takes part in the gathers, only process 0 writes
        for _ in iter_hf_tensors(config, params, dtype):
            pass
        return path
    shards: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    files: list[str] = []
    total = 0
    weight_map: dict[str, int] = {}

    def flush():
        idx = len(files)
        name = f"model-part-{idx:05d}.safetensors.tmp"
        save_file(shards[-1], os.path.join(path, name), metadata={"format": "pt"})
        files.append(name)

    for name, arr in iter_hf_tensors(config, params, dtype):
        if sizes[-1] and sizes[-1] + arr.nbytes > max_shard_bytes:
            flush()
            shards.append({})
            sizes.append(0)
        shards[-1][name] = arr
        sizes[-1] += arr.nbytes
        total += arr.nbytes
        weight_map[name] = len(shards) - 1
    flush()
    n = len(files)
    if n == 1:
        os.replace(os.path.join(path, files[0]), os.path.join(path, "model.safetensors"))
    else:
        final = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for tmp, fin in zip(files, final):
            os.replace(os.path.join(path, tmp), os.path.join(path, fin))
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total},
                       "weight_map": {k: final[v] for k, v in weight_map.items()}}, f, indent=2)
    hf_cfg = config.to_hf_dict()
    if dtype:
        hf_cfg["dtype"] = dtype
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    gen = {"bos_token_id": config.bos_token_id, "do_sample": True, "temperature": 0.6, "top_p": 0.9}
    if config.eos_token_ids:
        eos = list(config.eos_token_ids)
        gen["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if config.pad_token_id is not None:
        gen["pad_token_id"] = config.pad_token_id
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def _check_params(config: LlamaConfig, params: dict) -> None:
    """Raise a named error when a params tree does not match the config."""
    want = dict(_flatten(llama.param_shapes(config)))
    have = dict(_flatten(params))
    missing = sorted("/".join(k) for k in want.keys() - have.keys())
    if missing:
        raise CheckpointError(f"params lack {missing[:5]}{'...' if len(missing) > 5 else ''} for this config")
    for k, s in want.items():
        if tuple(have[k].shape) != tuple(s.shape):
            raise CheckpointError(
                f"param {'/'.join(k)} has shape {tuple(have[k].shape)}; the config expects {tuple(s.shape)}"
            )
