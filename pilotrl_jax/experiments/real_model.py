"""The whole PilotRL pipeline on a real checkpoint, end to end: the trainer's pipeline (SFT warm start,
stages 1 -> 2 -> 3, stage 3 alone; held-out evaluation of each stage in every eval mode), results.json
and curves.png, the HF export of the last stage, and a logits check of the export in transformers'
LlamaForCausalLM (torch) against our JAX model at the same params.

    python -m pilotrl_jax.experiments.real_model --config configs/smollm2_alfworld.py:device \
        --out runs/smollm2_device [--hf_out DIR] [--no_eval]

One script for every scale: the config arg sets it (`:tiny` in the test suite, `:cpu` on a laptop,
`:device` on one GPU; see gpu/README.md). Rerunning with the same --out resumes (finished stages are
skipped). Writes OUT/results.json ({"runs": rows}: one row per evaluated model and mode, with the
spread over samples and the format-error rate), OUT/report.json (the last step's metrics per stage,
the export check, the time each phase took) and OUT/curves.png; exits non-zero when the export does
not match.
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
    config_flags.DEFINE_config_file("config", None, "The run's config file (e.g. configs/smollm2_alfworld.py:cpu).")
    flags.DEFINE_string("out", None, "Output directory; rerun with the same one to resume.")
    flags.DEFINE_string("hf_out", None, "HF directory to export to (default OUT/hf).")
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
    import jax
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
    config = config.replace(dtype="float32")  # a bf16-trained run's export is checked at float32, as torch runs it
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
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


def run_real_model(cfg, out_dir: str, hf_out: Optional[str] = None, evaluate_stages: bool = True) -> dict:
    """Run (or resume) the config's pipeline, write results.json, export the last stage to HF and check it."""
    from pilotrl_jax import export
    from pilotrl_jax.experiments.results import rows_from_run, write_results
    from pilotrl_jax.train import config as C
    from pilotrl_jax.train.trainer import run_pipeline

    C.validate(cfg)
    out_dir = os.path.abspath(out_dir)
    t0 = time.perf_counter()
    stages = run_pipeline(cfg, out_dir, evaluate_stages=evaluate_stages)
    t_train = time.perf_counter() - t0
    names = C.pipeline(cfg)
    rows = rows_from_run(out_dir, names, cfg.seed)
    write_results(os.path.join(out_dir, "results.json"), rows)
    final = stages[names[-1]]["final"]
    hf_dir = os.path.abspath(hf_out or os.path.join(out_dir, "hf"))
    t1 = time.perf_counter()
    rc = export.main(["--checkpoint", final, "--out", hf_dir])
    if rc != 0:
        raise RuntimeError(f"export of {final} to {hf_dir} failed (exit status {rc})")
    t_export = time.perf_counter() - t1
    t2 = time.perf_counter()
    check = check_export(hf_dir, final)
    t_check = time.perf_counter() - t2
    report = {
        "out": out_dir, "pipeline": list(names), "final": final, "hf_dir": hf_dir, "rows": rows,
        "stages": {n: {"last_step": _last_metrics(os.path.join(out_dir, n)), "eval": v["eval"],
                       "time_s": _stage_seconds(os.path.join(out_dir, n)),
                       "eval_s": float(sum(r.get("wall_s", 0.0) for r in v["eval"]))} for n, v in stages.items()},
        "export_check": check,
        "time_s": {"pipeline": t_train, "export": t_export, "check": t_check},
    }
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    return report


def _stage_seconds(stage_dir: str) -> Optional[float]:
    """Wall seconds a stage's steps took (the sum of its metrics' time/step_s), None when unrecorded."""
    path = os.path.join(stage_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [json.loads(ln) for ln in f if ln.strip()]
    t = [r["time/step_s"] for r in rows if "time/step_s" in r]
    return float(sum(t)) if t else None


def format_rows(rows: Sequence[dict]) -> str:
    """results.json rows as a table: success (and its spread over samples), pass@k, format errors."""
    head = f"{'model':<12} {'mode':<8} {'success':>8} {'+- samples':>10} {'episodes':>8} {'pass@k':>7} {'fmt err/ep':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        k = r.get("samples_per_task", 0)
        pk = f"{r['pass_at_k'] * 100:.1f}%" if k else "-"
        lines.append(f"{r['model']:<12} {r['mode']:<8} {r['success_rate'] * 100:>7.1f}% "
                     f"{r.get('success_std_over_samples', 0.0) * 100:>9.1f}% {r['episodes']:>8} {pk:>7} "
                     f"{r.get('format_errors_per_episode', 0.0):>10.2f}")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """Per-stage last-step metrics, the held-out table, the export check and the times."""
    lines = []
    for name, s in report["stages"].items():
        m = s["last_step"]
        took = (f", steps {s['time_s']:.0f} s" if s.get("time_s") else "") + (
            f", held-out evaluation {s['eval_s']:.0f} s" if s.get("eval_s") else "")
        if m and "reward/mean" in m:
            lines.append(f"[{name}] step {m.get('step')}: reward {m.get('reward/mean', float('nan')):+.3f} "
                         f"success {m.get('success/train', float('nan')):.2f} "
                         f"grad_norm {m.get('ppo/grad_norm', float('nan')):.3g} "
                         f"step time {m.get('time/step_s', float('nan')):.0f} s{took}")
        elif m:
            lines.append(f"[{name}] step {m.get('step')}: loss {m.get('sft/loss', float('nan')):.3f}{took}")
    lines += ["", "Held-out success (+- = std over samples):", format_rows(report["rows"]), ""]
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
    if F.config is None or not F.out:
        print("usage: python -m pilotrl_jax.experiments.real_model --config configs/FILE.py[:SCALE] --out DIR",
              file=sys.stderr)
        return 2
    from pilotrl_jax.train.setup import use_compilation_cache

    use_compilation_cache(F.out)
    try:
        report = run_real_model(F.config, F.out, F.hf_out, evaluate_stages=not F.no_eval)
    except (ValueError, FileNotFoundError, AssertionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    print(f"\nresults: {os.path.join(report['out'], 'results.json')}\ncurves:  {os.path.join(report['out'], 'curves.png')}")
    return 0


if __name__ == "__main__":
    _define_flags()
    app.run(main)
