"""The UNet baseline: the PyPI package ``unet`` (MIT) in its default configuration.

``UNet2D`` (5 encoding blocks, 64 first-layer channels) and ``UNet3D`` (4 encoding blocks,
32 first-layer channels, BatchNorm) with ``padding=1`` so the output has the input's size;
padding adds no parameters, so the counts equal the published ones: 2D RGB -> 1 class
36,951,425; 3D 1 -> 1 19,071,297; 3D 3 -> 5 19,073,285. The state-dict keys are the
package's own, so checkpoints made with the package load unchanged.

Each spatial size must be divisible by ``2**depth`` (16 in 2D, 8 in 3D): the package pools
without padding and would otherwise misalign its skip connections.
"""
from __future__ import annotations

import torch
from torch import nn
from unet import UNet2D, UNet3D


def check_divisible(x: torch.Tensor, dims: int, divisor: int, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, C, *spatial]`` with every spatial size a
    multiple of ``divisor``."""
    if x.dim() != dims + 2:
        raise ValueError(f"{name} expects a [B, C, {dims} spatial axes] tensor, got shape {tuple(x.shape)}.")
    bad = [s for s in x.shape[2:] if s % divisor]
    if bad:
        raise ValueError(
            f"{name} needs every spatial size divisible by {divisor}, got {tuple(x.shape[2:])}; "
            f"pad or crop the input (or use a sliding window whose size is a multiple of {divisor})."
        )


class _SizeChecked:
    """Mixin: check the input size before the package's forward."""

    dims: int

    @property
    def divisor(self) -> int:
        return 2 ** len(self.encoder.encoding_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.dims, self.divisor, type(self).__name__)
        return super().forward(x)


class UNet2DBaseline(_SizeChecked, UNet2D):
    """``unet.UNet2D`` with default settings and same-size padding; returns logits."""

    dims = 2


class UNet3DBaseline(_SizeChecked, UNet3D):
    """``unet.UNet3D`` with default settings and same-size padding; returns logits."""

    dims = 3


def build_unet(dims: int, input_channels: int, output_channels: int) -> nn.Module:
    """The default-configuration package UNet mapping ``[B, IN, *spatial]`` to logits
    ``[B, OUT, *spatial]`` (no activation)."""
    classes = {2: UNet2DBaseline, 3: UNet3DBaseline}
    if dims not in classes:
        raise ValueError(f"The UNet baseline supports 2 or 3 spatial dimensions, got {dims}.")
    return classes[dims](in_channels=input_channels, out_classes=output_channels, padding=1)
