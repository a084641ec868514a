"""Run a multi-level NCA over a whole input in one pass, with little memory.

All levels' states live in ONE buffer of (about) the finest state's size. Level l+1's state
lies at the tail of the region level l will occupy; upsampling walks the coarse state slab by
slab from the front, so every slab is read before it is overwritten (``models.schedule.upsample``
into the shared buffer). The levels are those of the model's ``models.schedule.LevelSchedule``.
No level ever has two copies of its state, and each level's state is gone the moment the
next one exists. The step itself is pluggable: the fused kernel works in place on the
channels-last view; the PyTorch reference step runs on a channels-first copy.

A coarse BatchNorm level on the CPU keeps its perception between the two sweeps of a step
(``keeps_perception``) in the part of the shared buffer that only finer levels use later, so it
costs no memory those levels do not take anyway: it saves computing every convolution twice.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Protocol, Sequence

import torch

from ..models.pyramid import image_pyramid, level_shapes
from ..models.schedule import LevelSchedule

LevelCallback = Callable[[int, float], None]
Region = Sequence[slice]
CHUNK_BYTES = 1 << 23   # largest band of a state upsampled at once (models.schedule.upsample)


class PyramidSource(Protocol):
    """Provides the input channels of every level."""

    batch: int
    shapes: list[tuple[int, ...]]

    def write_inputs(self, level: int, state: torch.Tensor, region: Region | None = None) -> None:
        """Write the level's image (restricted to ``region``) into ``state[..., :IN]``
        (channels-last ``[B, *shape, C]``)."""


class TensorSource:
    """Pyramid source for an in-memory ``[B, IN, *spatial]`` float image."""

    def __init__(self, image: torch.Tensor, factors: Sequence[Sequence[int]], mode: str, keep: bool = False):
        self.batch = image.shape[0]
        self.shapes = level_shapes(image.shape[2:], factors)
        self.levels = image_pyramid(image, factors, mode)
        self.keep = keep

    def write_inputs(self, level: int, state: torch.Tensor, region: Region | None = None) -> None:
        img = self.levels[level]
        if region is not None:
            img = img[(slice(None), slice(None), *region)]
        state[..., : img.shape[1]].copy_(img.movedim(1, -1))
        if level > 0 and not self.keep:
            self.levels[level] = None  # coarse inputs are used once


def step_runner(impl: str) -> Callable:
    """``run(backbone, state_cl, steps, seed, level, origin)`` for the chosen implementation;
    it updates the channels-last ``state_cl`` in place."""
    if impl == "fused":
        from ..kernels import fused_run

        def run_fused(backbone, state, steps, seed, level, origin=None, kept=None):
            fused_run(backbone, state, steps, seed=seed, level=level, origin=origin,
                      keep_perception=kept is not None, keep_buffer=kept)
        return run_fused

    def run_torch(backbone, state, steps, seed, level, origin=None, kept=None):
        dtype = state.dtype
        cf = state.movedim(-1, 1).to(backbone.fc0.weight.dtype)
        out = backbone.run(cf, steps, seed=seed, level=level, origin=origin,
                           state_dtype=None if dtype == torch.float32 else dtype)
        del cf
        state.copy_(out.movedim(1, -1))
    return run_torch


def buffer_layout(shapes: Sequence[Sequence[int]], factors: Sequence[Sequence[int]], batch: int, channels: int):
    """Offsets (elements) of every level's state in the shared buffer, and the buffer size."""
    sizes = [batch * math.prod(s) * channels for s in shapes]
    offsets = [0]
    total = sizes[0]
    for level in range(len(shapes) - 1):
        region = math.prod(factors[level]) * sizes[level + 1]   # what upsampling into `level` may touch
        total = max(total, offsets[level] + region)
        offsets.append(offsets[level] + region - sizes[level + 1])
    total = max(total, offsets[-1] + sizes[-1])
    return offsets, sizes, total


def buffer_bytes(shapes: Sequence[Sequence[int]], factors: Sequence[Sequence[int]], channels: int, itemsize: int,
                 from_level: int = 0, batch: int = 1) -> int:
    """Bytes of the shared state buffer from level ``from_level``'s offset on: what ``drive``
    allocates for a run down to ``from_level``; on the CPU, where the system commits a page on
    its first write, also what is resident of a longer run while ``from_level`` runs."""
    offsets, _, total = buffer_layout(shapes, factors, batch, channels)
    return (total - offsets[from_level]) * itemsize


