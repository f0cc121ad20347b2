"""tpu/*.sh: bash syntax, and the gcloud commands they would run (--dry-run prints instead of running)."""
import glob
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "tpu", "*.sh")))


def _dry(script, *args):
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no gcloud here: state queries report NOT_FOUND
    out = subprocess.run(["bash", os.path.join(ROOT, "tpu", script), *args, "--dry-run"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stderr


def test_scripts_exist_and_parse():
    names = {os.path.basename(s) for s in SCRIPTS}
    assert {"common.sh", "create.sh", "setup.sh", "launch.sh", "logs.sh", "stop.sh", "resume.sh",
            "teardown.sh"} <= names
    for s in SCRIPTS:
        r = subprocess.run(["bash", "-n", s], capture_output=True, text=True)
        assert r.returncode == 0, f"{s}: {r.stderr}"


@pytest.mark.parametrize("args, want", [
    (["--type", "v5p-32", "--spot"], "gcloud compute tpus tpu-vm create pilotrl-v5p-32 --zone=us-east5-a "
     "--accelerator-type=v5p-32 --version=v2-alpha-tpuv5 --spot"),
    (["--type", "v4-16", "--name", "t", "--zone", "us-central2-b", "--queued", "--project", "p"],
     "gcloud compute tpus queued-resources create t-qr --node-id=t --zone=us-central2-b --project=p "
     "--accelerator-type=v4-16 --runtime-version=tpu-ubuntu2204-base"),
    (["--type", "v5litepod-16"], "--version=v2-alpha-tpuv5-lite"),
])
def test_create_commands(args, want):
    rc, err = _dry("create.sh", *args)
    assert rc == 0, err
    assert want in err


def test_create_rejects_unknown_type():
    rc, err = _dry("create.sh", "--type", "v9-8")
    assert rc == 2 and "unknown accelerator type 'v9-8'" in err


def test_launch_runs_the_same_command_on_all_workers():
    rc, err = _dry("launch.sh", "--config", "configs/tpu_llama31_8b.py", "--workdir", "/mnt/gcs/runs/r1",
                   "--", "--config.stages.stage1.steps=5")
    assert rc == 0, err
    assert "--worker=all" in err
    assert ("python -m pilotrl_jax.train --config configs/tpu_llama31_8b.py --workdir /mnt/gcs/runs/r1 "
            "--config.stages.stage1.steps=5") in err
    rc, err = _dry("launch.sh", "--config", "configs/tpu_llama31_8b.py")
    assert rc == 2 and "--workdir is required" in err


def test_resume_recreates_a_missing_slice_and_relaunches():
    rc, err = _dry("resume.sh", "--type", "v5p-32", "--spot", "--config", "configs/tpu_llama31_8b.py",
                   "--workdir", "/mnt/gcs/runs/r1")
    assert rc == 0, err
    assert "state: NOT_FOUND" in err
    creates = err.index("tpu-vm create pilotrl-v5p-32")
    scp = err.index("tpu-vm scp")
    launch = err.index("pilotrl_jax.train --config configs/tpu_llama31_8b.py --workdir /mnt/gcs/runs/r1")
    assert creates < scp < launch


def test_teardown_and_logs():
    rc, err = _dry("teardown.sh", "--queued")
    assert rc == 0 and "queued-resources delete pilotrl-v5p-32-qr" in err
    rc, err = _dry("logs.sh", "--run", "r1")
    assert rc == 0 and "--worker=0" in err and "tail -n 100 -F ~/pilotrl_logs/r1.log" in err
