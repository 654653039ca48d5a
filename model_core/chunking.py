"""Output-point chunking for the multimodal autoencoder: encode a clip once, then decode
its outputs (every video pixel, every audio patch, the label) chunk by chunk from the
cached latents, several chunks per forward pass, as many as a byte budget of decoder
activations allows (`chunks_per_pass`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from model_core.assemblies import PerceiverForTask
from model_core.decoders import MultimodalDecoder
from model_core.model import Encoded

Points = dict[str, torch.Tensor | None]


def indices(points: Points, name: str) -> torch.Tensor:
    value = points[name]
    if value is None:
        raise ValueError(f"a chunk names its {name} points")
    return value


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
        "image": torch.cat([indices(c, "image") for c in chunks]),
        "audio": torch.cat([indices(c, "audio") for c in chunks]),
        "label": None,
    }


def _decode(model: PerceiverForTask, encoded: Encoded, points: Points) -> dict[str, torch.Tensor]:
    out = model.decode(encoded, points)
    if not isinstance(out, dict):
        raise TypeError("chunked decoding needs a multimodal model (outputs per modality)")
    return out


def passes(chunks: Sequence[Points], chunks_per_pass: int) -> Iterator[tuple[int, Points]]:
    """Consecutive chunks merged `chunks_per_pass` at a time (so each pass covers contiguous output ranges),
    with the chunks done once each pass is: the one plan of a chunked decode, here and in the server. Lazy:
    only the pass being decoded holds its merged indices."""
    if chunks_per_pass < 1:
        raise ValueError("chunks_per_pass must be >= 1")
    for start in range(0, len(chunks), chunks_per_pass):
        yield min(start + chunks_per_pass, len(chunks)), merge(chunks[start : start + chunks_per_pass])


def decode_chunks(
    model: PerceiverForTask,
    encoded: Encoded,
    chunks: Sequence[Points],
    *,
    chunks_per_pass: int = 1,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield (chunks done, outputs of this pass) for `chunks_per_pass` chunks at a time.

    Outputs per pass: image (B, n, 3), audio (B, samples), label (B, num_labels) logits.
    """
    for done, points in passes(chunks, chunks_per_pass):
        yield done, _decode(model, encoded, points)


def reconstruct(
    model: PerceiverForTask, encoded: Encoded, chunks: Sequence[Points], *, chunks_per_pass: int = 1
) -> dict[str, torch.Tensor]:
    """Every chunk decoded and concatenated: image (B, N, 3), audio (B, S), label (B, C)."""
    images, audio, labels = [], [], []
    for _, out in decode_chunks(model, encoded, chunks, chunks_per_pass=chunks_per_pass):
        images.append(out["image"])
        audio.append(out["audio"])
        labels.append(out["label"])
    return {"image": torch.cat(images, dim=1), "audio": torch.cat(audio, dim=1), "label": labels[0]}


def default_num_chunks(*, image_points: int, audio_points: int, max_chunks: int = 128) -> int:
    """The most chunks (at most `max_chunks`) that split both modalities evenly: 128 for the
    real 16-frame clip (6272 image + 15 audio points each), as the DeepMind colab chunks it."""
    common = math.gcd(image_points, audio_points)
    return max(d for d in range(1, min(common, max_chunks) + 1) if common % d == 0)


# A query's output index (int64), its unravelled (t, y, x) indices and float32 positions.
INDEX_BYTES_PER_QUERY = 8 + 2 * 3 * 8 + 3 * 4


@dataclass(frozen=True)
class DecoderWidths:
    """The widths that size a multimodal decode pass's activations, read from the model's
    decoder (so they hold for any config: query width = widest modality query + padding)."""

    num_latents: int
    latent_channels: int
    query_channels: int
    qk_channels: int
    v_channels: int
    num_heads: int
    mlp_channels: int
    output_channels: int

    @classmethod
    def of(cls, model: PerceiverForTask) -> DecoderWidths:
        perceiver = model.perceiver
        if not isinstance(perceiver.decoder, MultimodalDecoder):
            raise TypeError("decoder widths are those of a multimodal decoder")
        decoder = perceiver.decoder.decoder  # the BasicDecoder all modalities' queries share
        layer = decoder.decoding_cross_attention
        attention = layer.attention.self
        num_latents, latent_channels = perceiver.embeddings.latents.shape
        return cls(
            num_latents=num_latents,
            latent_channels=latent_channels,
            query_channels=attention.query.in_features,
            qk_channels=attention.query.out_features,
            v_channels=attention.value.out_features,
            num_heads=attention.num_heads,
            mlp_channels=layer.mlp.dense1.out_features,
            output_channels=decoder.output_num_channels,
        )

    def elements_per_query(self) -> int:
        """Activation elements one query holds at the pass's high-water mark.

        The padded queries live through the whole layer; on top of them the largest of:
        building them (per-modality parts + their concatenation), attention (LayerNorm, q,
        scores and softmax per head, heads out + merged, output projection), the MLP
        (attention output, its LayerNorm, the hidden layer and its activation), the output
        (layer output + final projection).
        """
        c, h = self.query_channels, self.num_heads
        build = 2 * c
        attention = c + self.qk_channels + 2 * h * self.num_latents + 2 * self.v_channels + c
        mlp = 2 * c + 2 * self.mlp_channels
        output = c + self.output_channels
        return c + max(build, attention, mlp, output)

    def pass_bytes(self, queries: int, *, batch: int = 1, element_size: int = 4) -> int:
        """Estimated peak activation bytes of one pass decoding `queries` points for each of
        `batch` clips; the latents' LayerNorm, keys and values are the per-clip constant."""
        per_query = element_size * self.elements_per_query() + INDEX_BYTES_PER_QUERY
        per_clip_fixed = element_size * self.num_latents * (self.latent_channels + self.qk_channels + self.v_channels)
        return batch * (queries * per_query + per_clip_fixed)


def chunks_per_pass(
    widths: DecoderWidths,
    *,
    chunk_queries: int,
    num_chunks: int,
    budget_bytes: int,
    element_size: int = 4,
) -> int:
    """How many chunks of `chunk_queries` image + audio points one pass (which also decodes
    the label query) may decode within `budget_bytes` of activations: 1 to `num_chunks`."""

    def cost(queries: int) -> int:
        return widths.pass_bytes(queries, element_size=element_size)

    per_chunk = cost(chunk_queries) - cost(0)
    return max(1, min(num_chunks, (budget_bytes - cost(1)) // max(1, per_chunk)))  # cost(1): the label query
