"""PilotRL stage 2 alone (see configs/pilotrl.py); start it from a checkpoint with
--config.model.source=checkpoint --config.model.path=PREVIOUS_STAGE/checkpoints/final."""
from configs_common import load


def get_config(arg: str = ""):
    """Stage 2 of the paper's pipeline."""
    return load("pilotrl").get_config("stage2")
