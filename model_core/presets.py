"""Named presets, as data: one per published DeepMind checkpoint, and small ones of every
architecture for tests, the demo and load runs.

A preset's `args` are architecture arguments spelled as config.json spells them;
`Preset.config()` (or `preset_config(name)`) gives the config.json dict that `from_config`
and transformers' `PerceiverConfig(**...)` accept. Apart from them, as timm keeps a
checkpoint's pretrained config apart from its model arguments, `preprocessing` says what
the inputs must look like (the vision checkpoints' preprocessor_config.json, the flow
output scale, the audio rate). Labels are not part of a preset: pass `id2label=...`.

Tiers: the published values under the hub names; `-tiny` (8 latents of 32 channels: unit
tests and server tests); `-small` (a text model big enough to batch: load runs); `-demo`
(the `--demo` profile, where it differs from `-tiny`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

from model_core.config import Architecture, PerceiverConfig
from model_core.flow_tiling import MIN_OVERLAP
from model_core.image_processing import DEFAULT, ImageProcessingConfig

# A value a preset writes into config.json.
ConfigValue = int | float | str | bool | None | list[int] | list[str] | dict[str, str]


@dataclass(frozen=True, kw_only=True)
class FlowProcessing:
    """Frame pairs as `flow_processing` makes them (RGB in [-1, 1], 3x3 neighbourhoods),
    frames larger than train_size tiled as `flow_tiling` does."""

    flow_scale: float = 20.0  # model output x flow_scale = flow in pixels (the colab's FLOW_SCALE_FACTOR)
    min_tile_overlap: int = MIN_OVERLAP


@dataclass(frozen=True, kw_only=True)
class AudioVideoProcessing:
    """Clips of num_frames RGB frames in [0, 1] and mono audio in [-1, 1] at `sample_rate`;
    audio_samples_per_frame samples per frame (1920 at 48 kHz: 25 frames a second)."""

    sample_rate: int = 48_000


Preprocessing = ImageProcessingConfig | FlowProcessing | AudioVideoProcessing | None


@dataclass(frozen=True, kw_only=True)
class Preset:
    architecture: Architecture
    args: Mapping[str, ConfigValue]
    preprocessing: Preprocessing = None  # None: the byte tokenizer, nothing to set
    hub_id: str | None = None  # the published checkpoint whose config this is

    def __post_init__(self) -> None:
        parsed = PerceiverConfig.from_dict(self.config())  # raises on a bad value
        unknown = sorted(set(parsed.extra) - {"architectures"})
        if unknown:
            raise ValueError(f"not PerceiverConfig fields: {unknown}")

    def config(self, **overrides: ConfigValue) -> dict[str, ConfigValue]:
        """A fresh config.json dict: the architecture, the preset's arguments, `overrides`."""
        return copy.deepcopy({"architectures": [self.architecture.value], **self.args, **overrides})


_IMAGENET = DEFAULT  # the vision checkpoints' preprocessor_config.json
_VISION = {
    "num_latents": 512,
    "d_latents": 1024,
    "num_blocks": 8,
    "num_self_attends_per_block": 6,
    "num_self_attention_heads": 8,
    "num_cross_attention_heads": 1,
    "num_labels": 1000,
}
_TINY_LATENTS = {
    "num_latents": 8,
    "d_latents": 32,
    "num_blocks": 1,
    "num_self_attends_per_block": 2,
    "num_self_attention_heads": 2,
    "num_cross_attention_heads": 1,
}
_TINY_TEXT = {**_TINY_LATENTS, "d_model": 16, "qk_channels": 8, "v_channels": 32, "max_position_embeddings": 256}
_DEMO_TEXT = {**_TINY_TEXT, "max_position_embeddings": 512}
_SMALL_TEXT = {
    "num_latents": 32,
    "d_latents": 64,
    "num_blocks": 1,
    "num_self_attends_per_block": 2,
    "num_self_attention_heads": 2,
    "num_cross_attention_heads": 1,
    "d_model": 32,
    "qk_channels": 32,
    "v_channels": 64,
    "max_position_embeddings": 1024,
}
_TINY_IMAGE = {**_TINY_LATENTS, "image_size": 224}  # image_size only sizes the learned position table


def _text(args: Mapping[str, ConfigValue], hub_id: str | None = None) -> Preset:
    return Preset(architecture=Architecture.MASKED_LM, args=args, hub_id=hub_id)


def _text_classifier(args: Mapping[str, ConfigValue]) -> Preset:
    return Preset(architecture=Architecture.SEQUENCE_CLASSIFICATION, args=args)


def _vision(architecture: Architecture, args: Mapping[str, ConfigValue], hub_id: str | None = None) -> Preset:
    return Preset(architecture=architecture, args=args, preprocessing=_IMAGENET, hub_id=hub_id)


def _flow(args: Mapping[str, ConfigValue], hub_id: str | None = None) -> Preset:
    return Preset(architecture=Architecture.OPTICAL_FLOW, args=args, preprocessing=FlowProcessing(), hub_id=hub_id)


