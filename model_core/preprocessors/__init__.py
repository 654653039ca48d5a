"""Input preprocessors: raw task tensors -> (B, M, C) encoder inputs."""

from model_core.preprocessors.audio import AudioPreprocessor
from model_core.preprocessors.base import Inputs, Preprocessed, Preprocessor
from model_core.preprocessors.image import Conv2DDownsample, ImagePreprocessor, PrepType, space_to_depth
from model_core.preprocessors.multimodal import MultimodalPreprocessor, OneHotPreprocessor
from model_core.preprocessors.text import TextPreprocessor

__all__ = [
    "AudioPreprocessor",
    "Conv2DDownsample",
    "ImagePreprocessor",
    "Inputs",
    "MultimodalPreprocessor",
    "OneHotPreprocessor",
    "PrepType",
    "Preprocessed",
    "Preprocessor",
    "TextPreprocessor",
    "space_to_depth",
]
