"""Training: the paper's SGD recipe by iterations, checkpoints and exact resume.

Adversarial training (Algorithm 1 of K17 and N18, the loss of N18 section 3.1)
plugs into :func:`train` through its ``objective`` argument.
"""

from cascade_adv.training.adversarial import adversarial_batch
from cascade_adv.training.checkpoint import latest_checkpoint, read_state, save_checkpoint
from cascade_adv.training.config import TrainConfig, dump_config, load_config
from cascade_adv.training.loop import (
    TrainingSetup,
    TrainResult,
    clean_objective,
    init_id,
    initial_model,
    learning_rate,
    model_config_for,
    resolve_device,
    setup_training,
    train,
    train_step,
)
from cascade_adv.training.loss import embedding_distance, unified_loss

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingSetup",
    "adversarial_batch",
    "clean_objective",
    "dump_config",
    "embedding_distance",
    "init_id",
    "initial_model",
    "latest_checkpoint",
    "learning_rate",
    "load_config",
    "model_config_for",
    "read_state",
    "resolve_device",
    "save_checkpoint",
    "setup_training",
    "train",
    "train_step",
    "unified_loss",
]