def _clip(args: Mapping[str, ConfigValue], hub_id: str | None = None) -> Preset:
    clip = AudioVideoProcessing()
    return Preset(architecture=Architecture.MULTIMODAL_AUTOENCODING, args=args, preprocessing=clip, hub_id=hub_id)


PRESETS: Mapping[str, Preset] = {
    # The published checkpoints: the values of their config.json on the hub (their parameter counts, which
    # match the hub weight files' sizes, are checked in tests/model_core/test_presets.py).
    "language-perceiver": _text(
        {
            "num_latents": 256,
            "d_latents": 1280,
            "d_model": 768,
            "num_blocks": 1,
            "num_self_attends_per_block": 26,
            "num_self_attention_heads": 8,
            "num_cross_attention_heads": 8,
            "qk_channels": 256,
            "v_channels": 1280,
            "max_position_embeddings": 2048,
            "vocab_size": 262,
        },
        hub_id="deepmind/language-perceiver",
    ),
    "vision-perceiver-learned": _vision(
        Architecture.IMAGE_LEARNED, {**_VISION, "d_model": 512, "image_size": 224}, "deepmind/vision-perceiver-learned"
    ),
    "vision-perceiver-fourier": _vision(
        Architecture.IMAGE_FOURIER, {**_VISION, "d_model": 261}, "deepmind/vision-perceiver-fourier"
    ),
    "vision-perceiver-conv": _vision(
        Architecture.IMAGE_CONV, {**_VISION, "d_model": 322}, "deepmind/vision-perceiver-conv"
    ),
    "optical-flow-perceiver": _flow(
        {
            "num_latents": 2048,
            "d_latents": 512,
            "d_model": 322,
            "num_blocks": 1,
            "num_self_attends_per_block": 24,
            "num_self_attention_heads": 16,
            "num_cross_attention_heads": 1,
            "train_size": [368, 496],
        },
        hub_id="deepmind/optical-flow-perceiver",
    ),
    "multimodal-perceiver": _clip(
        {
            "num_latents": 784,
            "d_latents": 512,
            "d_model": 704,
            "num_blocks": 1,
            "num_self_attends_per_block": 8,
            "num_self_attention_heads": 8,
            "num_cross_attention_heads": 1,
            "num_labels": 700,
            "num_frames": 16,
            "audio_samples_per_frame": 1920,
            "samples_per_patch": 16,
            "image_size": 56,
            "output_num_channels": 512,
            "output_shape": [1, 16, 224, 224],
        },
        hub_id="deepmind/multimodal-perceiver",
    ),
    # Tiny: every architecture, for tests.
    "language-perceiver-tiny": _text(_TINY_TEXT),
    "language-perceiver-classifier-tiny": _text_classifier(_TINY_TEXT),
    "vision-perceiver-learned-tiny": Preset(
        architecture=Architecture.IMAGE_LEARNED,
        args={**_TINY_LATENTS, "image_size": 16},
        preprocessing=ImageProcessingConfig(size=(16, 16), crop_size=(16, 16)),
    ),
    "vision-perceiver-fourier-tiny": _vision(Architecture.IMAGE_FOURIER, _TINY_IMAGE),
    "vision-perceiver-conv-tiny": _vision(Architecture.IMAGE_CONV, _TINY_IMAGE),
    # Tiles of 48x64 (the real model's are 368x496): big enough for the 20-px tile overlap.
    "optical-flow-perceiver-tiny": _flow({**_TINY_LATENTS, "train_size": [48, 64]}),
    # 2 frames of 16x16 and 2 x 32 audio samples (the real clip: 16 frames of 224x224, 16 x 1920 samples).
    "multimodal-perceiver-tiny": _clip(
        {
            **_TINY_LATENTS,
            "num_frames": 2,
            "image_size": 8,
            "audio_samples_per_frame": 32,
            "samples_per_patch": 4,
            "output_shape": [1, 2, 16, 16],
            "output_num_channels": 12,
            "_label_trainable_num_channels": 20,
        }
    ),
    # Small: text models with room to batch, for load runs.
    "language-perceiver-small": _text(_SMALL_TEXT),
    "language-perceiver-classifier-small": _text_classifier(_SMALL_TEXT),
    # Demo: where the --demo profile's models differ from the tiny ones.
    "language-perceiver-demo": _text(_DEMO_TEXT),
    "language-perceiver-classifier-demo": _text_classifier(_DEMO_TEXT),
    "optical-flow-perceiver-demo": _flow({**_TINY_LATENTS, "d_model": 322, "train_size": [64, 64]}),
    "multimodal-perceiver-demo": _clip(
        {
            **_TINY_LATENTS,
            "d_model": 704,
            "num_frames": 2,
            "audio_samples_per_frame": 64,
            "samples_per_patch": 16,
            "output_shape": [1, 2, 16, 16],
            "output_num_channels": 32,
            "image_size": 16,
        }
    ),
}


def preset_config(name: str, **overrides: ConfigValue) -> dict[str, ConfigValue]:
    """The config.json dict of preset `name`, with `overrides` (e.g. id2label)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise KeyError(f"no preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
    return preset.config(**overrides)
