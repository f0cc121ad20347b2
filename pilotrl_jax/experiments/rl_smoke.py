"""RL smoke run on a real checkpoint: the trainer's pipeline, then the HF export, then a logits check
of the export in transformers' LlamaForCausalLM (torch) against our JAX model at the same params.

    python -m pilotrl_jax.experiments.rl_smoke --config configs/smollm2_alfworld.py:smoke \\
        --workdir runs/smollm2_rl [--out runs/smollm2_rl/hf] [--no_eval]

Same as `python -m pilotrl_jax.train ...` followed by `python -m pilotrl_jax.export --checkpoint
WORKDIR/<last stage>/checkpoints/final --out WORKDIR/hf`, plus the check. Rerunning with the same
WORKDIR resumes (finished stages are skipped). Writes WORKDIR/smoke.json (per-stage metrics of the
last step, eval rows, export check) and exits non-zero when the export does not match.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Sequence

from absl import app, flags, logging
from ml_collections import config_flags


def _define_flags() -> None:
    """Register the CLI flags (only when run as a program, so importing this module defines none)."""
    config_flags.DEFINE_config_file("config", None, "The run's config file (e.g. configs/smollm2_alfworld.py:smoke).")
    flags.DEFINE_string("workdir", None, "Output directory; rerun with the same one to resume.")
    flags.DEFINE_string("out", None, "HF directory to export to (default WORKDIR/hf).")
    flags.DEFINE_bool("no_eval", False, "Skip the held-out evaluation at the end of each stage.")


PARITY_TOL = 2e-3  # max |logit difference|, float32 on both sides


def sample_ids(tokenizer, n_max: int = 512) -> list[int]:
    """A realistic token sequence for the logits check: an AdaPlan ALFWorld prompt plus a turn."""
    from pilotrl_jax.agent import prompts

    messages = [
        {"role": "system", "content": prompts.system_prompt("alfworld", "adaplan", "static")},
        {"role": "user", "content": "You are in the middle of a room. Looking quickly around you, you see a desk 1, "
                                    "a drawer 1, and a shelf 1.\n\nYour task is to: put some watch on desk."},
        {"role": "assistant", "content": "<global_plan>Step 1: go to drawer 1\nStep 2: take watch 1 from drawer 1\n"
                                         "Step 3: go to desk 1\nStep 4: move watch 1 to desk 1</global_plan>"
                                         "<thought>According to Step 1 of the global plan, I go to the drawer."
                                         "</thought><action>go to drawer 1</action>"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [int(t) for t in ids][:n_max]


def check_export(hf_dir: str, checkpoint: str, ids: Optional[Sequence[int]] = None, tol: float = PARITY_TOL) -> dict:
    """LlamaForCausalLM (torch) logits of `hf_dir` vs our JAX model at `checkpoint`'s params; raises if > tol."""
    import numpy as np
    import torch
    import transformers

    from pilotrl_jax import export
    from pilotrl_jax.models import llama

    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        raise FileNotFoundError(f"hf_dir={hf_dir!r} has no config.json; export first "
                                "(python -m pilotrl_jax.export --checkpoint CKPT --out HF_DIR)")
    config, params, _ = export.load_any(checkpoint)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = sample_ids(tok) if ids is None else [int(t) for t in ids]
    if not ids:
        raise ValueError("ids is empty; pass at least one token id (or None for the built-in sample)")
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits.float().numpy()
    ours = np.asarray(llama.forward(config, params, np.asarray([ids], np.int32)), np.float32)
    diff = float(np.abs(ours - ref).max())
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    out = {"hf_dir": hf_dir, "checkpoint": checkpoint, "tokens": len(ids), "max_abs_logit_diff": diff,
           "argmax_agreement": agree, "tol": tol, "hf_class": type(model).__name__,
           "num_params": int(sum(p.numel() for p in model.parameters()))}
    if not diff <= tol:
        raise AssertionError(f"exported model {hf_dir} differs from the JAX model at {checkpoint}: "
                             f"max |logit diff| {diff:.3g} > tol {tol}")
    return out


