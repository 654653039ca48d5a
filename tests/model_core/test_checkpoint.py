"""Loading and saving checkpoints: strictness, legacy configs, safe unpickling, offline hub."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch

from model_core import (
    CheckpointError,
    CheckpointNotFoundError,
    PerceiverConfig,
    StateDictMismatchError,
    from_config,
    load_pretrained,
    save_pretrained,
)
from tests.model_core.hf_oracle import BASE, CONFIGS, hf_model, make_inputs, save

FLOW = "PerceiverForOpticalFlow"


def _tiny(arch: str) -> dict:
    return {"architectures": [arch], **BASE, **CONFIGS[arch]}


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        load_pretrained(tmp_path)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_tiny(FLOW)))
    with pytest.raises(CheckpointNotFoundError, match="model.safetensors"):
        load_pretrained(tmp_path)


def test_unknown_architecture_and_bad_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(CheckpointError, match="BertForMaskedLM"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_pretrained(tmp_path)


def test_every_offending_key_is_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    save(hf_model(FLOW), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["perceiver.embeddings.latents"]
    del state["perceiver.decoder.decoder.final_layer.bias"]
    state["perceiver.extra.weight"] = torch.zeros(3)
    key = "perceiver.input_preprocessor.conv_after_patches.weight"
    state[key] = torch.zeros(5, 54)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(StateDictMismatchError) as info:
        load_pretrained(tmp_path)
    err = info.value
    assert err.missing == ["perceiver.decoder.decoder.final_layer.bias", "perceiver.embeddings.latents"]
    assert err.unexpected == ["perceiver.extra.weight"]
    assert len(err.mismatched) == 1 and key in err.mismatched[0]
    for name in err.missing + err.unexpected + [key]:
        assert name in str(err)


def test_legacy_and_missing_config_keys(tmp_path):
    """The optical-flow hub config carries seq_len & co. and lacks max_position_embeddings."""
    hf = hf_model(FLOW)
    save(hf, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key in ("max_position_embeddings", "output_shape", "vocab_size"):
        raw.pop(key, None)
    raw.update(seq_len=2048, position_embedding_init_scale=0.02, hidden_dropout_prob=0.1)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    model = load_pretrained(tmp_path)
    assert model.config.max_position_embeddings == 2048
    assert model.config.extra["seq_len"] == 2048
    kwargs = make_inputs(FLOW, hf)
    with torch.inference_mode():
        assert torch.allclose(model(**kwargs).logits, hf(**kwargs).logits, atol=1e-5)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/perceiver-serve-pwned",))


def test_pickle_is_never_executed(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_tiny(FLOW)))
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_pretrained(tmp_path)
    assert not os.path.exists("/tmp/perceiver-serve-pwned")


def test_offline_hub_id_fails_fast_with_instructions(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = (
        "from model_core import load_pretrained\n"
        "try:\n    load_pretrained('deepmind/language-perceiver')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30
    assert out.stdout.startswith("CheckpointNotFoundError")
    for hint in ("deepmind/language-perceiver", "HF_HUB_OFFLINE", "huggingface-cli download", "local folder"):
        assert hint in out.stdout


def test_cached_hub_checkpoint_loads_without_network(tmp_path, monkeypatch):
    """A hub id already in the cache loads even with the hub unreachable."""
    from huggingface_hub import constants

    folder = save(hf_model(FLOW), tmp_path / "src")
    repo = tmp_path / "hub" / "models--org--flow"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = load_pretrained("org/flow", cache_dir=str(tmp_path / "hub"))
    assert model.config.architecture.value == FLOW


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_save_pretrained_round_trips_through_transformers(arch, tmp_path):
    import transformers

    ours = from_config(_tiny(arch), seed=1)
    save_pretrained(ours, tmp_path)
    hf = getattr(transformers, arch).from_pretrained(tmp_path).eval()
    again = load_pretrained(tmp_path)
    kwargs = make_inputs(arch, hf)
    if arch == "PerceiverForMultimodalAutoencoding":
        kwargs["subsampled_output_points"] = {"image": torch.arange(5), "audio": torch.arange(3), "label": None}
    with torch.inference_mode():
        if arch == "PerceiverForMaskedLM":
            a, b = hf(**kwargs).logits, again(kwargs["inputs"], kwargs["attention_mask"]).logits
        else:
            a, b = hf(**kwargs).logits, again(**kwargs).logits
    a = a if isinstance(a, dict) else {"x": a}
    b = b if isinstance(b, dict) else {"x": b}
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-4


def test_from_config_is_deterministic_and_typed():
    cfg = _tiny("PerceiverForSequenceClassification")
    a, b = from_config(cfg, seed=3), from_config(cfg, seed=3)
    c = from_config(cfg, seed=4, dtype=torch.bfloat16)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert all(p.dtype == torch.bfloat16 for p in c.parameters())
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_config_round_trip_keeps_labels_and_extras():
    raw = {**_tiny("PerceiverForImageClassificationFourier"), "id2label": {"0": "cat", "1": "dog"}, "foo": 1}
    cfg = PerceiverConfig.from_dict(raw)
    assert cfg.labels == ["cat", "dog"] and cfg.task == "image-classification"
    again = PerceiverConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.extra["foo"] == 1
