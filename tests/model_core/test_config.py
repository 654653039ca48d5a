"""Closed choices of a config are checked once, where a config is made."""

from __future__ import annotations

import json

import pytest

from model_core import CheckpointError, PerceiverConfig, from_config, load_pretrained
from model_core.attention import _ACTIVATIONS, HIDDEN_ACTS
from model_core.presets import preset_config


@pytest.mark.parametrize("field, value", [("hidden_act", "tanh"), ("cross_attention_shape_for_attention", "queries")])
def test_an_unknown_choice_is_refused(field, value, tmp_path):
    config = preset_config("language-perceiver-tiny", **{field: value})
    with pytest.raises(ValueError, match=field):
        PerceiverConfig.from_dict(config)
    with pytest.raises(ValueError, match=field):
        from_config(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=field):
        load_pretrained(tmp_path)


def test_every_activation_named_is_built():
    assert set(HIDDEN_ACTS) == set(_ACTIVATIONS)
