"""Fused NCA step: one kernel per step that needs no memory beyond the state.

The cell update lives in ``cuda/nca_cell.h`` and is shared by a CPU launcher (OpenMP,
updates a channels-last state in place, band by band) and a CUDA launcher (double
buffered). Both compute exactly ``BackboneNCA.step`` with the fire mask of
``nca_cli.core.firemask``; arithmetic is float32. Every backbone variant runs fused: depthwise or
two full perception convolutions, any odd kernel up to 9, fc1 to C - IN or to all C
channels, and BatchNorm with the current batch's statistics. BatchNorm costs a second sweep
per step, not memory: a first sweep over every cell of the batch gives each hidden unit's
sum of pre-activations and of their squares in double precision, then the update sweep
normalises with the mean and biased variance (eps 1e-5) exactly as torch does; the hidden
layer is never stored. On the CPU the first sweep takes the moments of the perception
features (their sums and pairwise products, about a reference cell, in groups of about 32 K
cells) instead of fc0 per cell, and turns them into the same sums in double
(``nca::moment_sums``): FEAT (FEAT + 1) / 2 multiply-adds per cell instead of FEAT x hidden.

Precision: with float32 storage the fused CPU step matches ``BackboneNCA.run`` to about
1e-6 (only the summation order differs; for BatchNorm the statistics are double sums, at
least as accurate as torch's). With float16 / bfloat16 storage the state is rounded to
nearest even after every step, as ``BackboneNCA.run(..., state_dtype=...)`` does; an
intermediate that lies within float32 rounding noise of a half-way point may round the
other way, so single elements can differ by one unit in the last place of the storage type
(2^-10 relative for float16, 2^-7 for bfloat16), and those differences propagate through
later steps. How fast they propagate depends on the model: with kernel 3 and no
normalisation over 90 % of the elements stay bit-identical for 10 steps, but a flipped
element changes every cell within the kernel's reach in the next step (343 cells for a
7x7x7 kernel) and, through the batch mean and variance of BatchNorm, every cell of the
batch, while the dynamics amplify small differences (about 1.2x per step for the random
weights of the tests). After 10 steps of a 3D kernel-7 BatchNorm model at fire rate 1.0
about 80 % of the elements are bit-identical and the largest difference is about 5 units
in the last place, relative to max(|x|, 1). This is a property of the rounded dynamics, not
of the kernel: torch evaluating the same model in float64 departs from its own float32
result by as much (``tests/kernels/test_variants_cpu.py``). After up to 4 steps every
variant stays within 4 units with over 90 % bit-identical.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import torch
from torch import nn

from ..core.choices import IMPLS
from ..core.firemask import threshold
from ..core.seeds import MASK32
from ..models.backbone import BackboneNCA
from .build import NORMALIZATIONS, PERCEPTIONS, STORAGES, KernelBuildError, Shape, kernel_module

_available: dict[str, bool] = {}
_shape_ok: dict[tuple[str, Shape], bool] = {}


def _kind(device: torch.device | str) -> str:
    return torch.device(device).type


def _warn_unavailable(kind: str, cause: str) -> None:
    warnings.warn(f"Fused NCA kernels unavailable on {kind} ({cause}); using the PyTorch path.",
                  RuntimeWarning, stacklevel=3)


def fused_available(device: torch.device | str = "cpu") -> bool:
    """Whether the fused kernels work on ``device``'s type; builds them on first use.

    The answer is cached per device type. On failure (no compiler, no ninja, no CUDA
    toolkit, compile error) one RuntimeWarning names the cause and False is returned.
    """
    kind = _kind(device)
    if kind not in _available:
        try:
            kernel_module(kind)
            _available[kind] = True
        except Exception as exc:  # any build or load failure means: use the PyTorch path
            cause = str(exc) if isinstance(exc, KernelBuildError) else f"{type(exc).__name__}: {exc}"
            _warn_unavailable(kind, cause)
            _available[kind] = False
    return _available[kind]


def backbone_shape(backbone: BackboneNCA) -> Shape:
    """``(dims, channels, hidden, input_channels, kernel_size, perception, normalization)`` of a
    backbone: what its compiled kernel depends on (perception and normalization as the codes of
    ``build.PERCEPTIONS`` / ``build.NORMALIZATIONS``; fc1_all_channels changes only the packing)."""
    return Shape(backbone.dims, backbone.channels, backbone.hidden, backbone.input_channels, backbone.kernel_size,
                 PERCEPTIONS[backbone.perception], NORMALIZATIONS[backbone.normalization])


def _shape_available(kind: str, shape: Shape) -> bool:
    key = (kind, shape)
    if key not in _shape_ok:
        try:
            kernel_module(kind, shape)
            _shape_ok[key] = True
        except Exception as exc:  # on-demand build of an uncommon shape failed
            _warn_unavailable(kind, f"shape {shape}: {exc}")
            _shape_ok[key] = False
    return _shape_ok[key]


def resolve_impl(impl: str, backbones: BackboneNCA | Iterable[BackboneNCA], device: torch.device | str) -> str:
    """Pick "fused" or "torch" for ``impl`` in {"auto", "fused", "torch"}.

    "auto" gives "fused" when the kernels build on ``device`` and every backbone is
    fusable, else "torch"; "fused" falls back to "torch" with a warning when it cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    models = [backbones] if isinstance(backbones, nn.Module) else list(backbones)
    blocked = [m for m in models if not m.fusable]
    if blocked:
        if impl == "fused":
            warnings.warn(f"Fused NCA kernels do not implement {blocked[0].extra_repr()}; using the PyTorch path.",
                          RuntimeWarning, stacklevel=2)
        return "torch"
    kind = _kind(device)
    if not fused_available(kind):
        return "torch"
    for shape in sorted({backbone_shape(m) for m in models}):
        if not _shape_available(kind, shape):
            return "torch"
    return "fused"


