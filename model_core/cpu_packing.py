"""oneDNN weight prepacking for bfloat16 inference on CPU.

`F.linear` in bfloat16 re-lays out the weight into oneDNN's blocked format on every call;
for the latent-sized matmuls of these models that costs 25-40 % of the matmul itself
(torch 2.13, AVX512-BF16/AMX). `prepack_linears` swaps every `nn.Linear` for a
`PackedLinear` holding the same parameters (state_dict keys and values unchanged) plus a
copy of the weight in the blocked layout, made once. The packed copy doubles the memory of
the linear weights. Anything else (float32, CUDA, autograd) runs the plain `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def packing_supported(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether prepacked linears run for this placement (bfloat16 on a CPU with oneDNN bf16)."""
    if torch.device(device).type != "cpu" or dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Linear):
    """nn.Linear plus its weight in oneDNN's layout, repacked if the weight is replaced or
    modified in place (load_state_dict, .to())."""

    _packed: torch.Tensor | None
    _signature: tuple[int, int] | None

    @classmethod
    def wrap(cls, linear: nn.Linear) -> PackedLinear:
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight, packed.bias = linear.weight, linear.bias
        packed._packed, packed._signature = None, None
        if packed.weight.dtype == torch.bfloat16 and packed.weight.device.type == "cpu":
            packed._packed_weight()  # pack now, not on the first request
        return packed

    def _packed_weight(self) -> torch.Tensor:
        # Inference tensors (made under torch.inference_mode) have no version counter.
        version = -1 if self.weight.is_inference() else self.weight._version
        signature = (self.weight.data_ptr(), version)
        if signature != self._signature:
            packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)
            self._packed, self._signature = packed, signature
            return packed
        assert self._packed is not None  # set with the signature
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or x.dtype != torch.bfloat16
            or self.weight.dtype != torch.bfloat16
            or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), self.bias, "none", [], "")


def prepack_linears(model: nn.Module) -> int:
    """Replace every nn.Linear of `model` by a PackedLinear (in place); returns how many."""
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear.wrap(child))
    return len(swaps)
