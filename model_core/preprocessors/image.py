"""Images and video frames -> tokens: pixels, patches, a 1x1 conv, or a conv+maxpool stem."""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import nn
from torch.nn import functional as F

from model_core.position import PositionEncoding
from model_core.preprocessors.base import ConcatOrAdd, PositionedTokens, Preprocessed


class PrepType(str, Enum):
    CONV = "conv"  # 7x7/2 conv, BN, ReLU, 3x3/2 max-pool
    CONV1X1 = "conv1x1"
    PIXELS = "pixels"
    PATCHES = "patches"  # space-to-depth, optionally followed by a linear layer


def space_to_depth(frames: torch.Tensor, *, temporal_block: int = 1, spatial_block: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/s, W/s, s*s*C), or (B, T, C, H, W) -> (B, T/t, H/s, W/s, t*s*s*C).

    Channels come out ordered (t, sy, sx, c), as in the checkpoints.
    """
    s, t = spatial_block, temporal_block
    if frames.dim() == 4:
        b, c, h, w = frames.shape
        x = frames.reshape(b, c, h // s, s, w // s, s).permute(0, 2, 4, 3, 5, 1)  # (B, H/s, W/s, s, s, C)
        return x.reshape(b, h // s, w // s, s * s * c)  # (B, H/s, W/s, s*s*C)
    if frames.dim() == 5:
        b, time, c, h, w = frames.shape
        x = frames.reshape(b, time // t, t, c, h // s, s, w // s, s)  # (B, T/t, t, C, H/s, s, W/s, s)
        x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # (B, T/t, H/s, W/s, t, s, s, C)
        return x.reshape(b, time // t, h // s, w // s, t * s * s * c)  # (B, T/t, H/s, W/s, t*s*s*C)
    raise ValueError(f"frames must be (B, C, H, W) or (B, T, C, H, W), got shape {tuple(frames.shape)}")


class _SamePadConv2d(nn.Conv2d):
    """Conv2d with the checkpoints' fixed zero padding (k//2 + k%2 - 1 before, k//2 after)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for k in reversed(self.kernel_size):
            pads += [k // 2 + k % 2 - 1, k // 2]
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


class Conv2DDownsample(nn.Module):
    """4x spatial downsampling stem: (B, 3, H, W) -> (B, out, ~H/4, ~W/4)."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 64, use_batchnorm: bool = True) -> None:
        super().__init__()
        self.conv = _SamePadConv2d(in_channels, out_channels, kernel_size=7, stride=2, bias=False)
        self.batchnorm = nn.BatchNorm2d(out_channels) if use_batchnorm else nn.Identity()
        self.relu = nn.ReLU()
        self.max_pool = nn.MaxPool2d(kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.max_pool(self.relu(self.batchnorm(self.conv(x))))


class ImagePreprocessor(PositionedTokens):
    def __init__(
        self,
        *,
        prep_type: PrepType,
        position_encoding: PositionEncoding,
        spatial_downsample: int = 4,
        temporal_downsample: int = 1,
        in_channels: int = 3,
        out_channels: int = 64,
        conv_after_patching_in_channels: int | None = None,
        concat_or_add_pos: ConcatOrAdd = "concat",
        project_pos_dim: int = -1,
    ) -> None:
        super().__init__()
        self.prep_type = PrepType(prep_type)
        self.spatial_downsample = spatial_downsample
        self.temporal_downsample = temporal_downsample
        self.in_channels = in_channels
        self.out_channels = out_channels
        # Patches of conv_after_patching_in_channels are projected to out_channels (optical flow).
        self.conv_after_patching = conv_after_patching_in_channels is not None
        if self.prep_type is PrepType.CONV:
            # As in the checkpoints, the stem is one conv+pool stage whatever the (power of 4)
            # spatial_downsample says; the vision-perceiver-conv config passes 1.
            if math.log(spatial_downsample, 4) % 1 or temporal_downsample != 1:
                raise ValueError("conv expects a power-of-4 spatial and no temporal downsampling")
            self.convnet = Conv2DDownsample(in_channels=in_channels, out_channels=out_channels)
        elif self.prep_type is PrepType.CONV1X1:
            if temporal_downsample != 1:
                raise ValueError("conv1x1 does not downsample in time")
            self.convnet_1x1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=spatial_downsample)
        self._set_positions(
            position_encoding=position_encoding, concat_or_add_pos=concat_or_add_pos, project_pos_dim=project_pos_dim
        )
        if conv_after_patching_in_channels is not None:
            self.conv_after_patches = nn.Linear(conv_after_patching_in_channels, out_channels)

    @property
    def num_channels(self) -> int:
        return self._channels(self._token_channels())

    def _token_channels(self) -> int:
        if self.conv_after_patching or self.prep_type in (PrepType.CONV, PrepType.CONV1X1):
            return self.out_channels
        temporal = self.position_embeddings.num_dimensions > 2
        if self.prep_type is PrepType.PIXELS:
            return self.in_channels if temporal else math.ceil(self.in_channels / self.spatial_downsample)
        return self.in_channels * self.spatial_downsample**2 * (self.temporal_downsample if temporal else 1)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) or (B, T, C, H, W) -> channels-last grid (B, *index_dims, C')."""
        s, t = self.spatial_downsample, self.temporal_downsample
        if self.prep_type is PrepType.PATCHES:
            x = space_to_depth(x, temporal_block=t, spatial_block=s)
            if x.dim() == 5 and x.shape[1] == 1:
                x = x.squeeze(1)  # a single time step: (B, H, W, C)
            return self.conv_after_patches(x) if self.conv_after_patching else x
        if self.prep_type is PrepType.CONV:
            x = self.convnet(x)
        elif self.prep_type is PrepType.CONV1X1:
            x = self.convnet_1x1(x)
        elif x.dim() == 4:
            x = x[:, :, ::s, ::s]
        elif x.dim() == 5:
            x = x[:, ::t, :, ::s, ::s]
        if x.dim() == 4:
            return x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if x.dim() == 5:
            return x.permute(0, 1, 3, 4, 2)  # (B, T, H, W, C)
        raise ValueError(f"expected images (B, C, H, W) or video (B, T, C, H, W), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, *, interpolate_pos_encoding: bool = False) -> Preprocessed:
        grid = self._tokens(x)
        b, index_dims, c = grid.shape[0], tuple(grid.shape[1:-1]), grid.shape[-1]
        tokens = grid.reshape(b, -1, c)  # (B, M, C')
        return self._positioned(tokens, index_dims, interpolate=interpolate_pos_encoding)
