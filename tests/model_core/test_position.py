"""Both position encodings answer the same two questions: a whole grid, or some of its points."""

from __future__ import annotations

import pytest
import torch

from model_core.position import (
    FourierPositionEncoding,
    PositionEncoding,
    TrainablePositionEncoding,
    subsampled_positions,
)

CPU, F32 = torch.device("cpu"), torch.float32


def _trainable() -> TrainablePositionEncoding:
    enc = TrainablePositionEncoding(index_dims=(4, 4), num_channels=5)
    torch.nn.init.normal_(enc.position_embeddings)
    return enc


@pytest.mark.parametrize("enc", [_trainable(), FourierPositionEncoding(num_bands=3, max_resolution=(4, 4))])
@torch.inference_mode()
def test_grid_and_points_have_one_interface(enc: PositionEncoding):
    grid = enc.grid((4, 4), device=CPU, dtype=F32)
    assert grid.shape == (16, enc.output_size) and enc.num_dimensions == 2
    points = torch.tensor([[0, 5], [15, 2]])  # (B, N) flat indices
    assert enc.at(points, (4, 4), dtype=F32).shape == (2, 2, enc.output_size)


@torch.inference_mode()
def test_a_learned_table_s_points_are_its_rows():
    enc = _trainable()
    torch.testing.assert_close(enc.at(torch.arange(16), (4, 4), dtype=F32), enc.grid((4, 4), device=CPU, dtype=F32))


@torch.inference_mode()
def test_fourier_points_use_the_decoder_s_subsampling_positions():
    enc = FourierPositionEncoding(num_bands=3, max_resolution=(4, 4))
    points = torch.tensor([0, 7, 9])
    torch.testing.assert_close(enc.at(points, (4, 4), dtype=F32), enc.encode(subsampled_positions(points, (4, 4)), F32))


@torch.inference_mode()
def test_a_learned_table_is_resized_only_when_asked():
    enc = _trainable()
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        enc.grid((5, 6), device=CPU, dtype=F32)
    assert enc.grid((5, 6), device=CPU, dtype=F32, interpolate=True).shape == (30, 5)
