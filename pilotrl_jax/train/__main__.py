"""`python -m pilotrl_jax.train --config configs/<file>.py[:arg] --workdir DIR [--config.x.y=value ...]`

Runs (or resumes) the config's pipeline of stages; see `pilotrl_jax.train.trainer`.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (get_config).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; rerun with the same one to resume.")
_NO_EVAL = flags.DEFINE_bool("no_eval", False, "Skip the held-out evaluation at the end of each stage.")


def main(argv):
    """CLI entry point."""
    del argv
    from pilotrl_jax import distributed
    from pilotrl_jax.train.evaluation import format_table
    from pilotrl_jax.train.trainer import run_pipeline

    from pilotrl_jax.train.setup import use_compilation_cache

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if _WORKDIR.value:  # compiled steps are reused by reruns/resumes of the same run
        use_compilation_cache(_WORKDIR.value)
    distributed.initialize()
    if _CONFIG.value is None or not _WORKDIR.value:
        print("usage: python -m pilotrl_jax.train --config configs/FILE.py --workdir DIR", file=sys.stderr)
        return 2
    out = run_pipeline(_CONFIG.value, _WORKDIR.value, evaluate_stages=not _NO_EVAL.value)
    rows = [r for v in out.values() for r in v["eval"]]
    if rows:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    app.run(main)
