"""The one attention of the stack, and the transformer layer built around it.

Every cross- and self-attention of every Perceiver IO assembly is an `AttentionLayer`;
the variants (query/key-value widths, qk and v channels, heads, query residual) are
constructor arguments. Submodule names follow the Hugging Face checkpoints:
`attention.self.{layernorm1,layernorm2,query,key,value}`, `attention.output.dense`,
`layernorm`, `mlp.{dense1,dense2}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, TypedDict, get_args

import torch
import torch.nn.functional as F
from torch import nn

HiddenAct = Literal["gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish"]
# Where a cross-attention's default qk width comes from: the queries' or the keys-values'.
ShapeForAttention = Literal["q", "kv"]

_ACTIVATIONS: dict[HiddenAct, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}
HIDDEN_ACTS: tuple[HiddenAct, ...] = get_args(HiddenAct)
SHAPES_FOR_ATTENTION: tuple[ShapeForAttention, ...] = get_args(ShapeForAttention)


class AttentionOptions(TypedDict, total=False):
    """The choices of one AttentionLayer besides its widths, as the modules that build
    layers (encoder, decoders) receive and pass them on; missing keys take the defaults."""

    qk_channels: int | None
    v_channels: int | None
    num_heads: int
    widening_factor: int
    use_query_residual: bool
    shape_for_attention: ShapeForAttention
    hidden_act: HiddenAct


# On CPU the fused kernels are several times slower than two matmuls in bfloat16/float16
# for the latent-sized attentions of these models (measured, torch 2.13); below this many
# score elements the explicit path runs there. Large attentions (flow: 2048 x 182528) stay
# fused, which never materialises the scores.
_CPU_REDUCED_PRECISION_EXPLICIT_MAX = 1 << 25


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d_qk) + mask) v through the fused SDPA kernels.

    q: (B, H, N, Dqk), k: (B, H, M, Dqk), v: (B, H, M, Dv), mask: bool (B, 1, 1, M),
    True where a key may be attended to. Returns (B, H, N, Dv).
    """
    if (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= _CPU_REDUCED_PRECISION_EXPLICIT_MAX
    ):
        return attend_reference(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attend_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The same as `attend`, written out; tests compare the fused path against it."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)  # (B, H, N, M); scale the smaller side
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1) @ v


class MultiHeadAttention(nn.Module):
    """Pre-norm multi-head attention of queries `x` over `kv` (or over `x` itself)."""

    def __init__(
        self,
        *,
        q_dim: int,
        kv_dim: int,
        qk_channels: int,
        v_channels: int,
        num_heads: int,
        is_cross_attention: bool,
    ) -> None:
        super().__init__()
        for name, channels in (("qk_channels", qk_channels), ("v_channels", v_channels)):
            if channels % num_heads:
                raise ValueError(f"{name} ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.layernorm1 = nn.LayerNorm(q_dim)
        self.layernorm2 = nn.LayerNorm(kv_dim) if is_cross_attention else nn.Identity()
        self.query = nn.Linear(q_dim, qk_channels)
        self.key = nn.Linear(kv_dim, qk_channels)
        self.value = nn.Linear(kv_dim, v_channels)
        self.fused = True

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # (B, H, N, C/H)

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor | None = None, kv_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, N, q_dim); kv: (B, M, kv_dim); kv_mask: bool (B, M). Returns (B, N, v_channels)."""
        x = self.layernorm1(x)
        kv = x if kv is None else self.layernorm2(kv)
        q, k, v = self._heads(self.query(x)), self._heads(self.key(kv)), self._heads(self.value(kv))
        mask = None if kv_mask is None else kv_mask[:, None, None, :]  # (B, 1, 1, M)
        out = (attend if self.fused else attend_reference)(q, k, v, mask)  # (B, H, N, Dv)
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)  # (B, N, H * Dv)


class _Dense(nn.Module):
    def __init__(self, *, in_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Attention(nn.Module):
    """Attention followed by its output projection to `out_dim`."""

    def __init__(self, *, attention: MultiHeadAttention, out_dim: int) -> None:
        super().__init__()
        self.self = attention
        self.output = _Dense(in_features=attention.value.out_features, out_features=out_dim)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None, kv_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, kv, kv_mask))


class MLP(nn.Module):
    def __init__(self, *, dim: int, widening_factor: int, hidden_act: HiddenAct) -> None:
        super().__init__()
        self.dense1 = nn.Linear(dim, widening_factor * dim)
        self.act = _ACTIVATIONS[hidden_act]()
        self.dense2 = nn.Linear(widening_factor * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense2(self.act(self.dense1(x)))


class AttentionLayer(nn.Module):
    """x -> x' = attn(x, kv) (+ x); out = x' + MLP(LN(x')).

    Channel defaults follow the checkpoints: a cross-attention's qk width is the key-value
    width (`shape_for_attention="kv"`) or the query width ("q"); a self-attention's is the
    query width; v defaults to qk. A cross-attention projects back to the query width, a
    self-attention to v_channels.
    """

    def __init__(
        self,
        *,
        q_dim: int,
        kv_dim: int,
        is_cross_attention: bool,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        num_heads: int = 1,
        widening_factor: int = 1,
        use_query_residual: bool = True,
        shape_for_attention: ShapeForAttention = "kv",
        hidden_act: HiddenAct = "gelu",
    ) -> None:
        super().__init__()
        if qk_channels is None:
            qk_channels = kv_dim if is_cross_attention and shape_for_attention == "kv" else q_dim
        if v_channels is None:
            v_channels = qk_channels
        attention = MultiHeadAttention(
            q_dim=q_dim,
            kv_dim=kv_dim,
            qk_channels=qk_channels,
            v_channels=v_channels,
            num_heads=num_heads,
            is_cross_attention=is_cross_attention,
        )
        self.attention = Attention(attention=attention, out_dim=q_dim if is_cross_attention else v_channels)
        self.use_query_residual = use_query_residual
        self.layernorm = nn.LayerNorm(q_dim)
        self.mlp = MLP(dim=q_dim, widening_factor=widening_factor, hidden_act=hidden_act)

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor | None = None, kv_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.attention(x, kv, kv_mask)
        if self.use_query_residual:
            h = h + x
        return h + self.mlp(self.layernorm(h))
