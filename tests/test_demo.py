"""`make demo`'s entry point refuses to resume an output folder written under another config."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_refuses_a_folder_made_with_another_config(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"seed": 12345}))
    (out / "keep.txt").write_text("not lost")
    r = subprocess.run([sys.executable, "-m", "pilotrl_jax.demo", f"--config={ROOT}/configs/smoke.py", f"--out={out}"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode != 0
    assert "made with another config" in r.stderr and "--fresh" in r.stderr
    assert (out / "keep.txt").read_text() == "not lost" and json.loads((out / "config.json").read_text()) == {"seed": 12345}
