"""Small random transformers checkpoints: the oracle the model_core tests compare against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

BASE: dict[str, Any] = dict(
    num_latents=8,
    d_latents=32,
    d_model=24,
    num_blocks=1,
    num_self_attends_per_block=2,
    num_self_attention_heads=2,
    num_cross_attention_heads=1,
    attention_probs_dropout_prob=0.0,
)

# architecture -> config overrides; "inputs" in make_inputs below follows each.
CONFIGS: dict[str, dict[str, Any]] = {
    "PerceiverForMaskedLM": dict(
        max_position_embeddings=64, qk_channels=16, v_channels=32, num_cross_attention_heads=2
    ),
    "PerceiverForSequenceClassification": dict(max_position_embeddings=64, num_labels=3),
    "PerceiverForImageClassificationLearned": dict(image_size=16, num_labels=5),
    "PerceiverForImageClassificationFourier": dict(num_labels=5, d_latents=24, num_self_attention_heads=3),
    "PerceiverForImageClassificationConvProcessing": dict(num_labels=5, num_blocks=2),
    "PerceiverForOpticalFlow": dict(train_size=[12, 16], num_self_attention_heads=4),
    "PerceiverForMultimodalAutoencoding": dict(
        num_labels=7,
        num_frames=2,
        image_size=8,
        audio_samples_per_frame=32,
        samples_per_patch=4,
        output_shape=[1, 2, 16, 16],
        output_num_channels=12,
        _label_trainable_num_channels=20,
    ),
}


def hf_model(architecture: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    return hf_from_config({"architectures": [architecture], **BASE, **CONFIGS[architecture], **overrides}, seed=seed)


def hf_from_config(config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The transformers model of a config.json dict, every weight random (seeded)."""
    import transformers

    cfg = transformers.PerceiverConfig(**{"attention_probs_dropout_prob": 0.0, **config})
    torch.manual_seed(seed)
    model = getattr(transformers, config["architectures"][0])(cfg).eval()
    # transformers zero-initialises some parameters; make every one random so that no
    # wrong wiring can hide behind a zero.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or "batchnorm" in name:
                p.copy_(1.0 * (name.endswith("weight")) + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(1.0 + 0.1 * torch.rand(b.shape, generator=gen))
    return model


def save(model: torch.nn.Module, folder: Path, *, safetensors: bool = True) -> Path:
    """save_pretrained; with safetensors=False the weights are re-written as the pickled
    pytorch_model.bin that most hub checkpoints still ship (current transformers only
    writes safetensors)."""
    folder = Path(folder)
    model.save_pretrained(folder)
    if not safetensors:
        from safetensors.torch import load_file

        weights = folder / "model.safetensors"
        torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
        weights.unlink()
    return folder


def make_inputs(architecture: str, model: torch.nn.Module, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments for both the transformers model and ours."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    if architecture in ("PerceiverForMaskedLM", "PerceiverForSequenceClassification"):
        ids = torch.randint(6, 262, (batch, 40), generator=gen)
        mask = torch.ones(batch, 40, dtype=torch.long)
        mask[0, 30:] = 0
        ids[0, 30:] = 0
        return dict(inputs=ids, attention_mask=mask)
    if architecture == "PerceiverForImageClassificationLearned":
        return dict(inputs=torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen))
    if architecture.startswith("PerceiverForImageClassification"):
        return dict(inputs=torch.randn(batch, 3, 20, 18, generator=gen))
    if architecture == "PerceiverForOpticalFlow":
        h, w = cfg.train_size
        return dict(inputs=torch.randn(batch, 2, 27, h, w, generator=gen))
    if architecture == "PerceiverForMultimodalAutoencoding":
        n_audio = cfg.num_frames * cfg.audio_samples_per_frame
        t, h, w = cfg.output_shape[1:]
        return dict(
            inputs=dict(
                audio=torch.randn(batch, n_audio, 1, generator=gen),
                image=torch.randn(
                    batch, cfg.num_frames, 3, 4 * cfg.image_size // 2, 4 * cfg.image_size // 2, generator=gen
                ),
                label=torch.zeros(batch, cfg.num_labels),
            ),
        )
    raise KeyError(architecture)


def mm_points() -> dict[str, torch.Tensor | None]:
    """Output points both implementations decode (transformers' multimodal model needs some)."""
    return {"image": torch.arange(10, 90), "audio": torch.arange(2, 7), "label": None}


def run(model: torch.nn.Module, architecture: str, kwargs: dict[str, Any]) -> Any:
    """The logits of either implementation for make_inputs' kwargs."""
    with torch.inference_mode():
        if architecture == "PerceiverForMaskedLM":
            return model(kwargs["inputs"], attention_mask=kwargs.get("attention_mask")).logits
        return model(**kwargs).logits


def compare(a: Any, b: Any, tol: float = 1e-4) -> None:
    """Equal shapes, values within `tol`, per modality where the outputs are dicts."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b)
        for key in a:
            compare(a[key], b[key], tol)
        return
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol
