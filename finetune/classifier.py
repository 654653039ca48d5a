"""A text classifier made from a text checkpoint: model_core's own PerceiverForSequenceClassification
assembly, its encoder side (byte embeddings, latents, encoder) taken from the base and its
classification decoder new.

A masked LM and a sequence classifier share every key outside `perceiver.decoder.` (the LM's
`embedding_decoder.bias` aside), so the base's tensors load into the classifier under the same
strict check `load_pretrained` applies: a base of another shape fails listing every key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from model_core import Architecture, CheckpointError, PerceiverConfig, PerceiverForTask, build_model, init_weights
from model_core.checkpoint import check_state_dict, read_config, read_state_dict, resolve_source
from model_core.model import Encoded
from model_core.preprocessors.base import Preprocessed

TEXT_BASES = (Architecture.MASKED_LM, Architecture.SEQUENCE_CLASSIFICATION)
DECODER = "perceiver.decoder."
PROBLEM_TYPE = "single_label_classification"  # what transformers' loss head and the server's scores read


def base_config(source: str | Path) -> PerceiverConfig:
    """The base checkpoint's config (fetched alone, so the data can be checked against it before the weights
    are read); a base that is no text model is refused here."""
    config = read_config(resolve_source(source))
    if config.architecture not in TEXT_BASES:
        names = " or ".join(a.value for a in TEXT_BASES)
        raise CheckpointError(f"{source} is a {config.architecture.value}; fine-tuning starts from a {names}")
    return config


def classifier_config(base: PerceiverConfig, labels: Sequence[str]) -> PerceiverConfig:
    """The base's architecture fields with the sequence-classification head and the data's labels."""
    return dataclasses.replace(
        base,
        architecture=Architecture.SEQUENCE_CLASSIFICATION,
        id2label=dict(enumerate(labels)),
        extra={**base.extra, "problem_type": PROBLEM_TYPE},
    )


def keeps_decoder(base: PerceiverConfig, labels: Sequence[str]) -> bool:
    """Whether the base's own classification decoder carries on: only a classifier of exactly these labels."""
    return base.architecture is Architecture.SEQUENCE_CLASSIFICATION and base.labels == list(labels)


def load_classifier(source: str | Path, labels: Sequence[str], *, seed: int = 0) -> PerceiverForTask:
    """The classifier for `labels` on the base's encoder, float32 on the CPU, every parameter trainable.

    The decoder is initialised as transformers initialises one (`init_weights`, seeded), unless the base
    is already a classifier of the same labels, whose decoder is kept.
    """
    folder = resolve_source(source)
    base = base_config(folder)
    config = classifier_config(base, labels)
    with torch.device("meta"):
        model = build_model(config)
    assert isinstance(model, PerceiverForTask)  # a sequence classifier is a PerceiverForTask
    state = read_state_dict(folder)
    keep = keeps_decoder(base, labels)
    state = {k: v for k, v in state.items() if k.startswith("perceiver.") and (keep or not k.startswith(DECODER))}
    if not keep:
        decoder = model.perceiver.get_submodule("decoder").to_empty(device="cpu")
        init_weights(decoder, std=config.initializer_range, seed=seed)
        state |= {DECODER + k: v for k, v in decoder.state_dict().items()}
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True, assign=True)
    model.to(dtype=torch.float32)
    return model.train()


def decode_latents(model: PerceiverForTask, latents: torch.Tensor) -> torch.Tensor:
    """logits (B, num_labels) for encoder latents (B, L, D), as `model(...)` gives them for the same texts.

    A classification decoder's one query is learned: neither its queries nor its output shape read the
    inputs, so decoding cached latents needs no preprocessed inputs, only an empty stand-in for them.
    """
    empty = latents[:, :0]  # (B, 0, D)
    logits = model.decode(Encoded(latents=latents, pre=Preprocessed(inputs=empty, without_pos=empty)))
    assert isinstance(logits, torch.Tensor)  # no postprocessor on a sequence classifier
    return logits
