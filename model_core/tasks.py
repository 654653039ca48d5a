"""Task assemblies: each published architecture as a composition of the generic parts.

`build_model(config)` returns an uninitialised model whose state_dict keys and shapes are
those of the corresponding Hugging Face class, so its checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model_core.config import Architecture, PerceiverConfig
from model_core.decoders import BasicDecoder, ClassificationDecoder, MultimodalDecoder, OpticalFlowDecoder
from model_core.model import Encoded, PerceiverModel
from model_core.position import FourierPositionEncoding, TrainablePositionEncoding
from model_core.postprocessors import (
    AudioPostprocessor,
    ClassificationPostprocessor,
    EmbeddingDecoder,
    MultimodalPostprocessor,
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


@dataclass
class PerceiverOutput:
    """logits: a tensor, or for the multimodal autoencoder a dict audio/image/label."""

    logits: torch.Tensor | dict[str, torch.Tensor]


class _Task(nn.Module):
    def __init__(self, *, config: PerceiverConfig, perceiver: PerceiverModel) -> None:
        super().__init__()
        self.config = config
        self.perceiver = perceiver

    @property
    def task(self) -> str:
        return self.config.task

    def encode(self, inputs: Any, attention_mask: torch.Tensor | None = None, **prep_kwargs: Any) -> Encoded:
        return self.perceiver.encode(inputs, attention_mask, **prep_kwargs)


class PerceiverForTask(_Task):
    """Every assembly but the masked LM: inputs as the Hugging Face class takes them."""

    def forward(
        self,
        inputs: torch.Tensor | dict[str, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        subsampled_output_points: dict[str, torch.Tensor | None] | torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> PerceiverOutput:
        prep = {"interpolate_pos_encoding": True} if interpolate_pos_encoding else {}
        encoded = self.encode(inputs, attention_mask, **prep)
        return PerceiverOutput(logits=self.decode(encoded, subsampled_output_points))

    def decode(self, encoded: Encoded, points: Any = None) -> Any:
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
        return self.embedding_decoder(hidden, self.perceiver.input_preprocessor.embeddings.weight)


def _encoder_kwargs(c: PerceiverConfig) -> dict[str, Any]:
    return dict(
        num_latents=c.num_latents,
        d_latents=c.d_latents,
        num_blocks=c.num_blocks,
        num_self_attends_per_block=c.num_self_attends_per_block,
        num_cross_attention_heads=c.num_cross_attention_heads,
        num_self_attention_heads=c.num_self_attention_heads,
        qk_channels=c.qk_channels,
        v_channels=c.v_channels,
        cross_attention_widening_factor=c.cross_attention_widening_factor,
        self_attention_widening_factor=c.self_attention_widening_factor,
        use_query_residual=c.use_query_residual,
        shape_for_attention=c.cross_attention_shape_for_attention,
        hidden_act=c.hidden_act,
    )


def _decoder_kwargs(c: PerceiverConfig) -> dict[str, Any]:
    return dict(d_latents=c.d_latents, shape_for_attention=c.cross_attention_shape_for_attention, hidden_act=c.hidden_act)


def _text(c: PerceiverConfig) -> TextPreprocessor:
    return TextPreprocessor(vocab_size=c.vocab_size, d_model=c.d_model, max_position_embeddings=c.max_position_embeddings)


def _classifier(c: PerceiverConfig) -> ClassificationDecoder:
    return ClassificationDecoder(
        output_num_channels=c.num_labels,
        position_encoding=TrainablePositionEncoding(index_dims=1, num_channels=c.d_latents),
        num_channels=c.d_latents,
        use_query_residual=True,
        **_decoder_kwargs(c),
    )


def _fourier(num_bands: int, max_resolution: tuple[int, ...]) -> FourierPositionEncoding:
    return FourierPositionEncoding(num_bands=num_bands, max_resolution=max_resolution)


def _image_side(c: PerceiverConfig) -> int:
    return c.image_size if isinstance(c.image_size, int) else int(c.image_size[0])


def _masked_lm(c: PerceiverConfig) -> tuple[nn.Module, nn.Module, None]:
    decoder = BasicDecoder(
        output_num_channels=c.d_latents,
        position_encoding=TrainablePositionEncoding(index_dims=c.max_position_embeddings, num_channels=c.d_model),
        output_index_dims=(c.max_position_embeddings,),
        num_channels=c.d_model,
        qk_channels=8 * 32,
        v_channels=c.d_model,
        num_heads=8,
        use_query_residual=False,
        final_project=False,
        **_decoder_kwargs(c),
    )
    return _text(c), decoder, None


def _image(c: PerceiverConfig, prep_type: PrepType) -> tuple[nn.Module, nn.Module, None]:
    if prep_type is PrepType.CONV1X1:
        side = _image_side(c)
        pre = ImagePreprocessor(
            prep_type=prep_type,
            spatial_downsample=1,
            out_channels=256,
            position_encoding=TrainablePositionEncoding(index_dims=side * side, num_channels=256),
            project_pos_dim=256,
        )
    else:
        resolution = (224, 224) if prep_type is PrepType.PIXELS else (56, 56)
        pre = ImagePreprocessor(prep_type=prep_type, spatial_downsample=1, position_encoding=_fourier(64, resolution))
    return pre, _classifier(c), None


def _optical_flow(c: PerceiverConfig) -> tuple[nn.Module, nn.Module, None]:
    train_size = tuple(c.train_size)
    pre = ImagePreprocessor(
        prep_type=PrepType.PATCHES,
        spatial_downsample=1,
        temporal_downsample=2,
        conv_after_patching=True,
        conv_after_patching_in_channels=54,
        position_encoding=_fourier(64, train_size),
    )
    decoder = OpticalFlowDecoder(
        rescale_factor=100.0,
        output_num_channels=2,
        position_encoding=None,
        output_index_dims=train_size,
        num_channels=pre.num_channels,
        use_query_residual=False,
        **_decoder_kwargs(c),
    )
    return pre, decoder, None


def _multimodal(c: PerceiverConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    n_audio = c.num_frames * c.audio_samples_per_frame
    side = _image_side(c)
    video_res = (c.num_frames, side, side)
    pre = MultimodalPreprocessor(
        modalities={
            "audio": AudioPreprocessor(samples_per_patch=c.samples_per_patch, position_encoding=_fourier(192, (n_audio,))),
            "image": ImagePreprocessor(
                prep_type=PrepType.PATCHES, spatial_downsample=4, position_encoding=_fourier(32, video_res)
            ),
            "label": OneHotPreprocessor(num_labels=c.num_labels),
        },
        mask_probs={"image": 0.0, "audio": 0.0, "label": 1.0},
        min_padding_size=4,
    )
    queries_only = dict(position_encoding_only=True, output_num_channels=c.output_num_channels, **_decoder_kwargs(c))
    decoder = MultimodalDecoder(
        modalities={
            "audio": BasicDecoder(
                output_index_dims=(n_audio // c.samples_per_patch,),
                position_encoding=_fourier(192, (n_audio,)),
                **queries_only,
            ),
            "image": BasicDecoder(
                output_index_dims=tuple(c.output_shape[1:4]), position_encoding=_fourier(32, video_res), **queries_only
            ),
            "label": ClassificationDecoder(
                position_encoding=TrainablePositionEncoding(index_dims=1, num_channels=c.label_trainable_num_channels),
                **queries_only,
            ),
        },
        output_num_channels=c.output_num_channels,
        use_query_residual=False,
        **_decoder_kwargs(c),
    )
    width = c.output_num_channels
    post = MultimodalPostprocessor(
        modalities={
            "audio": AudioPostprocessor(in_channels=width, out_channels=c.samples_per_patch),
            "image": ProjectionPostprocessor(in_channels=width, out_channels=3),
            "label": ClassificationPostprocessor(in_channels=width, out_channels=c.num_labels),
        }
    )
    return pre, decoder, post


_ASSEMBLIES = {
    Architecture.MASKED_LM: _masked_lm,
    Architecture.SEQUENCE_CLASSIFICATION: lambda c: (_text(c), _classifier(c), None),
    Architecture.IMAGE_LEARNED: lambda c: _image(c, PrepType.CONV1X1),
    Architecture.IMAGE_FOURIER: lambda c: _image(c, PrepType.PIXELS),
    Architecture.IMAGE_CONV: lambda c: _image(c, PrepType.CONV),
    Architecture.OPTICAL_FLOW: _optical_flow,
    Architecture.MULTIMODAL_AUTOENCODING: _multimodal,
}


def build_model(config: PerceiverConfig) -> PerceiverForTask | PerceiverForMaskedLM:
    """The assembly for config.architecture, parameters uninitialised (see init_weights)."""
    pre, decoder, post = _ASSEMBLIES[config.architecture](config)
    perceiver = PerceiverModel(
        input_preprocessor=pre, decoder=decoder, output_postprocessor=post, **_encoder_kwargs(config)
    )
    cls = PerceiverForMaskedLM if config.architecture is Architecture.MASKED_LM else PerceiverForTask
    return cls(config=config, perceiver=perceiver)
