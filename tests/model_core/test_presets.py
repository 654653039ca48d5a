"""The preset registry: the published presets have the checkpoints' sizes and transformers'
layout; every other one round-trips through save/load and matches transformers."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from model_core import PRESETS, PerceiverConfig, build_model, from_config, load_pretrained, save_pretrained
from model_core.config import Architecture
from model_core.image_processing import ImageProcessingConfig
from model_core.presets import AudioVideoProcessing, FlowProcessing, Preset, preset_config
from tests.model_core.hf_oracle import compare, hf_from_config, make_inputs, mm_points, run, save

PUBLISHED = sorted(name for name, preset in PRESETS.items() if preset.hub_id)
SMALL = sorted(name for name, preset in PRESETS.items() if not preset.hub_id)

# Parameters of the published checkpoints: 4 bytes each, they are the sizes of the hub's float32 weight files
# (language-perceiver: 804 MB, vision-perceiver-learned: 249 MB, optical-flow-perceiver: 164 MB...).
PARAMETERS = {
    "language-perceiver": 201_108_230,
    "vision-perceiver-learned": 62_255_848,
    "vision-perceiver-fourier": 48_440_627,
    "vision-perceiver-conv": 48_646_522,
    "optical-flow-perceiver": 41_057_134,
    "multimodal-perceiver": 19_858_855,
}
# The vision checkpoints' preprocessor_config.json on the hub (the same for learned, fourier and conv).
IMAGENET_PREPROCESSOR = {
    "crop_size": 256,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 224,
}


def _labelled(config: PerceiverConfig) -> PerceiverConfig:
    """With its default labels spelled out, as a saved config.json has them."""
    return dataclasses.replace(config, id2label=dict(enumerate(config.labels)))


def test_registry_names_every_checkpoint_and_a_tiny_model_of_every_architecture():
    assert sorted(PARAMETERS) == PUBLISHED
    assert all(PRESETS[name].hub_id == f"deepmind/{name}" for name in PUBLISHED)
    tiny = {PRESETS[name].architecture for name in SMALL if name.endswith("-tiny")}
    assert tiny == set(Architecture)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_preset_has_the_checkpoint_s_layout(name):
    """Built on the meta device: transformers' keys and shapes, and the hub file's size."""
    import transformers

    preset = PRESETS[name]
    config = preset.config()
    with torch.device("meta"):
        ours = build_model(PerceiverConfig.from_dict(config))
        theirs = getattr(transformers, preset.architecture.value)(transformers.PerceiverConfig(**config))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_transformers_reads_the_config_as_we_do(name):
    import transformers

    config = preset_config(name)
    theirs = transformers.PerceiverConfig(**config).to_dict()
    assert _labelled(PerceiverConfig.from_dict(theirs)) == _labelled(PerceiverConfig.from_dict(config))


@pytest.mark.parametrize("name", SMALL)
def test_round_trips_through_save_and_load(name, tmp_path):
    model = from_config(preset_config(name), seed=1)
    again = load_pretrained(save_pretrained(model, tmp_path))
    assert again.config == _labelled(model.config)
    for (key, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", SMALL)
def test_matches_transformers(name, tmp_path):
    arch = PRESETS[name].architecture.value
    hf = hf_from_config(preset_config(name), seed=2)
    ours = load_pretrained(save(hf, tmp_path))
    kwargs = make_inputs(arch, hf)
    if arch == "PerceiverForMultimodalAutoencoding":
        kwargs["subsampled_output_points"] = mm_points()
    compare(run(hf, arch, kwargs), run(ours, arch, kwargs))


def test_preprocessing_metadata_is_the_checkpoints():
    imagenet = ImageProcessingConfig.from_dict(IMAGENET_PREPROCESSOR)
    for name in ("vision-perceiver-learned", "vision-perceiver-fourier", "vision-perceiver-conv"):
        assert PRESETS[name].preprocessing == imagenet
    flow = PRESETS["optical-flow-perceiver"].preprocessing
    assert isinstance(flow, FlowProcessing) and flow.flow_scale == 20.0
    clip, args = PRESETS["multimodal-perceiver"].preprocessing, PRESETS["multimodal-perceiver"].args
    assert isinstance(clip, AudioVideoProcessing)
    assert clip.sample_rate / args["audio_samples_per_frame"] == 25  # frames a second
    assert PRESETS["language-perceiver"].preprocessing is None


def test_config_is_a_fresh_json_dict_with_overrides():
    labels = {"0": "cat", "1": "dog"}
    config = preset_config("vision-perceiver-conv-tiny", id2label=labels)
    assert config["architectures"] == ["PerceiverForImageClassificationConvProcessing"]
    assert config["id2label"] == labels and json.loads(json.dumps(config)) == config
    assert from_config(config).config.labels == ["cat", "dog"]
    flow = preset_config("optical-flow-perceiver-tiny")
    flow["train_size"].append(1)
    assert preset_config("optical-flow-perceiver-tiny")["train_size"] == [48, 64]


def test_unknown_names_and_keys_are_refused():
    with pytest.raises(KeyError, match="language-perceiver-tiny"):
        preset_config("language-perceiver-huge")
    with pytest.raises(ValueError, match="num_latent"):
        Preset(architecture=Architecture.MASKED_LM, args={"num_latent": 8})
    with pytest.raises(ValueError, match="hidden_act"):
        Preset(architecture=Architecture.MASKED_LM, args={"hidden_act": "tanh"})
