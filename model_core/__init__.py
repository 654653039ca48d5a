"""Perceiver IO in PyTorch: every published assembly, loading Hugging Face checkpoints."""

from model_core.checkpoint import from_config, init_weights, load_pretrained, save_pretrained
from model_core.config import Architecture, PerceiverConfig
from model_core.errors import CheckpointError, CheckpointNotFoundError, StateDictMismatchError
from model_core.model import Encoded, PerceiverModel
from model_core.tasks import PerceiverForMaskedLM, PerceiverForTask, PerceiverOutput, build_model

__all__ = [
    "Architecture",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Encoded",
    "PerceiverConfig",
    "PerceiverForMaskedLM",
    "PerceiverForTask",
    "PerceiverModel",
    "PerceiverOutput",
    "StateDictMismatchError",
    "build_model",
    "from_config",
    "init_weights",
    "load_pretrained",
    "save_pretrained",
]
