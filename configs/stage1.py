"""PilotRL stage 1 alone (see configs/pilotrl.py); start it from a checkpoint with
--config.model.source=checkpoint --config.model.path=PREVIOUS_STAGE/checkpoints/final."""
from configs_common import load


def get_config(arg: str = ""):
    """Stage 1 of the paper's pipeline."""
    return load("pilotrl").get_config("stage1")
