"""Orbax storage of model params with their config: the format the trainer's checkpoints use.

Layout (either form is accepted by `load_params` and by `python -m pilotrl_jax.export`):
- a params directory: `DIR/model_config.json` + `DIR/params/` (Orbax StandardCheckpointer);
- a CheckpointManager tree: `ROOT/model_config.json` + `ROOT/<step>/params/` (latest step is used
  when ROOT is given; a specific `ROOT/<step>` works too).
"""
from __future__ import annotations

import json
import os
import jax
import orbax.checkpoint as ocp

from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig

CONFIG_FILE = "model_config.json"


def config_to_json(config: LlamaConfig) -> dict:
    """HF config dict plus our own fields under `pilotrl_jax`."""
    d = config.to_hf_dict()
    d["pilotrl_jax"] = config.ours()
    return d


def config_from_json(d: dict, **overrides) -> LlamaConfig:
    """Inverse of `config_to_json`."""
    d = dict(d)
    ours = dict(d.pop("pilotrl_jax", {}) or {})
    ours.update(overrides)
    return LlamaConfig.from_hf_dict(d, **ours)


def write_config(directory: str, config: LlamaConfig) -> None:
    """Write `model_config.json` into `directory`."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(config_to_json(config), f, indent=2)


def save_params(directory: str, config: LlamaConfig, params) -> str:
    """Save params (sharded arrays are written by every host) and the config to `directory`."""
    directory = os.path.abspath(directory)
    write_config(directory, config)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(directory, "params"), params, force=True)
    ckptr.wait_until_finished()
    return directory


def resolve_params_dir(path: str) -> tuple[str, str]:
    """(params directory, config file) for a params dir, a manager step dir or a manager root."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} is not a directory; pass a params dir or a checkpoint root")
    if os.path.isdir(os.path.join(path, "params")):
        params_dir = os.path.join(path, "params")
    else:
        steps = sorted((int(n) for n in os.listdir(path) if n.isdigit()
                        and os.path.isdir(os.path.join(path, n, "params"))), reverse=True)
        if not steps:
            raise FileNotFoundError(
                f"{path} holds no params/ and no <step>/params/; pass a checkpoint written by the trainer "
                "or by param_store.save_params (for an HF directory use load_hf)"
            )
        params_dir = os.path.join(path, str(steps[0]), "params")
    d = os.path.dirname(params_dir)
    for _ in range(3):
        cfg = os.path.join(d, CONFIG_FILE)
        if os.path.exists(cfg):
            return params_dir, cfg
        d = os.path.dirname(d)
    raise FileNotFoundError(f"no {CONFIG_FILE} next to or above {params_dir}; the checkpoint lacks its model config")


def load_params(path: str, mesh=None, **overrides) -> tuple[LlamaConfig, dict]:
    """Restore (config, params) from a checkpoint; with `mesh`, params land with rule shardings."""
    params_dir, cfg_file = resolve_params_dir(path)
    with open(cfg_file) as f:
        config = config_from_json(json.load(f), **overrides)
    shapes = llama.param_shapes(config)
    if mesh is not None:
        shard = llama.param_shardings(config, mesh)
    else:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shard = jax.tree.map(lambda _: dev, shapes)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shard)
    params = ocp.StandardCheckpointer().restore(params_dir, target)
    return config, params
