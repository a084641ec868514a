"""A forward pass of a multi-level NCA that keeps every level's output logits.

It follows ``OctreeNCA.forward`` step for step (same pyramid, upsampling, seeds and crop
rule), so its finest output equals the model's own forward. The crop is chosen beforehand
(:func:`random_crop`), which lets two stochastic passes share it.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..models.octree import OctreeNCA
from ..models.pyramid import image_pyramid, upsample

Crop = tuple[int, tuple[slice, ...]]   # (level, region at that level)


def random_crop(model: OctreeNCA, spatial_shape: Sequence[int], patch: Sequence[int] | None, crop_levels: int,
                generator: torch.Generator | None = None) -> Crop | None:
    """A random crop at level ``crop_levels − 1`` whose level-0 footprint has size ``patch``
    (the rule ``OctreeNCA.forward`` trains with); ``None`` when no crop is asked for."""
    if not patch or not crop_levels:
        return None
    level = crop_levels - 1
    region = model.random_region(model.level_shapes(spatial_shape), level, patch, generator)
    return level, tuple(region)


def forward_levels(model: OctreeNCA, image: torch.Tensor, *, seed: int,
                   crop: Crop | None = None) -> tuple[list[torch.Tensor], tuple[slice, ...] | None]:
    """Output logits ``[B, OUT, *spatial]`` of every level (finest first) and the level-0
    region the finest one covers (``None`` for the whole image)."""
    model.check_image(image)
    c = model.config
    shapes = model.level_shapes(image.shape[2:])
    pyramid = image_pyramid(image, c.factors, c.pyramid)
    out_ch = slice(c.input_channels, c.input_channels + c.output_channels)
    top = c.levels - 1
    outputs: list[torch.Tensor | None] = [None] * c.levels
    region: list[slice] | None = None
    state = None
    for level in range(top, -1, -1):
        inp = pyramid[level]
        if level == top:
            state = inp.new_zeros((inp.shape[0], c.channels, *shapes[level]))
        else:
            size = [s.stop - s.start for s in region] if region is not None else shapes[level]
            state = upsample(state, c.factors[level], size)
        if crop is not None and level == crop[0]:
            region = list(crop[1])
            state = state[(slice(None), slice(None), *region)]
        if region is not None:
            inp = inp[(slice(None), slice(None), *region)]
        state = torch.cat([inp.to(state.dtype), state[:, c.input_channels:]], dim=1)
        origin = [s.start for s in region] if region is not None else None
        state = model.backbones[level].run(state, c.steps[level], seed=seed, level=level, origin=origin)
        outputs[level] = state[:, out_ch]
        if level > 0 and region is not None:
            f = c.factors[level - 1]
            region = [slice(s.start * k, min(s.stop * k, n)) for s, k, n in zip(region, f, shapes[level - 1])]
    return outputs, (tuple(region) if region is not None else None)
