"""Input preprocessors: raw task tensors -> (B, M, C) encoder inputs."""

from model_core.preprocessors.audio import AudioPreprocessor
from model_core.preprocessors.base import Preprocessed
from model_core.preprocessors.image import Conv2DDownsample, ImagePreprocessor, PrepType, space_to_depth
from model_core.preprocessors.multimodal import MultimodalPreprocessor, OneHotPreprocessor
from model_core.preprocessors.text import TextPreprocessor

__all__ = [
    "AudioPreprocessor",
    "Conv2DDownsample",
    "ImagePreprocessor",
    "MultimodalPreprocessor",
    "OneHotPreprocessor",
    "PrepType",
    "Preprocessed",
    "TextPreprocessor",
    "space_to_depth",
]