def pack_weights(backbone: BackboneNCA, device: torch.device | str) -> torch.Tensor:
    """The backbone's weights as the one float32 vector ``cuda/nca_cell.h`` reads (see ``nca::Cfg``):
    the perception conv(s) with bias, fc0 with bias, BatchNorm's weight and bias, then the
    rows of fc1 whose output is used (all but the input channels' when fc1 has C outputs)."""
    parts = [backbone.p0.weight, backbone.p0.bias]
    if backbone.perception == "full2":
        parts += [backbone.p1.weight, backbone.p1.bias]
    parts += [backbone.fc0.weight, backbone.fc0.bias]
    if backbone.normalization == "batch":
        norm = backbone.norm
        ones = torch.ones(backbone.hidden, device=backbone.fc0.weight.device)
        parts += [ones if norm.weight is None else norm.weight,
                  torch.zeros_like(ones) if norm.bias is None else norm.bias]
    fc1 = backbone.fc1.weight
    parts.append(fc1[backbone.input_channels:] if backbone.fc1_all_channels else fc1)
    flat = torch.cat([p.detach().reshape(-1).to(device=device, dtype=torch.float32) for p in parts])
    return flat.contiguous()


# -- what the CPU launcher allocates: its own sizes, exported by cuda/nca_cpu.cpp ---------------

def cpu_launcher():
    """The default CPU library, whose ``constants()``, ``statistics_groups``, ``strip_rows``,
    ``keep_floats`` and ``workspace_bytes`` give the launcher's sizes (cuda/nca_cpu.h);
    KernelBuildError when the kernels cannot be built (then nothing runs fused)."""
    return kernel_module("cpu")


def statistics_groups(shape: Sequence[int]) -> int:
    """Statistics groups per batch item of a BatchNorm step on the CPU for a spatial ``shape``
    (each holds 2 x hidden double sums between the two sweeps of a step)."""
    return cpu_launcher().statistics_groups(int(shape[0]), max(1, math.prod(int(n) for n in shape[1:])))


def strip_rows(rows: int, row_bytes: int, radius: int) -> int:
    """Rows per strip of the CPU launcher's 3D sweep (``rows`` when a plane is swept whole), for
    float32 ring rows of ``row_bytes`` and a kernel of radius ``radius``."""
    return cpu_launcher().strip_rows(int(rows), int(row_bytes), int(radius))


def _outer_rows_width(shape: Sequence[int]) -> tuple[int, int, int]:
    """(planes of the outer axis, rows per plane, cells per row) of a spatial ``shape``."""
    shape = [int(n) for n in shape]
    return shape[0], (shape[1] if len(shape) == 3 else 1), shape[-1]


