"""Chunked multimodal decoding: how many chunks a pass takes, and that a pass's memory is set
by its chunks, not by the clip."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model_core import build_model, from_config
from model_core.chunking import (
    DecoderWidths,
    chunks_per_pass,
    decode_chunks,
    default_num_chunks,
    merge,
    output_chunks,
    reconstruct,
)
from model_core.config import PerceiverConfig
from model_core.presets import preset_config
from tests.model_core.hf_oracle import BASE, CONFIGS

MM = "PerceiverForMultimodalAutoencoding"
REAL = preset_config("multimodal-perceiver")


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storage allocated by the ops run inside it (inputs, parameters and
    views of them are not counted; a storage counts while any tensor made here uses it)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._users: dict[int, list[int]] = {}  # data_ptr -> [bytes, tensors alive]
        self._external: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self._users:
                self._external.add(t.untyped_storage().data_ptr())
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._external:
            return
        if ptr in self._users:
            self._users[ptr][1] += 1
        else:
            self._users[ptr] = [storage.nbytes(), 1]
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._users[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            del self._users[ptr]
            self.live -= entry[0]


def _video_model(frames: int, side: int = 32):
    config = {
        "architectures": [MM],
        **BASE,
        **CONFIGS[MM],
        "num_frames": frames,
        "output_shape": [1, frames, side, side],
    }
    return from_config(config, seed=3)


def _encode(model, frames: int):
    inputs = dict(
        image=torch.rand(1, frames, 3, 16, 16),
        audio=torch.rand(1, frames * 32, 1) * 2 - 1,
        label=torch.zeros(1, model.config.num_labels),
    )
    return model.encode(inputs)


def _decode_peak(model, encoded, chunks, per_pass: int) -> int:
    """Peak activation bytes of decoding every chunk, each pass's outputs dropped as it comes."""
    meter = LiveBytes()
    with meter:
        for _, out in decode_chunks(model, encoded, chunks, chunks_per_pass=per_pass):
            del out
    return meter.peak


def test_default_chunking_is_the_colab_s_for_the_real_clip():
    assert default_num_chunks(image_points=16 * 224 * 224, audio_points=1920) == 128
    assert default_num_chunks(image_points=2 * 16 * 16, audio_points=16) == 16
    assert default_num_chunks(image_points=512, audio_points=16, max_chunks=12) == 8  # largest divisor <= 12
    assert default_num_chunks(image_points=7, audio_points=5) == 1


def test_widths_are_read_from_the_real_decoder():
    widths = DecoderWidths.of(build_model(PerceiverConfig.from_dict(REAL)))
    # queries: audio 385 / image 195 / label 1024 channels, padded to 1024 + 2; one head over 784 latents
    assert widths == DecoderWidths(
        num_latents=784,
        latent_channels=512,
        query_channels=1026,
        qk_channels=512,
        v_channels=512,
        num_heads=1,
        mlp_channels=1026,
        output_channels=512,
    )


@pytest.mark.parametrize("budget_mib, element_size", [(64, 4), (512, 4), (512, 2), (4096, 4)])
def test_chunks_per_pass_is_the_most_that_fits_the_budget(budget_mib, element_size):
    widths = DecoderWidths.of(build_model(PerceiverConfig.from_dict(REAL)))
    chunk, budget = 6272 + 15, budget_mib * 2**20
    n = chunks_per_pass(widths, chunk_queries=chunk, num_chunks=128, budget_bytes=budget, element_size=element_size)
    assert 1 <= n <= 128
    assert n == 1 or widths.pass_bytes(n * chunk + 1, element_size=element_size) <= budget
    assert n == 128 or widths.pass_bytes((n + 1) * chunk + 1, element_size=element_size) > budget


def test_a_budget_below_one_chunk_still_decodes_one_chunk_per_pass():
    widths = DecoderWidths.of(build_model(PerceiverConfig.from_dict(REAL)))
    assert chunks_per_pass(widths, chunk_queries=6287, num_chunks=128, budget_bytes=1) == 1
    assert chunks_per_pass(widths, chunk_queries=6287, num_chunks=128, budget_bytes=2**50) == 128


@torch.inference_mode()
def test_peak_memory_is_set_by_the_chunk_size_not_the_clip():
    """The same chunk size over a 2-frame and a 4-frame clip: the same peak, within the
    estimate; decoding a whole clip in one pass needs several times more."""
    peaks = {}
    for frames in (2, 4):
        model = _video_model(frames)
        image_points, audio_points = frames * 32 * 32, frames * 32 // 4
        chunks = output_chunks(num_chunks=audio_points // 2, image_points=image_points, audio_points=audio_points)
        assert (len(chunks[0]["image"]), len(chunks[0]["audio"])) == (256, 2)
        encoded = _encode(model, frames)
        peaks[frames] = _decode_peak(model, encoded, chunks, per_pass=1)
        widths = DecoderWidths.of(model)
        estimate = widths.pass_bytes(256 + 2 + 1)
        assert 0.5 * estimate <= peaks[frames] <= estimate
        whole = LiveBytes()
        with whole:
            del model.decode(encoded, merge(chunks))["image"]
        assert whole.peak > 3 * peaks[frames]
    assert peaks[4] == peaks[2]


@torch.inference_mode()
def test_passes_sized_by_a_budget_stay_within_it_and_give_the_same_outputs():
    model = _video_model(4)
    chunks = output_chunks(num_chunks=16, image_points=4 * 32 * 32, audio_points=32)
    encoded = _encode(model, 4)
    widths = DecoderWidths.of(model)
    budget = widths.pass_bytes(5 * (256 + 2) + 1)  # room for five chunks, not six
    per_pass = chunks_per_pass(widths, chunk_queries=256 + 2, num_chunks=16, budget_bytes=budget)
    assert per_pass == 5
    assert _decode_peak(model, encoded, chunks, per_pass) <= budget
    chunked = reconstruct(model, encoded, chunks, chunks_per_pass=per_pass)
    single = model.decode(encoded, merge(chunks))
    for key in ("image", "audio", "label"):
        torch.testing.assert_close(chunked[key], single[key], atol=1e-5, rtol=1e-4)
