"""Training: the config (fields, validation, files and overrides), the builders that turn it
into typed parts, the sharded state, the pure step, optimizer, orbax checkpoints, metrics, the
loop, preemption, and `train_and_evaluate` / `export_run`, the entry points."""
from siamjax.train.checkpoint import CheckpointError
from siamjax.train.config import ConfigError, default_config
from siamjax.train.config_checks import validate
from siamjax.train.config_file import apply_overrides, load_config, load_config_file
from siamjax.train.experiment import export_run, load_trained_encoder, train_and_evaluate
from siamjax.train.loop import LoopResult, NonFiniteLossError
from siamjax.train.state import TrainState

__all__ = ["CheckpointError", "ConfigError", "LoopResult", "NonFiniteLossError", "TrainState",
           "apply_overrides", "default_config", "export_run", "load_config", "load_config_file",
           "load_trained_encoder", "train_and_evaluate", "validate"]