def _last_metrics(stage_dir: str) -> dict:
    """The last row of a stage's metrics.jsonl ({} when there is none)."""
    path = os.path.join(stage_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


def run_smoke(cfg, workdir: str, out: Optional[str] = None, evaluate_stages: bool = True) -> dict:
    """Run (or resume) the config's pipeline, export the last stage's final params to HF, check the export."""
    from pilotrl_jax import export
    from pilotrl_jax.train import config as C
    from pilotrl_jax.train.trainer import run_pipeline

    C.validate(cfg)
    workdir = os.path.abspath(workdir)
    t0 = time.perf_counter()
    stages = run_pipeline(cfg, workdir, evaluate_stages=evaluate_stages)
    t_train = time.perf_counter() - t0
    last = C.pipeline(cfg)[-1]
    final = stages[last]["final"]
    hf_dir = os.path.abspath(out or os.path.join(workdir, "hf"))
    t1 = time.perf_counter()
    rc = export.main(["--checkpoint", final, "--out", hf_dir])
    if rc != 0:
        raise RuntimeError(f"export of {final} to {hf_dir} failed (exit status {rc})")
    t_export = time.perf_counter() - t1
    t2 = time.perf_counter()
    check = check_export(hf_dir, final)
    t_check = time.perf_counter() - t2
    report = {
        "workdir": workdir, "pipeline": list(C.pipeline(cfg)), "final": final, "hf_dir": hf_dir,
        "stages": {n: {"last_step": _last_metrics(os.path.join(workdir, n)), "eval": v["eval"]}
                   for n, v in stages.items()},
        "export_check": check,
        "time_s": {"pipeline": t_train, "export": t_export, "check": t_check},
    }
    with open(os.path.join(workdir, "smoke.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    return report


def format_report(report: dict) -> str:
    """A few lines: per-stage reward/success/grad norm of the last step, eval rows, export check, times."""
    lines = []
    for name, s in report["stages"].items():
        m = s["last_step"]
        if m:
            lines.append(f"[{name}] step {m.get('step')}: reward {m.get('reward/mean', float('nan')):+.3f} "
                         f"success {m.get('success/train', float('nan')):.2f} "
                         f"grad_norm {m.get('ppo/grad_norm', float('nan')):.3g} "
                         f"step time {m.get('time/step_s', float('nan')):.0f} s")
        for r in s["eval"]:
            lines.append(f"[{name}] eval {r['mode']}: success {r['success_rate'] * 100:.1f}% of {r['episodes']}")
    c = report["export_check"]
    lines.append(f"export {c['hf_dir']}: {c['hf_class']} ({c['num_params'] / 1e6:.1f}M params) loads; "
                 f"max |logit diff| vs JAX {c['max_abs_logit_diff']:.2e} over {c['tokens']} tokens "
                 f"(tol {c['tol']}), argmax agreement {c['argmax_agreement'] * 100:.1f}%")
    t = report["time_s"]
    lines.append(f"time: pipeline {t['pipeline']:.0f} s, export {t['export']:.0f} s, check {t['check']:.0f} s")
    return "\n".join(lines)


def main(argv):
    """CLI entry point."""
    del argv
    F = flags.FLAGS
    logging.set_verbosity(logging.WARNING)
    if F.config is None or not F.workdir:
        print("usage: python -m pilotrl_jax.experiments.rl_smoke --config configs/FILE.py[:smoke] --workdir DIR",
              file=sys.stderr)
        return 2
    from pilotrl_jax.train.setup import use_compilation_cache

    use_compilation_cache(F.workdir)
    try:
        report = run_smoke(F.config, F.workdir, F.out, evaluate_stages=not F.no_eval)
    except (ValueError, FileNotFoundError, AssertionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0


if __name__ == "__main__":
    _define_flags()
    app.run(main)
