"""Perceiver IO in PyTorch: every published assembly, loading Hugging Face checkpoints."""

from model_core.assemblies import PerceiverForMaskedLM, PerceiverForTask, PerceiverOutput, build_model
from model_core.checkpoint import from_config, init_weights, load_pretrained, save_pretrained
from model_core.config import Architecture, PerceiverConfig
from model_core.errors import CheckpointError, CheckpointNotFoundError, StateDictMismatchError
from model_core.model import Encoded, PerceiverModel
from model_core.presets import PRESETS, Preset, preset_config

__all__ = [
    "PRESETS",
    "Architecture",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Encoded",
    "PerceiverConfig",
    "PerceiverForMaskedLM",
    "PerceiverForTask",
    "PerceiverModel",
    "PerceiverOutput",
    "Preset",
    "StateDictMismatchError",
    "build_model",
    "from_config",
    "init_weights",
    "load_pretrained",
    "preset_config",
    "save_pretrained",
]
