"""Output-point chunking for the multimodal autoencoder: encode a clip once, then decode
its outputs (every video pixel, every audio patch, the label) chunk by chunk from the
cached latents, several chunks per forward pass."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from model_core.model import Encoded

Points = dict[str, torch.Tensor | None]


def output_chunks(*, num_chunks: int, image_points: int, audio_points: int) -> list[Points]:
    """Chunk k covers image points [k n_img/c, (k+1) n_img/c) and the same share of audio
    patches, as the DeepMind colab and transformers' docs do (128 chunks for 16 frames)."""
    if image_points % num_chunks or audio_points % num_chunks:
        raise ValueError(
            f"{num_chunks} chunks do not divide {image_points} image and {audio_points} audio points evenly"
        )
    img, aud = image_points // num_chunks, audio_points // num_chunks
    return [
        {"image": torch.arange(k * img, (k + 1) * img), "audio": torch.arange(k * aud, (k + 1) * aud), "label": None}
        for k in range(num_chunks)
    ]


def label_only() -> Points:
    """Points that decode the label query alone (no video or audio reconstruction)."""
    empty = torch.zeros(0, dtype=torch.long)
    return {"image": empty, "audio": empty.clone(), "label": None}


def merge(chunks: Sequence[Points]) -> Points:
    """Several chunks as one set of points, decoded in a single pass (queries are independent)."""
    return {
        "image": torch.cat([c["image"] for c in chunks]),
        "audio": torch.cat([c["audio"] for c in chunks]),
        "label": None,
    }


def decode_chunks(
    model: torch.nn.Module,
    encoded: Encoded,
    chunks: Sequence[Points],
    *,
    chunks_per_pass: int = 1,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield (chunks done, outputs of this pass) for `chunks_per_pass` chunks at a time.

    Outputs per pass: image (B, n, 3), audio (B, samples), label (B, num_labels) logits.
    """
    if chunks_per_pass < 1:
        raise ValueError("chunks_per_pass must be >= 1")
    for start in range(0, len(chunks), chunks_per_pass):
        group = chunks[start : start + chunks_per_pass]
        yield start + len(group), model.decode(encoded, merge(group))


def reconstruct(
    model: torch.nn.Module, encoded: Encoded, chunks: Sequence[Points], *, chunks_per_pass: int = 1
) -> dict[str, torch.Tensor]:
    """Every chunk decoded and concatenated: image (B, N, 3), audio (B, S), label (B, C)."""
    images, audio, label = [], [], None
    for _, out in decode_chunks(model, encoded, chunks, chunks_per_pass=chunks_per_pass):
        images.append(out["image"])
        audio.append(out["audio"])
        label = out["label"] if label is None else label
    return {"image": torch.cat(images, dim=1), "audio": torch.cat(audio, dim=1), "label": label}