def kept_perception_bytes(backbone: BackboneNCA, shape: Sequence[int], batch: int = 1) -> int:
    """Bytes of the kept perception of ``fused_run(..., keep_perception=True)`` on a state of
    spatial ``shape`` (cuda/nca_cpu.h, keep_floats): the float32 conv outputs of every cell,
    rows padded to whole SIMD blocks; 0 without BatchNorm. Without a ``keep_buffer`` the
    launcher allocates it in whole 2 MiB pages (alloc_large)."""
    if backbone.normalization != "batch":
        return 0
    convs = 2 if backbone.perception == "full2" else 1
    return 4 * batch * cpu_launcher().keep_floats(*_outer_rows_width(shape), convs * backbone.channels)


def workspace_bytes(backbone: BackboneNCA, shape: Sequence[int], batch: int, storage_bytes: int,
                    threads: int | None = None) -> int:
    """Bytes one ``fused_run`` of ``backbone`` on the CPU allocates beside a state of spatial
    ``shape`` (cuda/nca_cpu.cpp, workspace_bytes: every thread's ring, halo and saved rows, and
    BatchNorm's moment buffers and group sums), the kept perception excepted."""
    sh = backbone_shape(backbone)
    return cpu_launcher().workspace_bytes(sh.dims, sh.channels, sh.hidden, sh.kernel_size, sh.perception,
                                          sh.normalization, int(storage_bytes), int(batch),
                                          [int(n) for n in shape], int(threads or torch.get_num_threads()))


def to_channels_last(state: torch.Tensor) -> torch.Tensor:
    """``[B, C, *spatial]`` -> contiguous ``[B, *spatial, C]`` (a copy)."""
    return state.movedim(1, -1).contiguous()


def from_channels_last(state: torch.Tensor) -> torch.Tensor:
    """``[B, *spatial, C]`` -> contiguous ``[B, C, *spatial]`` (a copy)."""
    return state.movedim(-1, 1).contiguous()


def fused_run(
    backbone: BackboneNCA,
    state: torch.Tensor,
    steps: int,
    *,
    seed: int = 0,
    level: int = 0,
    origin: Sequence[int] | None = None,
    threads: int | None = None,
    keep_perception: bool = False,
    keep_buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``steps`` steps of ``backbone`` on a channels-last ``[B, *spatial, C]`` state.

    Same result as ``BackboneNCA.run`` (step indices 0..steps-1 in the fire mask).
    ``state`` must be contiguous, float32 / float16 / bfloat16, on the CPU or a CUDA device;
    it is updated in place and returned. ``origin``: absolute coordinate of the first cell
    (tiles). ``threads``: CPU threads, default ``torch.get_num_threads()``.
    ``keep_perception`` (CPU, BatchNorm): the statistics sweep of a step keeps its conv outputs
    for the update sweep instead of computing them again, which takes ``kept_perception_bytes``
    more memory during the run; the result is the same, bit for bit. ``keep_buffer``: a
    contiguous, 64-byte aligned float32 CPU tensor of at least that many bytes to keep it in
    (its contents are overwritten); without one the launcher allocates its own for the call.
    """
    if not backbone.fusable:
        raise ValueError(f"backbone is not fusable: {backbone.extra_repr()}")
    dims, channels = backbone.dims, backbone.channels
    if state.dim() != dims + 2 or state.shape[-1] != channels:
        raise ValueError(f"expected a channels-last [B, {'D, ' if dims == 3 else ''}H, W, {channels}] state, "
                         f"got shape {tuple(state.shape)}")
    if state.dtype not in STORAGES:
        raise TypeError(f"state dtype must be float32, float16 or bfloat16, got {state.dtype}")
    if not state.is_contiguous():
        raise ValueError("state must be contiguous (use to_channels_last)")
    origin = [0] * dims if origin is None else [int(o) for o in origin]
    if len(origin) != dims:
        raise ValueError(f"origin needs {dims} entries, got {len(origin)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    kind = state.device.type
    shape = backbone_shape(backbone)
    try:
        mod = kernel_module(kind, shape)
    except KernelBuildError as exc:
        raise RuntimeError(f"fused kernels unavailable: {exc}") from exc
    weights = pack_weights(backbone, state.device)
    args = (weights, *shape, int(steps), int(seed) & MASK32, int(level) & MASK32, origin,
            threshold(backbone.fire_rate))
    if kind == "cpu":
        kept = keep_buffer if keep_perception and keep_buffer is not None else torch.empty(0)
        mod.run(state, *args, int(threads) if threads else torch.get_num_threads(), bool(keep_perception), kept)
        return state
    return mod.run(state, *args)
