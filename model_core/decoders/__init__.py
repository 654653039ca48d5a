"""Decoders: build output queries, cross-attend them to the latents."""

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
    "MultimodalDecoder",
    "OpticalFlowDecoder",
    "ProjectionDecoder",
    "VideoAutoencodingDecoder",
]