def keeps_perception(model, shapes: Sequence[Sequence[int]], level: int, stop_level: int, batch: int,
                     itemsize: int, device_type: str) -> int:
    """Bytes level ``level`` keeps of its perception in a run down to ``stop_level`` (0: it keeps
    none). A BatchNorm level on the CPU keeps it at the front of the shared buffer, in pages only
    finer levels use later, when it fits there before the level's own state."""
    from ..kernels import kept_perception_bytes

    if device_type != "cpu" or level <= stop_level:
        return 0
    kept = kept_perception_bytes(model.backbones[level], shapes[level], batch)
    offsets, _, _ = buffer_layout(shapes, model.config.factors, batch, model.config.channels)
    free = (offsets[level] - offsets[stop_level]) * itemsize
    return kept if 0 < kept <= free else 0


@torch.inference_mode()
def drive(
    model,
    source: PyramidSource,
    *,
    impl: str = "fused",
    seed: int = 0,
    state_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    stop_level: int = 0,
    on_level: LevelCallback | None = None,
) -> torch.Tensor:
    """Run levels ``top .. stop_level``; returns that level's channels-last state
    ``[B, *shape, C]`` (a view into the shared buffer)."""
    c = model.config
    run = step_runner(impl)
    schedule = LevelSchedule.of(model, source.shapes[0])
    offsets, sizes, total = buffer_layout(schedule.shapes, c.factors, source.batch, c.channels)
    base = offsets[stop_level]
    buf = torch.empty(total - base, dtype=state_dtype, device=device)
    on_cuda = torch.device(device).type == "cuda"
    prev, coarse = None, None
    for level in schedule.walk(stop=stop_level):
        t0 = time.perf_counter()
        start = offsets[level.index] - base
        view = buf[start: start + sizes[level.index]].view(source.batch, *level.shape, c.channels)
        if prev is None:
            view.zero_()
        else:
            schedule.to_finer(prev, coarse, level, channels_last=True, out=view, chunk_bytes=CHUNK_BYTES)
        source.write_inputs(level.index, view)
        keep = keeps_perception(model, schedule.shapes, level.index, stop_level, source.batch, buf.element_size(),
                                torch.device(device).type) if impl == "fused" else 0
        kept = buf[:start].view(torch.uint8)[:keep].view(torch.float32) if keep else None
        run(model.backbones[level.index], view, level.steps, seed, level.index, kept=kept)
        kept = None
        prev, coarse = view, level
        if on_cuda:
            torch.cuda.synchronize()
        if on_level is not None:
            on_level(level.index, time.perf_counter() - t0)
    return prev


def predict_logits(
    model,
    image: torch.Tensor,
    *,
    seed: int = 0,
    impl: str = "auto",
    state_dtype: torch.dtype = torch.float32,
    on_level: LevelCallback | None = None,
) -> torch.Tensor:
    """Logits ``[B, OUT, *spatial]`` (float32) of an in-memory ``[B, IN, *spatial]`` image, any size.

    ``impl``: ``"torch"`` (the differentiable reference forward), ``"fused"`` (fused kernels,
    one shared state buffer) or ``"auto"`` (fused when the kernels run here). Runs under
    ``torch.inference_mode()`` with the model in eval mode."""
    from ..kernels import resolve_impl

    model.check_image(image)
    c = model.config
    with torch.inference_mode():
        chosen = resolve_impl(impl, list(model.backbones), image.device)
        image = image.to(next(model.parameters()).dtype)
        if chosen == "torch":
            was_training = model.training
            model.eval()
            try:
                logits, _ = model(image, seed=seed, state_dtype=None if state_dtype == torch.float32 else state_dtype)
            finally:
                model.train(was_training)
            return logits.float()
        source = TensorSource(image, c.factors, c.pyramid)
        state = drive(model, source, impl="fused", seed=seed, state_dtype=state_dtype, device=image.device,
                      on_level=on_level)
        return state[..., c.input_channels:c.input_channels + c.output_channels].movedim(-1, 1).float().contiguous()
