"""HF import/export: round trips, sharded files, transformers loading our export, named errors."""
import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from pilotrl_jax.models import hf_io, llama
from pilotrl_jax.models.config import ConfigError, LlamaConfig


def _all_tensors(path):
    out = {}
    for fn in sorted(os.listdir(path)):
        if fn.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, fn)))
    return out


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_is_bit_exact_and_loads_in_transformers(hf_factory, tmp_path, scan, tied):
    model, path = hf_factory(tie_word_embeddings=tied)
    config, params = hf_io.load_hf(path, scan_layers=scan)
    out = hf_io.save_hf(config, params, str(tmp_path / "export"))
    a, b = _all_tensors(path), _all_tensors(out)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = np.random.default_rng(0).integers(3, config.vocab_size, size=(2, 17))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
        got = reloaded(torch.tensor(ids)).logits.numpy()
    np.testing.assert_array_equal(ref, got)
    ours = np.asarray(llama.forward(config, params, ids))
    assert np.abs(ours - got).max() <= 1e-4
    assert os.path.exists(os.path.join(out, "generation_config.json"))


def test_sharded_export_with_index(hf_factory, tmp_path):
    _, path = hf_factory()
    config, params = hf_io.load_hf(path)
    out = hf_io.save_hf(config, params, str(tmp_path / "sharded"), max_shard_bytes=40_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert set(index["weight_map"]) == {n for n, _ in hf_io.hf_tensor_plan(config)}
    config2, params2 = hf_io.load_hf(out)
    ids = np.arange(3, 30)[None]
    np.testing.assert_array_equal(np.asarray(llama.forward(config, params, ids)),
                                  np.asarray(llama.forward(config2, params2, ids)))
    transformers.AutoModelForCausalLM.from_pretrained(out)  # loads without error


def test_export_writes_tokenizer_files(hf_factory, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    _, path = hf_factory()
    config, params = hf_io.load_hf(path)
    out = hf_io.save_hf(config, params, str(tmp_path / "with_tok"), tokenizer=fast)
    again = transformers.AutoTokenizer.from_pretrained(out)
    assert again("a b").input_ids == fast("a b").input_ids


def test_hub_llama31_style_config_parses():
    hub = {  # as on the Hub for Llama-3.1-8B-Instruct (legacy rope_theta + rope_scaling)
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "max_position_embeddings": 131072, "tie_word_embeddings": False, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16", "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
    }
    c = LlamaConfig.from_hf_dict(hub)
    assert c.head_dim == 128 and c.num_kv_heads == 8 and c.rope_theta == 500000.0
    assert c.rope_scaling == ("llama3", 8.0, 1.0, 4.0, 8192)
    assert c.eos_token_ids == (128001, 128008, 128009)
    assert abs(c.num_params - 8.03e9) < 0.01e9
    # and the transformers-5 spelling of the same thing round-trips
    c2 = LlamaConfig.from_hf_dict(c.to_hf_dict())
    assert c2 == c


def test_rope_frequencies_match_transformers_llama3():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, rope_theta=500000.0,
                                  max_position_embeddings=131072,
                                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                    high_freq_factor=4.0, original_max_position_embeddings=8192))
    inv, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = llama.rope_inv_freq(LlamaConfig.from_hf_dict(hf.to_dict()))
    np.testing.assert_allclose(ours, inv.numpy(), rtol=1e-6)


@pytest.mark.parametrize("field,value,needle", [
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "rope_type='yarn'"),
    ("architectures", ["MistralForCausalLM"], "architectures"),
    ("hidden_act", "gelu", "hidden_act"),
    ("attention_bias", True, "attention_bias"),
])
def test_unsupported_config_fields_are_named(field, value, needle):
    d = LlamaConfig.tiny().to_hf_dict()
    d[field] = value
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        LlamaConfig.from_hf_dict(d)


def test_missing_and_misshapen_tensors_are_named(hf_factory, tmp_path):
    from safetensors.numpy import save_file

    _, path = hf_factory()
    tensors = _all_tensors(path)
    broken = dict(tensors)
    del broken["model.layers.1.mlp.up_proj.weight"]
    save_file(broken, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(hf_io.CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        hf_io.load_hf(path)
    broken = dict(tensors)
    broken["model.layers.0.self_attn.k_proj.weight"] = np.zeros((5, 48), np.float32)
    save_file(broken, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(hf_io.CheckpointError, match=r"k_proj.*\(5, 48\).*\(24, 48\)"):
        hf_io.load_hf(path)


def test_unreadable_directory_errors(tmp_path):
    with pytest.raises(hf_io.CheckpointError, match="not a readable directory"):
        hf_io.load_hf(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(LlamaConfig.tiny().to_hf_dict()))
    with pytest.raises(hf_io.CheckpointError, match="neither model.safetensors"):
        hf_io.load_hf(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(hf_io.CheckpointError, match="not valid JSON"):
        hf_io.load_hf(str(tmp_path / "bad"))


def test_save_rejects_params_not_matching_config(tmp_path):
    c = LlamaConfig.tiny()
    params = llama.init_params(c)
    params["layers_0"]["mlp"]["w_up"] = np.zeros((3, 3), np.float32)
    with pytest.raises(hf_io.CheckpointError, match=r"layers_0/mlp/w_up.*\(3, 3\)"):
        hf_io.save_hf(c, params, str(tmp_path / "x"))
