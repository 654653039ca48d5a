"""Assemblies: each published architecture as a composition of the generic parts.

`build_model(config)` returns an uninitialised model whose state_dict keys and shapes are
those of the corresponding Hugging Face class, so its checkpoints load unchanged. Sizes
come from the config; the choices config.json does not carry (transformers hard-codes
them in its task classes) are the named data below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from model_core.attention import AttentionOptions
from model_core.config import Architecture, PerceiverConfig, TaskName
from model_core.decoders import BasicDecoder, ClassificationDecoder, Decoder, MultimodalDecoder, OpticalFlowDecoder
from model_core.decoders.base import Points
from model_core.model import Encoded, Encoder, PerceiverModel
from model_core.position import FourierPositionEncoding, PositionEncoding, TrainablePositionEncoding
from model_core.postprocessors import (
    AudioPostprocessor,
    ClassificationPostprocessor,
    EmbeddingDecoder,
    MultimodalPostprocessor,
    Postprocessed,
    Postprocessor,
    ProjectionPostprocessor,
)
from model_core.preprocessors import (
    AudioPreprocessor,
    ImagePreprocessor,
    MultimodalPreprocessor,
    OneHotPreprocessor,
    PrepType,
    TextPreprocessor,
)
from model_core.preprocessors.base import Inputs, Preprocessor


@dataclass(frozen=True, kw_only=True)
class Fourier:
    """Fourier position features, [pos, sin, cos] with `num_bands` per dimension."""

    num_bands: int
    concat_pos: bool = True
    sine_only: bool = False

    def build(self, grid: Sequence[int]) -> PositionEncoding:
        """Over a grid whose highest resolution is `grid`."""
        return FourierPositionEncoding(
            num_bands=self.num_bands, max_resolution=grid, concat_pos=self.concat_pos, sine_only=self.sine_only
        )


@dataclass(frozen=True, kw_only=True)
class Learned:
    """A learned table of `num_channels` per position."""

    num_channels: int

    def build(self, grid: Sequence[int]) -> PositionEncoding:
        """One entry per position of `grid`."""
        return TrainablePositionEncoding(index_dims=grid, num_channels=self.num_channels)


@dataclass(frozen=True, kw_only=True)
class MaskedLMChoices:
    decoder_heads: int = 8
    decoder_qk_channels: int = 256  # 8 heads x 32; v is d_model


@dataclass(frozen=True, kw_only=True)
class ImageClassifierChoices:
    prep_type: PrepType
    position: Fourier | Learned
    grid: tuple[int, int] | None = None  # the positions' grid; None: image_size x image_size
    spatial_downsample: int = 1
    out_channels: int = 64  # width of the conv / conv1x1 stem
    project_pos_dim: int = -1  # positions projected to this width first, when > 0


@dataclass(frozen=True, kw_only=True)
class OpticalFlowChoices:
    spatial_downsample: int = 1
    temporal_downsample: int = 2  # the frame pair becomes one token per pixel
    patch_channels: int = 54  # 2 frames x 3x3 neighbourhood x RGB, projected to 64 channels
    position: Fourier = Fourier(num_bands=64)  # over train_size
    flow_channels: int = 2  # (u, v)
    rescale_factor: float = 100.0  # the decoder outputs flow / rescale_factor


@dataclass(frozen=True, kw_only=True)
class MultimodalChoices:
    audio_position: Fourier = Fourier(num_bands=192)  # over the clip's samples
    image_position: Fourier = Fourier(num_bands=32)  # over (num_frames, image_size, image_size)
    image_downsample: int = 4  # space-to-depth block of the frames
    input_padding: int = 4  # min_padding_size of the preprocessor
    query_padding: int = 2  # min_padding_size of the decoder
    mask_probs: Mapping[str, float] = field(default_factory=lambda: {"audio": 0.0, "image": 0.0, "label": 1.0})
    image_channels: int = 3  # RGB reconstructed


MASKED_LM = MaskedLMChoices()
# transformers' classification decoders keep the query residual (DeepMind's learned-position
# ImageNet config dropped it).
CLASSIFIER_QUERY_RESIDUAL = True
IMAGE_CLASSIFIERS: dict[Architecture, ImageClassifierChoices] = {
    Architecture.IMAGE_LEARNED: ImageClassifierChoices(
        prep_type=PrepType.CONV1X1, position=Learned(num_channels=256), out_channels=256, project_pos_dim=256
    ),
    Architecture.IMAGE_FOURIER: ImageClassifierChoices(
        prep_type=PrepType.PIXELS, position=Fourier(num_bands=64), grid=(224, 224)
    ),
    Architecture.IMAGE_CONV: ImageClassifierChoices(
        prep_type=PrepType.CONV, position=Fourier(num_bands=64), grid=(56, 56)
    ),
}
OPTICAL_FLOW = OpticalFlowChoices()
MULTIMODAL = MultimodalChoices()


@dataclass
class PerceiverOutput:
    """logits: a tensor, or for the multimodal autoencoder a dict audio/image/label."""

    logits: Postprocessed


class _Task(nn.Module):
    def __init__(self, *, config: PerceiverConfig, perceiver: PerceiverModel) -> None:
        super().__init__()
        self.config = config
        self.perceiver = perceiver

    @property
    def task(self) -> TaskName:
        return self.config.task

    def encode(
        self, inputs: Inputs, attention_mask: torch.Tensor | None = None, *, interpolate_pos_encoding: bool = False
    ) -> Encoded:
        return self.perceiver.encode(inputs, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding)


class PerceiverForTask(_Task):
    """Every assembly but the masked LM: inputs as the Hugging Face class takes them."""

    def forward(
        self,
        inputs: Inputs,
        attention_mask: torch.Tensor | None = None,
        subsampled_output_points: Points = None,
        interpolate_pos_encoding: bool = False,
    ) -> PerceiverOutput:
        encoded = self.encode(inputs, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding)
        return PerceiverOutput(logits=self.decode(encoded, subsampled_output_points))

    def decode(self, encoded: Encoded, points: Points = None) -> Postprocessed:
        return self.perceiver.decode(encoded, points)


class PerceiverForMaskedLM(_Task):
    def __init__(self, *, config: PerceiverConfig, perceiver: PerceiverModel) -> None:
        super().__init__(config=config, perceiver=perceiver)
        self.embedding_decoder = EmbeddingDecoder(vocab_size=config.vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_positions: torch.Tensor | None = None,
    ) -> PerceiverOutput:
        """input_ids: (B, L). output_positions: (B, P) or (P,) positions to decode; by default
        all max_position_embeddings positions, as transformers does. -> logits (B, P, vocab)."""
        return PerceiverOutput(logits=self.decode(self.encode(input_ids, attention_mask), output_positions))

    def decode(self, encoded: Encoded, output_positions: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.perceiver.decode(encoded, output_positions)  # (B, P, d_model)
        text = self.perceiver.input_preprocessor
        assert isinstance(hidden, torch.Tensor) and isinstance(text, TextPreprocessor)  # as build_model makes them
        return self.embedding_decoder(hidden, text.embeddings.weight)


TaskModel = PerceiverForTask | PerceiverForMaskedLM
Parts = tuple[Preprocessor, Decoder, Postprocessor | None]


def _encoder(c: PerceiverConfig, *, kv_dim: int) -> Encoder:
    shared: AttentionOptions = {"qk_channels": c.qk_channels, "v_channels": c.v_channels, "hidden_act": c.hidden_act}
    return Encoder(
        kv_dim=kv_dim,
        d_latents=c.d_latents,
        num_blocks=c.num_blocks,
        num_self_attends_per_block=c.num_self_attends_per_block,
        cross_attention={
            **shared,
            "num_heads": c.num_cross_attention_heads,
            "widening_factor": c.cross_attention_widening_factor,
            "use_query_residual": c.use_query_residual,
            "shape_for_attention": c.cross_attention_shape_for_attention,
        },
        self_attention={
            **shared,
            "num_heads": c.num_self_attention_heads,
            "widening_factor": c.self_attention_widening_factor,
        },
    )


def _decoder_attention(
    c: PerceiverConfig,
    *,
    use_query_residual: bool = False,
    num_heads: int = 1,
    qk_channels: int | None = None,
    v_channels: int | None = None,
) -> AttentionOptions:
    return {
        "qk_channels": qk_channels,
        "v_channels": v_channels,
        "num_heads": num_heads,
        "use_query_residual": use_query_residual,
        "shape_for_attention": c.cross_attention_shape_for_attention,
        "hidden_act": c.hidden_act,
    }


def _image_side(c: PerceiverConfig) -> int:
    return c.image_size if isinstance(c.image_size, int) else int(c.image_size[0])


def _text(c: PerceiverConfig) -> TextPreprocessor:
    return TextPreprocessor(
        vocab_size=c.vocab_size, d_model=c.d_model, max_position_embeddings=c.max_position_embeddings
    )


def _classifier(c: PerceiverConfig) -> ClassificationDecoder:
    decoder = BasicDecoder(
        d_latents=c.d_latents,
        output_num_channels=c.num_labels,
        position_encoding=Learned(num_channels=c.d_latents).build((1,)),
        output_index_dims=(1,),
        num_channels=c.d_latents,
        attention=_decoder_attention(c, use_query_residual=CLASSIFIER_QUERY_RESIDUAL),
    )
    return ClassificationDecoder(decoder=decoder)


def _masked_lm(c: PerceiverConfig) -> Parts:
    positions = (c.max_position_embeddings,)
    decoder = BasicDecoder(
        d_latents=c.d_latents,
        output_num_channels=c.d_latents,
        position_encoding=Learned(num_channels=c.d_model).build(positions),
        output_index_dims=positions,
        num_channels=c.d_model,
        final_project=False,
        attention=_decoder_attention(
            c,
            num_heads=MASKED_LM.decoder_heads,
            qk_channels=MASKED_LM.decoder_qk_channels,
            v_channels=c.d_model,
        ),
    )
    return _text(c), decoder, None


def _image(c: PerceiverConfig) -> Parts:
    choices = IMAGE_CLASSIFIERS[c.architecture]
    side = _image_side(c)
    pre = ImagePreprocessor(
        prep_type=choices.prep_type,
        spatial_downsample=choices.spatial_downsample,
        out_channels=choices.out_channels,
        position_encoding=choices.position.build(choices.grid or (side, side)),
        project_pos_dim=choices.project_pos_dim,
    )
    return pre, _classifier(c), None


def _optical_flow(c: PerceiverConfig) -> Parts:
    flow = OPTICAL_FLOW
    pre = ImagePreprocessor(
        prep_type=PrepType.PATCHES,
        spatial_downsample=flow.spatial_downsample,
        temporal_downsample=flow.temporal_downsample,
        conv_after_patching_in_channels=flow.patch_channels,
        position_encoding=flow.position.build(c.train_size),
    )
    decoder = BasicDecoder(
        d_latents=c.d_latents,
        output_num_channels=flow.flow_channels,
        num_channels=pre.num_channels,
        attention=_decoder_attention(c),
    )
    return pre, OpticalFlowDecoder(decoder=decoder, rescale_factor=flow.rescale_factor), None


def _multimodal(c: PerceiverConfig) -> Parts:
    mm = MULTIMODAL
    n_audio = c.num_frames * c.audio_samples_per_frame
    side = _image_side(c)
    video = (c.num_frames, side, side)
    pre = MultimodalPreprocessor(
        modalities={
            "audio": AudioPreprocessor(
                samples_per_patch=c.samples_per_patch, position_encoding=mm.audio_position.build((n_audio,))
            ),
            "image": ImagePreprocessor(
                prep_type=PrepType.PATCHES,
                spatial_downsample=mm.image_downsample,
                position_encoding=mm.image_position.build(video),
            ),
            "label": OneHotPreprocessor(num_labels=c.num_labels),
        },
        mask_probs=mm.mask_probs,
        min_padding_size=mm.input_padding,
    )

    def queries_only(position_encoding: PositionEncoding, output_index_dims: Sequence[int]) -> BasicDecoder:
        return BasicDecoder(
            d_latents=c.d_latents,
            output_num_channels=c.output_num_channels,
            position_encoding=position_encoding,
            output_index_dims=output_index_dims,
            position_encoding_only=True,
        )

    label = queries_only(Learned(num_channels=c.label_trainable_num_channels).build((1,)), (1,))
    decoder = MultimodalDecoder(
        modalities={
            "audio": queries_only(mm.audio_position.build((n_audio,)), (n_audio // c.samples_per_patch,)),
            "image": queries_only(mm.image_position.build(video), tuple(c.output_shape[1:4])),
            "label": ClassificationDecoder(decoder=label),
        },
        d_latents=c.d_latents,
        output_num_channels=c.output_num_channels,
        min_padding_size=mm.query_padding,
        attention=_decoder_attention(c),
    )
    width = c.output_num_channels
    post = MultimodalPostprocessor(
        modalities={
            "audio": AudioPostprocessor(in_channels=width, out_channels=c.samples_per_patch),
            "image": ProjectionPostprocessor(in_channels=width, out_channels=mm.image_channels),
            "label": ClassificationPostprocessor(in_channels=width, out_channels=c.num_labels),
        }
    )
    return pre, decoder, post


_ASSEMBLIES: dict[Architecture, Callable[[PerceiverConfig], Parts]] = {
    Architecture.MASKED_LM: _masked_lm,
    Architecture.SEQUENCE_CLASSIFICATION: lambda c: (_text(c), _classifier(c), None),
    Architecture.IMAGE_LEARNED: _image,
    Architecture.IMAGE_FOURIER: _image,
    Architecture.IMAGE_CONV: _image,
    Architecture.OPTICAL_FLOW: _optical_flow,
    Architecture.MULTIMODAL_AUTOENCODING: _multimodal,
}


def build_model(config: PerceiverConfig) -> TaskModel:
    """The assembly for config.architecture, parameters uninitialised (see init_weights)."""
    pre, decoder, post = _ASSEMBLIES[config.architecture](config)
    perceiver = PerceiverModel(
        input_preprocessor=pre,
        num_latents=config.num_latents,
        encoder=_encoder(config, kv_dim=pre.num_channels),
        decoder=decoder,
        output_postprocessor=post,
    )
    cls = PerceiverForMaskedLM if config.architecture is Architecture.MASKED_LM else PerceiverForTask
    return cls(config=config, perceiver=perceiver)
