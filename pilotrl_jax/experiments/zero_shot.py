"""Zero-shot evaluation of a config's base model (no training) in several agent modes on held-out tasks.

    python -m pilotrl_jax.experiments.zero_shot --config configs/smollm2_alfworld.py --workdir runs/smollm2 \\
        [--num_tasks 16] [--modes adaplan,react] [--exemplar none|expert|both] [--json OUT.json]

The model is the config's `model` section (e.g. an HF directory such as SmolLM2-135M-Instruct,
tokenizer and chat template included); the environment, agent limits and evaluation sampling
(eval.temperature, eval.top_p) come from the same config. WORKDIR holds generated games and
writes `zero_shot.json` plus `zero_shot_<mode>.jsonl` (every episode's spans as text;
`zero_shot_<mode>_expert_exemplar.jsonl` with the exemplar). `--exemplar` runs each mode without
(`none`) and/or with (`expert`) one worked expert episode on a train task in the system prompt
(config.agent.exemplar; default: the config's); `both` gives a row per (mode, exemplar). Prints one
table row per (mode, exemplar): success overall and per task type, format-error rate, wall time.
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
    config_flags.DEFINE_config_file("config", None, "The config file (model, env, agent, eval).")
    flags.DEFINE_string("workdir", None, "Output folder (generated games, results).")
    flags.DEFINE_integer("num_tasks", None, "Held-out tasks per mode (default config.eval.num_tasks).")
    flags.DEFINE_string("modes", None, "Comma-separated agent modes (default config.eval.modes).")
    flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
    flags.DEFINE_string("exemplar", None, "none | expert | both: evaluate without and/or with an expert example "
                        "episode in the prompt (default: config.agent.exemplar).")

EXEMPLAR_CHOICES = {"none": ("",), "expert": ("expert",), "both": ("", "expert")}


def check_exemplars(cfg, exemplar: Optional[str]) -> tuple[str, ...]:
    """The exemplar kinds to evaluate ('' none, 'expert') from --exemplar (None: config.agent.exemplar)."""
    from pilotrl_jax.agent import prompts

    if exemplar is None:
        return (prompts.check_exemplar(str(cfg.agent.get("exemplar", ""))),)
    if exemplar not in EXEMPLAR_CHOICES:
        raise ValueError(f"--exemplar={exemplar!r} is unknown; expected one of {sorted(EXEMPLAR_CHOICES)} "
                         "(both: a row per mode without and with the expert example episode)")
    return EXEMPLAR_CHOICES[exemplar]


def check_request(cfg, num_tasks: Optional[int], modes: Optional[Sequence[str]]) -> tuple[int, tuple[str, ...]]:
    """Validate (num_tasks, modes) against the config; returns them resolved, or raises ValueError."""
    from pilotrl_jax.agent import prompts
    from pilotrl_jax.train.config import _split

    n = int(cfg.eval.num_tasks) if num_tasks is None else num_tasks
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"num_tasks={num_tasks!r}; expected a positive number of held-out tasks")
    if cfg.env.name == "alfworld" and n > int(cfg.env.num_eval_tasks):
        raise ValueError(f"num_tasks={n} but config.env.num_eval_tasks={cfg.env.num_eval_tasks} held-out tasks are "
                         f"generated; pass --config.env.num_eval_tasks={n} (or fewer tasks)")
    modes = _split(cfg.eval.modes if modes is None else modes)
    bad = [m for m in modes if m not in prompts.AGENT_MODES]
    if bad or not modes:
        raise ValueError(f"modes={list(modes)} has {bad or 'nothing'}; expected a non-empty subset of "
                         f"{list(prompts.AGENT_MODES)}")
    return n, modes


def zero_shot(cfg, workdir: str, num_tasks: Optional[int] = None, modes: Optional[Sequence[str]] = None,
              progress: bool = True, exemplar: Optional[str] = None) -> list[dict]:
    """Evaluate the config's base model in each mode (and exemplar setting: --exemplar) on the first
    `num_tasks` held-out tasks; returns one row per (mode, exemplar)."""
    from pilotrl_jax.train import config as C
    from pilotrl_jax.train import setup as S
    from pilotrl_jax.train.evaluation import evaluate

    C.validate(cfg)
    n, modes = check_request(cfg, num_tasks, modes)
    kinds = check_exemplars(cfg, exemplar)
    ctx = S.build_context(cfg, workdir)
    tasks = ctx.eval_tasks[:n]
    if len(tasks) < n:
        raise ValueError(f"num_tasks={n} but the {cfg.env.eval_split!r} split has {len(tasks)} tasks; "
                         "pass fewer tasks or raise config.env.num_eval_tasks")
    params = ctx.load_base_params()
    name = os.path.basename(os.path.normpath(cfg.model.path)) if cfg.model.path else cfg.model.source
    rows = []
    for mode in modes:
        for kind in kinds:
            t0 = time.perf_counter()
            table, batch = evaluate(ctx, params, tasks, mode=mode, progress=progress, exemplar=kind)
            wall = time.perf_counter() - t0
            batch.to_jsonl(os.path.join(ctx.workdir, f"zero_shot_{mode}{'_expert_exemplar' if kind else ''}.jsonl"))
            stats = getattr(batch, "stats", None) or {}
            replan = cfg.agent.replan if mode == "adaplan" else None
            ex_task = ctx.exemplars[(mode, replan)][0] if kind else None
            rows.append(dict(model=name, mode=mode, exemplar=kind or "none", exemplar_task=ex_task, env=cfg.env.name,
                             split=cfg.env.eval_split, seed=int(cfg.seed), wall_s=wall,
                             policy_tokens=stats.get("policy_tokens"), **table))
    with open(os.path.join(ctx.workdir, "zero_shot.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    """A table of (mode, exemplar) rows: success overall and per task type, format-error rate, then one
    line per row: successes, episodes, turns, format errors, wall time."""
    from pilotrl_jax.train.evaluation import per_type_columns

    type_head, type_cells = per_type_columns(rows)
    head = f"{'model':<24} {'mode':<8} {'exemplar':<8} {'success':>8} {'fmt err':>8} {'episodes':>8} " + type_head
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = type_cells(r)
        lines.append(f"{r['model'][:24]:<24} {r['mode']:<8} {r.get('exemplar', 'none'):<8} "
                     f"{r['success_rate'] * 100:>7.1f}% {r['format_error_rate'] * 100:>7.1f}% {r['episodes']:>8} {cells}")
    for r in rows:
        won = round(r["success_rate"] * r["episodes"])
        label = r["mode"] + ("" if r.get("exemplar", "none") == "none" else f" + {r['exemplar']} exemplar")
        lines.append(f"{label}: success {r['success_rate'] * 100:.1f}% ({won}/{r['episodes']}), "
                     f"mean turns {r['mean_turns']:.1f}, episodes with format errors "
                     f"{r['format_error_rate'] * 100:.0f}%, {r['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv):
    """CLI entry point."""
    del argv
    F = flags.FLAGS
    logging.set_verbosity(logging.WARNING)
    if F.config is None or not F.workdir:
        print("usage: python -m pilotrl_jax.experiments.zero_shot --config configs/FILE.py --workdir DIR",
              file=sys.stderr)
        return 2
    from pilotrl_jax.train.setup import use_compilation_cache

    use_compilation_cache(F.workdir)
    try:
        rows = zero_shot(F.config, F.workdir, F.num_tasks, F.modes, exemplar=F.exemplar)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = F.config
    print(f"env: {cfg.env.name}  split: {cfg.env.eval_split}  model: {cfg.model.path or cfg.model.source}")
    print(format_rows(rows))
    if F.json:
        with open(F.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    _define_flags()
    app.run(main)
