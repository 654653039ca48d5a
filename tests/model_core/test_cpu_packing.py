"""Prepacked bfloat16 linears: same state_dict, same logits as the plain model, safe under weight changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_core import from_config
from model_core.chunking import output_chunks
from model_core.cpu_packing import PackedLinear, packing_supported, prepack_linears
from tests.model_core.hf_oracle import BASE, CONFIGS, make_inputs

pytestmark = pytest.mark.skipif(
    not packing_supported("cpu", torch.bfloat16), reason="this CPU has no oneDNN bfloat16 support"
)
MM = "PerceiverForMultimodalAutoencoding"


def _config(arch: str) -> dict:
    return {"architectures": [arch], **BASE, **CONFIGS[arch]}


def _inputs(arch: str, model: nn.Module) -> dict:
    kwargs = make_inputs(arch, model, batch=2)
    if arch == MM:
        kwargs["subsampled_output_points"] = output_chunks(num_chunks=4, image_points=512, audio_points=16)[1]
    if arch == "PerceiverForMaskedLM":
        kwargs = {"input_ids": kwargs["inputs"], "attention_mask": kwargs["attention_mask"]}

    def cast(v):
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        return v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    return {k: (v if k == "subsampled_output_points" else cast(v)) for k, v in kwargs.items()}


def _logits(model: nn.Module, kwargs: dict) -> list[torch.Tensor]:
    out = model(**kwargs).logits
    return [out[k] for k in sorted(out)] if isinstance(out, dict) else [out]


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@torch.inference_mode()
def test_packed_model_equals_plain_model(arch):
    packed = from_config(_config(arch), dtype=torch.bfloat16, seed=3)  # bf16 on CPU: packed at build
    plain = from_config(_config(arch), dtype=torch.float32, seed=3).to(torch.bfloat16)
    assert any(isinstance(m, PackedLinear) for m in packed.modules())
    assert not any(isinstance(m, PackedLinear) for m in plain.modules())
    assert packed.state_dict().keys() == plain.state_dict().keys()
    kwargs = _inputs(arch, plain)
    for a, b in zip(_logits(packed, kwargs), _logits(plain, kwargs), strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


@torch.inference_mode()
def test_state_dict_is_unchanged_by_packing():
    model = from_config(_config("PerceiverForSequenceClassification"), dtype=torch.float32, seed=1).to(torch.bfloat16)
    before = model.state_dict()
    assert prepack_linears(model) > 0
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_repacks_when_weights_change():
    linear = nn.Linear(32, 16).to(torch.bfloat16).requires_grad_(False)
    packed = PackedLinear.wrap(linear)
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        first = packed(x)
    with torch.no_grad():
        packed.weight.mul_(2.0)  # in place (load_state_dict does this)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), torch.nn.functional.linear(x, packed.weight, packed.bias))
        assert not torch.equal(packed(x), first)
    packed.to(torch.float32)  # a new weight tensor: float32 runs the plain path
    x32 = x.float()
    torch.testing.assert_close(packed(x32), torch.nn.functional.linear(x32, packed.weight, packed.bias))


def test_autograd_takes_the_plain_path():
    packed = PackedLinear.wrap(nn.Linear(8, 4).to(torch.bfloat16))
    x = torch.randn(3, 8, dtype=torch.bfloat16, requires_grad=True)
    packed(x).float().sum().backward()
    assert x.grad is not None and packed.weight.grad is not None


def test_only_bfloat16_on_cpu_is_packed():
    assert not packing_supported("cpu", torch.float32)
    assert not packing_supported("meta", torch.bfloat16)
