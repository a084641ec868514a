"""Run a multi-level NCA over a whole input in one pass, with little memory.

All levels' states live in ONE buffer of (about) the finest state's size. Level l+1's state
lies at the tail of the region level l will occupy; upsampling walks the coarse state slab by
slab from the front, so every slab is read before it is overwritten (``_upsample_in_place``).
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

from ..models.pyramid import image_pyramid, level_shapes, upsample

LevelCallback = Callable[[int, float], None]
Region = Sequence[slice]


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


def _upsample_in_place(src: torch.Tensor, dst: torch.Tensor, factor: Sequence[int], chunk_bytes: int = 1 << 23) -> None:
    """Nearest-upsample channels-last ``src`` into ``dst``. Both may view one buffer with ``src``
    at the tail of the region ``dst`` grows into. Walking the first axis forward, the output of
    source rows ``[0, k)`` ends before source row ``k`` begins (``buffer_layout`` guarantees it),
    so copying a chunk of source rows out before writing their output is always safe."""
    f0, n0 = factor[0], dst.shape[1]
    row_bytes = max(1, src[0, :1].numel() * src.element_size())
    rows = max(1, chunk_bytes // (row_bytes * math.prod(factor)))   # the upsampled chunk stays within chunk_bytes
    for b in range(src.shape[0]):
        for y in range(0, src.shape[1], rows):
            y1 = min(y + rows, src.shape[1])
            o0, o1 = y * f0, min(y1 * f0, n0)
            if o0 >= o1:
                continue
            chunk = src[b, y:y1].clone()
            dst[b, o0:o1] = upsample(chunk.unsqueeze(0), factor, (o1 - o0, *dst.shape[2:-1]), channels_last=True)[0]


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
    shapes = source.shapes
    offsets, sizes, total = buffer_layout(shapes, c.factors, source.batch, c.channels)
    base = offsets[stop_level]
    buf = torch.empty(total - base, dtype=state_dtype, device=device)
    prev = None
    for level in range(c.levels - 1, stop_level - 1, -1):
        t0 = time.perf_counter()
        start = offsets[level] - base
        view = buf[start: start + sizes[level]].view(source.batch, *shapes[level], c.channels)
        if prev is None:
            view.zero_()
        else:
            _upsample_in_place(prev, view, c.factors[level])
        source.write_inputs(level, view)
        keep = keeps_perception(model, shapes, level, stop_level, source.batch, buf.element_size(),
                                torch.device(device).type)
        kept = buf[:start].view(torch.uint8)[:keep].view(torch.float32) if keep else None
        run(model.backbones[level], view, c.steps[level], seed, level, kept=kept)
        kept = None
        prev = view
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        if on_level is not None:
            on_level(level, time.perf_counter() - t0)
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
