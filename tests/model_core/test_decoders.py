"""Every decoder keeps the decoder contract: queries, output shape, attention to the latents."""

from __future__ import annotations

import pytest
import torch

from model_core import PRESETS, from_config
from model_core.decoders import (
    BasicDecoder,
    ClassificationDecoder,
    Decoder,
    MultimodalDecoder,
    Points,
    ProjectionDecoder,
    QueryDecoder,
    VideoAutoencodingDecoder,
)
from model_core.position import FourierPositionEncoding
from model_core.presets import preset_config
from tests.model_core.hf_oracle import make_inputs

TINY = sorted(name for name in PRESETS if name.endswith("-tiny"))


def _subset(decoder: Decoder) -> Points:
    """Some output points of `decoder`'s kind (a classifier's one output is all of them)."""
    if isinstance(decoder, MultimodalDecoder):
        return {"image": torch.tensor([3, 1, 4]), "audio": torch.tensor([0, 5]), "label": None}
    return None if isinstance(decoder, ClassificationDecoder) else torch.tensor([1, 0])


@pytest.mark.parametrize("name", TINY)
@torch.inference_mode()
def test_every_assembly_s_decoder_keeps_the_contract(name):
    model = from_config(preset_config(name))
    decoder = model.perceiver.decoder
    assert isinstance(decoder, Decoder)
    if isinstance(decoder, MultimodalDecoder):
        assert all(isinstance(m, QueryDecoder) for m in decoder.modalities.values())
    arch = PRESETS[name].architecture.value
    inputs = make_inputs(arch, model, batch=2)
    encoded = model.perceiver.encode(inputs["inputs"], inputs.get("attention_mask"))
    for points in (_subset(decoder), None):
        q = decoder.queries(encoded.pre, points, batch_size=2, device=torch.device("cpu"), dtype=torch.float32)
        out = decoder(q, encoded.latents)  # (B, N, C)
        shape = decoder.output_shape(encoded.pre, points)
        assert out.shape[0] == 2 and out[0].numel() == out.shape[-1] * torch.Size(shape.index_dims).numel()
        if shape.sizes is not None:
            assert sum(shape.sizes.values()) == q.shape[1]


def test_the_composition_decoders_keep_it_too():
    fourier = FourierPositionEncoding(num_bands=2, max_resolution=(2, 4, 4))
    video = VideoAutoencodingDecoder(
        decoder=BasicDecoder(d_latents=8, output_num_channels=3, position_encoding=fourier, output_index_dims=(2, 4, 4))
    )
    assert isinstance(video, QueryDecoder) and isinstance(ProjectionDecoder(d_latents=8, num_labels=2), Decoder)


def test_points_of_the_wrong_kind_are_refused():
    text = from_config(preset_config("language-perceiver-tiny")).perceiver
    clip = from_config(preset_config("multimodal-perceiver-tiny")).perceiver
    encoded = text.encode(torch.randint(6, 262, (1, 5)))
    with pytest.raises(TypeError, match="flat output indices"):
        text.decode(encoded, {"image": None})
    with pytest.raises(TypeError, match="per modality"):
        clip.decode(encoded, torch.tensor([0]))
