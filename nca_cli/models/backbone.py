"""One NCA: the cell-update rule, as a PyTorch reference.

One step, for every cell at once (REFERENCE "Backbone NCA")::

    p     = perceive(s)                       # depthwise k^d conv with bias, reflect borders
    h     = relu(norm(fc0(concat[s, p])))     # fc0: 2C -> hidden, with bias
    delta = fc1(h)                            # hidden -> C - IN, no bias, zero-initialised
    s[IN:] += fire * delta                    # one fire value per cell (see nca_cli.core.firemask)

The fused kernels in ``cuda/nca_cell.h`` compute the same function.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.firemask import fire_mask
from .weights import Randomizable

NORMALIZATIONS = (None, "batch")
PERCEPTIONS = ("depthwise", "full2")
POINTWISE_LIMIT = 1 << 31  # bytes of one pointwise-layer output computed in one call


def reflect_index(n: int, pad: int, device=None) -> torch.Tensor:
    """Source index for each of ``n + 2*pad`` padded positions, reflecting without repeating
    the edge (-1 reads 1, n reads n-2), folded as often as needed; a size-1 axis reads 0."""
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def reflect_pad(x: torch.Tensor, pad: int, dims: int) -> torch.Tensor:
    """Reflect-pad the last ``dims`` axes of ``x`` by ``pad`` on each side."""
    if pad == 0:
        return x
    if all(s > pad for s in x.shape[-dims:]):
        return F.pad(x, [pad] * (2 * dims), mode="reflect")
    for axis in range(x.dim() - dims, x.dim()):
        x = x.index_select(axis, reflect_index(x.shape[axis], pad, x.device))
    return x


class BackboneNCA(Randomizable, nn.Module):
    """A single Neural Cellular Automaton on a ``[B, C, *spatial]`` state.

    Args:
        dims: 2 or 3 spatial dimensions.
        channels: state channels C (inputs, logits and hidden channels together).
        hidden: width of the hidden layer.
        input_channels: IN, the image channels kept constant at the front of the state.
        kernel_size: perception kernel size (odd).
        fire_rate: probability that a cell updates in a step (1.0: every cell, every step).
        normalization: ``None`` or ``"batch"`` (BatchNorm on the hidden layer, always with
            the current batch's statistics, as Med-NCA and M3D-NCA do).
        perception: ``"depthwise"`` (one depthwise conv, OctreeNCA/Med-NCA/M3D-NCA) or
            ``"full2"`` (two full C->C convs, the Med-NCA of the VWSL paper).
        fc1_all_channels: fc1 produces all C channels (Med-NCA, 2-level M3D-NCA); the update
            of the input channels is then discarded. Default: C - IN outputs.
    """

    def __init__(
        self,
        dims: int,
        channels: int = 16,
        hidden: int = 64,
        input_channels: int = 1,
        kernel_size: int = 3,
        fire_rate: float = 0.5,
        normalization: str | None = None,
        perception: str = "depthwise",
        fc1_all_channels: bool = False,
    ):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if not 0 < input_channels < channels:
            raise ValueError(f"input_channels must lie in 1..{channels - 1}, got {input_channels}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if perception not in PERCEPTIONS:
            raise ValueError(f"perception must be one of {PERCEPTIONS}, got {perception!r}")
        if not 0.0 <= fire_rate <= 1.0:
            raise ValueError(f"fire_rate must lie in [0, 1], got {fire_rate}")
        self.dims = dims
        self.channels = channels
        self.hidden = hidden
        self.input_channels = input_channels
        self.kernel_size = kernel_size
        self.fire_rate = float(fire_rate)
        self.normalization = normalization
        self.perception = perception
        self.fc1_all_channels = fc1_all_channels

        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        if perception == "depthwise":
            self.p0 = conv(channels, channels, kernel_size, groups=channels, bias=True)
            perceived = 2 * channels
        else:
            self.p0 = conv(channels, channels, kernel_size, bias=True)
            self.p1 = conv(channels, channels, kernel_size, bias=True)
            perceived = 3 * channels
        self.fc0 = nn.Linear(perceived, hidden, bias=True)
        if normalization == "batch":
            bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
            self.norm = bn(hidden, track_running_stats=False)
        else:
            self.norm = None
        out = channels if fc1_all_channels else channels - input_channels
        self.fc1 = nn.Linear(hidden, out, bias=False)
        nn.init.zeros_(self.fc1.weight)

    @property
    def fusable(self) -> bool:
        """True when the fused kernels implement this backbone exactly: every perception,
        normalisation and fc1 variant, kernels up to 9 (the CPU kernel shifts SIMD lanes by up
        to kernel_size // 2, and a vector holds at least 4 lanes); BatchNorm as constructed
        here (batch statistics, eps 1e-5)."""
        if self.kernel_size > 9:
            return False
        if self.normalization is None:
            return self.norm is None
        return self.norm is not None and not self.norm.track_running_stats and self.norm.eps == 1e-5

    def _pointwise(self, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
        w = layer.weight.reshape(*layer.weight.shape, *([1] * self.dims))
        conv = F.conv2d if self.dims == 2 else F.conv3d
        out_bytes = x.numel() // x.shape[1] * w.shape[0] * x.element_size()
        if out_bytes < POINTWISE_LIMIT or x.shape[2] == 1:
            return conv(x, w, layer.bias)
        # oneDNN's CPU convolution fails on outputs of 4 GiB and more: split the first spatial axis.
        parts = -(-out_bytes // POINTWISE_LIMIT)
        return torch.cat([conv(c, w, layer.bias) for c in x.chunk(parts, dim=2)], dim=2)

    def delta(self, state: torch.Tensor) -> torch.Tensor:
        """The update every cell would apply (before the fire mask), ``[B, C-IN, *spatial]``."""
        padded = reflect_pad(state, self.kernel_size // 2, self.dims)
        if self.perception == "depthwise":
            feats = torch.cat([state, self.p0(padded)], dim=1)
        else:
            feats = torch.cat([state, self.p0(padded), self.p1(padded)], dim=1)
        del padded
        h = self._pointwise(feats, self.fc0)
        del feats
        if self.norm is not None:
            h = self.norm(h)
        h = torch.relu(h)
        d = self._pointwise(h, self.fc1)
        if self.fc1_all_channels:
            d = d[:, self.input_channels:]
        return d

    def step(
        self,
        state: torch.Tensor,
        *,
        seed: int = 0,
        level: int = 0,
        step: int = 0,
        origin: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """One NCA step; returns a new state. ``origin``: absolute coordinate of the first cell."""
        d = self.delta(state)
        if self.fire_rate < 1.0:
            m = fire_mask(state.shape[2:], seed=seed, level=level, step=step, fire_rate=self.fire_rate,
                          origin=origin, device=state.device)
            d = d * m.to(d.dtype)
        inp = self.input_channels
        return torch.cat([state[:, :inp], state[:, inp:] + d], dim=1)

    def run(
        self,
        state: torch.Tensor,
        steps: int,
        *,
        seed: int = 0,
        level: int = 0,
        origin: Sequence[int] | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Run ``steps`` steps on a ``[B, C, *spatial]`` state and return the final state.

        With ``state_dtype`` (e.g. ``torch.float16``) the state is rounded to that type after
        every step, as the fused kernels store it; arithmetic stays in the weights' type.
        """
        if state.dim() != self.dims + 2 or state.shape[1] != self.channels:
            raise ValueError(f"expected a [B, {self.channels}, {'D, ' if self.dims == 3 else ''}H, W] state, "
                             f"got shape {tuple(state.shape)}")
        work = state.to(self.fc0.weight.dtype)
        for t in range(steps):
            work = self.step(work, seed=seed, level=level, step=t, origin=origin)
            if state_dtype is not None and state_dtype != work.dtype:
                work = work.to(state_dtype).to(self.fc0.weight.dtype)
        return work

    def extra_repr(self) -> str:
        return (f"dims={self.dims}, channels={self.channels}, hidden={self.hidden}, in={self.input_channels}, "
                f"kernel={self.kernel_size}, fire_rate={self.fire_rate}, norm={self.normalization}, "
                f"perception={self.perception}")
