"""`python -m pilotrl_jax.export` on Orbax params checkpoints and HF directories."""
import subprocess
import sys

import numpy as np
import torch
import transformers

from pilotrl_jax import export
from pilotrl_jax.models import llama, param_store
from pilotrl_jax.models.config import LlamaConfig


def test_orbax_params_round_trip(tmp_path):
    c = LlamaConfig.tiny(scan_layers=True)
    p = llama.init_params(c)
    param_store.save_params(str(tmp_path / "ck"), c, p)
    c2, p2 = param_store.load_params(str(tmp_path / "ck"))
    assert c2 == c
    for a, b in zip(np.asarray(p["layers"]["attn"]["wq"]), np.asarray(p2["layers"]["attn"]["wq"])):
        np.testing.assert_array_equal(a, b)


def test_export_cli_from_manager_layout_loads_in_transformers(tmp_path):
    c = LlamaConfig.tiny()
    p = llama.init_params(c)
    root = tmp_path / "ckpts"
    param_store.write_config(str(root), c)
    # a CheckpointManager-like tree: ROOT/<step>/params; the latest step is exported
    param_store.save_params(str(root / "3"), c, jax_tree_scale(p, 0.0))
    param_store.save_params(str(root / "7"), c, p)
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "pilotrl_jax.export", "--checkpoint", str(root), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = np.arange(3, 20)[None]
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(llama.forward(c, p, ids)) - ref).max() <= 1e-4


def jax_tree_scale(p, s):
    import jax

    return jax.tree.map(lambda x: x * s, p)


def test_export_cli_names_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert export.main(["--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no params/" in capsys.readouterr().err
