"""The classifier made from a base checkpoint: the base's encoder, a new (or kept) decoder, model_core's
assembly; and decoding cached latents gives the model's own logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.classifier import base_config, decode_latents, load_classifier
from model_core import (
    Architecture,
    CheckpointError,
    StateDictMismatchError,
    from_config,
    preset_config,
    save_pretrained,
)
from model_core.checkpoint import read_state_dict
from model_core.tokenizer import ByteTokenizer
from tests.finetune.synthetic import random_base

LABELS = ["neg", "neu", "pos"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_base(tmp_path_factory.mktemp("base"), "language-perceiver-tiny", seed=4)


def test_the_encoder_comes_from_the_base_and_the_decoder_is_new(base: Path) -> None:
    model = load_classifier(base, LABELS, seed=1)
    assert model.config.architecture is Architecture.SEQUENCE_CLASSIFICATION
    assert model.config.labels == LABELS and model.config.extra["problem_type"] == "single_label_classification"
    state, base_state = model.state_dict(), read_state_dict(base)
    encoder = [k for k in state if not k.startswith("perceiver.decoder.")]
    assert encoder and all(torch.equal(state[k], base_state[k]) for k in encoder)
    head = state["perceiver.decoder.decoder.final_layer.weight"]
    assert head.shape == (3, 32) and 0.01 < float(head.std()) < 0.03  # init_weights: normal(0, 0.02)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters()) and model.training
    other = load_classifier(base, LABELS, seed=2).state_dict()["perceiver.decoder.decoder.final_layer.weight"]
    assert not torch.equal(head, other)  # the decoder follows the seed


def test_a_classifier_of_the_same_labels_keeps_its_decoder(base: Path, tmp_path: Path) -> None:
    first = load_classifier(base, LABELS, seed=1)
    with torch.no_grad():
        first.perceiver.get_submodule("decoder").decoder.final_layer.bias.fill_(0.5)
    folder = save_pretrained(first, tmp_path / "clf")
    again = load_classifier(folder, LABELS, seed=9).state_dict()
    assert torch.equal(again["perceiver.decoder.decoder.final_layer.bias"], torch.full((3,), 0.5))
    relabelled = load_classifier(folder, ["neg", "pos"], seed=9).state_dict()
    assert relabelled["perceiver.decoder.decoder.final_layer.bias"].shape == (2,)
    assert torch.equal(
        relabelled["perceiver.encoder.cross_attention.attention.self.query.weight"],
        again["perceiver.encoder.cross_attention.attention.self.query.weight"],
    )


def test_bases_that_are_not_text_models_or_do_not_fit_are_refused(tmp_path: Path) -> None:
    image = save_pretrained(from_config(preset_config("vision-perceiver-conv-tiny")), tmp_path / "image")
    with pytest.raises(CheckpointError, match="PerceiverForImageClassificationConvProcessing; fine-tuning starts"):
        base_config(image)
    mlm = random_base(tmp_path / "mlm", "language-perceiver-tiny")
    config = (mlm / "config.json").read_text().replace('"d_model": 16', '"d_model": 24')
    (mlm / "config.json").write_text(config)
    with pytest.raises(StateDictMismatchError, match="perceiver.input_preprocessor.embeddings.weight"):
        load_classifier(mlm, LABELS)


def test_decoding_cached_latents_gives_the_models_logits(base: Path) -> None:
    model = load_classifier(base, LABELS, seed=1).eval()
    ids, mask = ByteTokenizer().pad([ByteTokenizer().encode(t) for t in ("a short one", "and a longer text here")])
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        got = decode_latents(model, model.encode(ids, mask).latents)
    assert got.shape == (2, 3) and torch.allclose(got, expected, atol=1e-6)
