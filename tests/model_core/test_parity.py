"""model_core against transformers on identical random weights and inputs (float32)."""

from __future__ import annotations

import pytest
import torch

from model_core import load_pretrained
from tests.model_core.hf_oracle import CONFIGS, compare, hf_model, make_inputs, mm_points, run, save

ARCHS = sorted(CONFIGS)

VARIANTS = {
    "PerceiverForMaskedLM": [
        {},
        dict(cross_attention_shape_for_attention="q", qk_channels=None, v_channels=None, num_blocks=2),
    ],
    "PerceiverForSequenceClassification": [
        dict(cross_attention_widening_factor=2, self_attention_widening_factor=3, use_query_residual=False),
        dict(qk_channels=16, v_channels=32, num_cross_attention_heads=4, num_self_attention_heads=4),
    ],
    "PerceiverForImageClassificationFourier": [dict(num_blocks=3, use_query_residual=False)],
    "PerceiverForImageClassificationConvProcessing": [dict(num_self_attends_per_block=1, num_cross_attention_heads=2)],
    "PerceiverForOpticalFlow": [dict(cross_attention_widening_factor=2, num_blocks=2)],
    "PerceiverForMultimodalAutoencoding": [dict(num_self_attention_heads=4, self_attention_widening_factor=2)],
}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("arch", ARCHS)
def test_matches_transformers(arch, fmt, tmp_path):
    hf = hf_model(arch)
    model = load_pretrained(save(hf, tmp_path, safetensors=fmt == "safetensors"))
    assert (tmp_path / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")).exists()
    kwargs = make_inputs(arch, hf)
    if arch == "PerceiverForMultimodalAutoencoding":
        kwargs["subsampled_output_points"] = mm_points()
    compare(run(hf, arch, kwargs), run(model, arch, kwargs))


@pytest.mark.parametrize(
    "arch,overrides", [(arch, v) for arch, vs in VARIANTS.items() for v in vs], ids=lambda x: str(x)[:40]
)
def test_matches_transformers_across_configs(arch, overrides, tmp_path):
    hf = hf_model(arch, seed=3, **overrides)
    model = load_pretrained(save(hf, tmp_path))
    kwargs = make_inputs(arch, hf, batch=3, seed=1)
    if arch == "PerceiverForMultimodalAutoencoding":
        kwargs["subsampled_output_points"] = mm_points()
    compare(run(hf, arch, kwargs), run(model, arch, kwargs))


def test_learned_interpolated_positions_match(tmp_path):
    arch = "PerceiverForImageClassificationLearned"
    hf = hf_model(arch)
    model = load_pretrained(save(hf, tmp_path))
    images = torch.randn(2, 3, 24, 20)
    with torch.inference_mode():
        expected = hf(inputs=images, interpolate_pos_encoding=True).logits
        got = model(images, interpolate_pos_encoding=True).logits
    compare(expected, got)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(images)


def test_multimodal_every_chunk_matches(tmp_path):
    """All output chunks of a clip, chunk by chunk, as the transformers docs drive it."""
    arch = "PerceiverForMultimodalAutoencoding"
    hf = hf_model(arch)
    model = load_pretrained(save(hf, tmp_path))
    kwargs = make_inputs(arch, hf, batch=1)
    n_image = 2 * 16 * 16
    n_audio = hf.config.num_frames * hf.config.audio_samples_per_frame // hf.config.samples_per_patch
    chunks = 4
    for k in range(chunks):
        points = {
            "image": torch.arange(k * n_image // chunks, (k + 1) * n_image // chunks),
            "audio": torch.arange(k * n_audio // chunks, (k + 1) * n_audio // chunks),
            "label": None,
        }
        compare(
            run(hf, arch, {**kwargs, "subsampled_output_points": points}),
            run(model, arch, {**kwargs, "subsampled_output_points": points}),
        )
