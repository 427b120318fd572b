"""Shared training machinery for every recipe: typed YAML configs, atomic checkpoints, metrics, the loop."""

from seqwin.training.checkpoint import CheckpointManager
from seqwin.training.config import ConfigError, load_config, to_yaml
from seqwin.training.metrics import MetricWriter
from seqwin.training.trainer import BatchSource, StepContext, Trainer
from seqwin.training.trainer_config import TrainerConfig

__all__ = ["BatchSource", "CheckpointManager", "ConfigError", "MetricWriter", "StepContext", "Trainer", "TrainerConfig",
           "load_config", "to_yaml"]
