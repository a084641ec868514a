"""Baseline segmentation networks compared with the NCAs, and patch-wise inference for them.

``BASELINES`` maps a name to a builder ``(dims, input_channels, output_channels) -> nn.Module``
whose module returns logits ``[B, OUT, *spatial]`` and has a ``divisor`` attribute: every
spatial size of its input must be a multiple of it. ``unet`` gives logits for independent
sigmoids (one per class, as the NCAs); the others give softmax logits whose classes include
the background. ``meunet_cascade`` builds an untrained stage 1 (a meU-net) inside the cascade.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .meunet import MeUNet, MeUNetCascade, UNetBody, class_weights, meunet_loss, meunet_training_loss
from .segresmamba import MambaBlock, SegResMamba, TriOrientedMamba
from .mamba_scan import selective_scan, selective_scan_chunked, selective_scan_sequential
from .sliding_window import sliding_window_predict
from .unet import build_unet


def build_meunet(dims: int, input_channels: int, output_channels: int) -> nn.Module:
    """meU-net (softmax classes, background included)."""
    return MeUNet(input_channels, output_channels, dims=dims)


def build_meunet_cascade(dims: int, input_channels: int, output_channels: int) -> nn.Module:
    """meU-net stage 1 + full-level post-concatenation U-net stage 2."""
    stage1 = MeUNet(input_channels, output_channels, dims=dims)
    return MeUNetCascade(stage1, input_channels, output_channels, mode="post_concat", dims=dims)


def build_segresmamba(dims: int, input_channels: int, output_channels: int) -> nn.Module:
    """SegResMamba with its Tri-oriented Mamba blocks."""
    return SegResMamba(input_channels, output_channels, dims=dims, use_mamba=True)


def build_segresnet(dims: int, input_channels: int, output_channels: int) -> nn.Module:
    """The same network without Mamba."""
    return SegResMamba(input_channels, output_channels, dims=dims, use_mamba=False)


BASELINES: dict[str, Callable[[int, int, int], nn.Module]] = {
    "unet": build_unet,
    "meunet": build_meunet,
    "meunet_cascade": build_meunet_cascade,
    "segresmamba": build_segresmamba,
    "segresnet": build_segresnet,
}

__all__ = [
    "BASELINES",
    "MambaBlock",
    "MeUNet",
    "MeUNetCascade",
    "SegResMamba",
    "TriOrientedMamba",
    "UNetBody",
    "build_meunet",
    "build_meunet_cascade",
    "build_segresmamba",
    "build_segresnet",
    "build_unet",
    "class_weights",
    "meunet_loss",
    "meunet_training_loss",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_sequential",
    "sliding_window_predict",
]
