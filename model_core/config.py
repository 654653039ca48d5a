"""Typed Perceiver IO configuration, parsed once from a checkpoint's config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from model_core.attention import HIDDEN_ACTS, SHAPES_FOR_ATTENTION, HiddenAct, ShapeForAttention

# The task each architecture serves (the pipeline names of the Hugging Face hub).
TaskName = Literal["fill-mask", "text-classification", "image-classification", "optical-flow", "video-autoencoding"]


class Architecture(str, Enum):
    """The Hugging Face Perceiver classes whose checkpoints model_core loads."""

    MASKED_LM = "PerceiverForMaskedLM"
    SEQUENCE_CLASSIFICATION = "PerceiverForSequenceClassification"
    IMAGE_LEARNED = "PerceiverForImageClassificationLearned"
    IMAGE_FOURIER = "PerceiverForImageClassificationFourier"
    IMAGE_CONV = "PerceiverForImageClassificationConvProcessing"
    OPTICAL_FLOW = "PerceiverForOpticalFlow"
    MULTIMODAL_AUTOENCODING = "PerceiverForMultimodalAutoencoding"

    @property
    def task(self) -> TaskName:
        return _TASKS[self]


_TASKS: dict[Architecture, TaskName] = {
    Architecture.MASKED_LM: "fill-mask",
    Architecture.SEQUENCE_CLASSIFICATION: "text-classification",
    Architecture.IMAGE_LEARNED: "image-classification",
    Architecture.IMAGE_FOURIER: "image-classification",
    Architecture.IMAGE_CONV: "image-classification",
    Architecture.OPTICAL_FLOW: "optical-flow",
    Architecture.MULTIMODAL_AUTOENCODING: "video-autoencoding",
}


@dataclass(frozen=True)
class PerceiverConfig:
    """The fields of transformers' PerceiverConfig that shape the network.

    Defaults are the transformers class defaults, so a config.json that omits a field
    (the optical-flow checkpoint has no `max_position_embeddings`, for example) means
    what it means there. `layer_norm_eps` is kept for round-tripping only: every
    LayerNorm uses torch's default eps (1e-5), as the checkpoints were trained with.
    """

    architecture: Architecture
    num_latents: int = 256
    d_latents: int = 1280
    d_model: int = 768
    num_blocks: int = 1
    num_self_attends_per_block: int = 26
    num_self_attention_heads: int = 8
    num_cross_attention_heads: int = 8
    qk_channels: int | None = None
    v_channels: int | None = None
    cross_attention_shape_for_attention: ShapeForAttention = "kv"
    self_attention_widening_factor: int = 1
    cross_attention_widening_factor: int = 1
    hidden_act: HiddenAct = "gelu"
    use_query_residual: bool = True
    vocab_size: int = 262
    max_position_embeddings: int = 2048
    image_size: int | tuple[int, ...] = 56
    train_size: tuple[int, int] = (368, 496)
    num_frames: int = 16
    audio_samples_per_frame: int = 1920
    samples_per_patch: int = 16
    output_shape: tuple[int, ...] = (1, 16, 224, 224)
    output_num_channels: int = 512
    label_trainable_num_channels: int = 1024
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    id2label: dict[int, str] = field(default_factory=dict)
    # Everything else config.json carried (legacy keys included), written back on save.
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {sorted(choices)}")

    @property
    def task(self) -> TaskName:
        return self.architecture.task

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2

    @property
    def labels(self) -> list[str]:
        """Label names by index; `LABEL_i` where the checkpoint names none."""
        return [self.id2label.get(i, f"LABEL_{i}") for i in range(self.num_labels)]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PerceiverConfig:
        archs = raw.get("architectures") or []
        known = {a.value for a in Architecture}
        matches = [a for a in archs if a in known]
        if not matches:
            raise ValueError(f"config.json names architectures {archs!r}; expected one of {sorted(known)}")
        kwargs: dict[str, Any] = {"architecture": Architecture(matches[0])}
        names = {f.name for f in dataclasses.fields(cls)} - {"architecture", "id2label", "extra"}
        for key, value in raw.items():
            name = "label_trainable_num_channels" if key == "_label_trainable_num_channels" else key
            if name in names:
                kwargs[name] = tuple(value) if isinstance(value, list) else value
        id2label = raw.get("id2label")
        if id2label:
            kwargs["id2label"] = {int(k): str(v) for k, v in id2label.items()}
        elif "num_labels" in raw:
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(int(raw["num_labels"]))}
        consumed = names | {"_label_trainable_num_channels", "id2label", "label2id", "num_labels"}
        kwargs["extra"] = {k: v for k, v in raw.items() if k not in consumed}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A config.json dict that transformers' PerceiverConfig reads back identically."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("architecture", "id2label", "extra"):
                continue
            value = getattr(self, f.name)
            key = "_label_trainable_num_channels" if f.name == "label_trainable_num_channels" else f.name
            out[key] = list(value) if isinstance(value, tuple) else value
        out["architectures"] = [self.architecture.value]
        out["model_type"] = "perceiver"
        labels = self.labels
        out["id2label"] = {str(i): name for i, name in enumerate(labels)}
        out["label2id"] = {name: i for i, name in enumerate(labels)}
        return out


# The closed choices among the fields, checked once, when a config is made.
_CHOICES: dict[str, tuple[str, ...]] = {
    "hidden_act": HIDDEN_ACTS,
    "cross_attention_shape_for_attention": SHAPES_FOR_ATTENTION,
}
