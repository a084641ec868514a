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

from dataclasses import dataclass

import torch
from torch import nn
from unet import UNet2D, UNet3D

from ...core.schema import setting
from ..config import ModelConfig
from ..registry import register_model


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


@dataclass
class UNetConfig(ModelConfig):
    """The package UNet; the sizes default to the package's default configuration."""

    num_encoding_blocks: int | None = setting(None, kind="int", lo=2, hi=8,
                                              help="encoder depth (default: the package's, 5 in 2D and 4 in 3D)")
    out_channels_first_layer: int | None = setting(None, kind="int", lo=1, hi=1024,
                                                   help="channels of the first layer (default: the package's, 64 / 32)")


@register_model("unet", config=UNetConfig, output="sigmoid", predictor="window")
def build_unet(cfg: UNetConfig) -> nn.Module:
    """The package UNet mapping ``[B, IN, *spatial]`` to logits ``[B, OUT, *spatial]`` (no
    activation); one sigmoid per class, as the NCAs."""
    classes = {2: UNet2DBaseline, 3: UNet3DBaseline}
    sizes = {k: v for k, v in (("num_encoding_blocks", cfg.num_encoding_blocks),
                               ("out_channels_first_layer", cfg.out_channels_first_layer)) if v is not None}
    return classes[cfg.dims](in_channels=cfg.input_channels, out_classes=cfg.output_channels, padding=1, **sizes)
