"""The generic parts compose into assemblies no checkpoint uses."""

import torch

from model_core import PerceiverModel, init_weights
from model_core.decoders import BasicDecoder, ProjectionDecoder, VideoAutoencodingDecoder
from model_core.model import Encoder
from model_core.position import FourierPositionEncoding
from model_core.postprocessors import ProjectionPostprocessor
from model_core.preprocessors import AudioPreprocessor, ImagePreprocessor, PrepType
from model_core.preprocessors.base import Preprocessor


def _encoder(pre: Preprocessor) -> Encoder:
    return Encoder(
        kv_dim=pre.num_channels,
        d_latents=16,
        num_blocks=1,
        num_self_attends_per_block=1,
        cross_attention={"num_heads": 1},
        self_attention={"num_heads": 2, "widening_factor": 2},
    )


@torch.inference_mode()
def test_audio_classifier_with_projection_decoder():
    pre = AudioPreprocessor(
        samples_per_patch=8, position_encoding=FourierPositionEncoding(num_bands=4, max_resolution=(64,))
    )
    decoder = ProjectionDecoder(d_latents=16, num_labels=3)
    model = PerceiverModel(input_preprocessor=pre, num_latents=4, encoder=_encoder(pre), decoder=decoder)
    init_weights(model)
    model.eval()
    logits = model(torch.randn(2, 64, 1))
    assert logits.shape == (2, 3)


@torch.inference_mode()
def test_video_decoder_full_grid_and_subset_agree():
    pre = ImagePreprocessor(
        prep_type=PrepType.PATCHES,
        spatial_downsample=2,
        position_encoding=FourierPositionEncoding(num_bands=3, max_resolution=(2, 4, 4)),
    )
    decoder = VideoAutoencodingDecoder(
        decoder=BasicDecoder(
            d_latents=16,
            output_num_channels=6,
            position_encoding=FourierPositionEncoding(num_bands=3, max_resolution=(2, 8, 8)),
            output_index_dims=(2, 8, 8),
            num_channels=21,
        )
    )
    post = ProjectionPostprocessor(in_channels=6, out_channels=3)
    model = PerceiverModel(
        input_preprocessor=pre, num_latents=4, encoder=_encoder(pre), decoder=decoder, output_postprocessor=post
    )
    init_weights(model, seed=2)
    model.eval()
    video = torch.randn(1, 2, 3, 8, 8)
    full = model(video)  # (1, 2, 8, 8, 3)
    assert full.shape == (1, 2, 8, 8, 3)
    points = torch.tensor([0, 17, 127])
    part = model(video, points=points)  # (1, 3, 3)
    # Explicit points use the decoder's subsampling positions (-1 + 2 i / n, not the full
    # grid's linspace), so compare a subset with all points asked for explicitly.
    every = model(video, points=torch.arange(2 * 8 * 8))  # all 128 points: (1, 2, 8, 8, 3)
    torch.testing.assert_close(part, every.reshape(1, -1, 3)[:, points], atol=1e-5, rtol=1e-4)
    assert isinstance(decoder.decoder, BasicDecoder) and part.shape == (1, 3, 3)
