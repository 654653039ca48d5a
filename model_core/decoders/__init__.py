"""Decoders: build output queries, cross-attend them to the latents (see `Decoder`)."""

from model_core.decoders.base import Decoder, OutputShape, Points, QueryDecoder
from model_core.decoders.basic import (
    BasicDecoder,
    ClassificationDecoder,
    OpticalFlowDecoder,
    ProjectionDecoder,
    VideoAutoencodingDecoder,
)
from model_core.decoders.multimodal import MultimodalDecoder

__all__ = [
    "BasicDecoder",
    "ClassificationDecoder",
    "Decoder",
    "MultimodalDecoder",
    "OpticalFlowDecoder",
    "OutputShape",
    "Points",
    "ProjectionDecoder",
    "QueryDecoder",
    "VideoAutoencodingDecoder",
]
