"""Predictors: one protocol for every model, whatever its way of predicting.

``predictor_for(model)`` gives an :class:`OctreePredictor` for the NCAs (the lean driver: one
shared state buffer, the fused kernel, exact tiles, ensembles) or a :class:`WindowPredictor`
for patch-wise networks (overlapping windows, band by band). Both offer:

- ``check(image, path)``: the input fits the model (dimensions, channels), in one sentence;
- ``logits(tensor)`` / ``masks(logits)``: an in-memory image to logits and foreground masks
  (validation, fine-tuning, the Python API);
- ``plan(shape, budget)``: the predicted peak memory of a run, refused in one sentence when
  it cannot fit;
- ``predict(image, plan)``: an opened input to a uint8 label map (0 = background, k = class k),
  band by band, with the run's facts for ``run_metadata.json``.

Everything runs under ``torch.inference_mode()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.choices import torch_dtype
from ..core.errors import NCAError
from ..io.normalize import Normalization, Normalizer
from ..models.registry import architecture_of
from .memory import (
    InputCost,
    Plan,
    forward_peak_bytes,
    plan_run,
    torch_step_cost,
    window_plan,
)
from .outputs import Ensemble, finish_segmentation, labels_of, masks_of
from .windows import (
    OVERLAP,
    label_array,
    logit_rows,
    window_size,
)

LevelCallback = Callable[[int], None]
TileCallback = Callable[[int, int], None]


@dataclass
class Prediction:
    """A label map and what the run did (merged into ``run_metadata.json``)."""

    labels: np.ndarray
    std: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def describe_kind(dims: int) -> str:
    return {2: "2D image or slide", 3: "3D volume or video"}[dims]


def check_input(config, image, path) -> None:
    """Raise ``NCAError`` unless ``image`` (an opened input) suits a model of ``config``."""
    if image.dims != config.dims:
        raise NCAError(f"{path} is a {describe_kind(image.dims)} but the model is {config.dims}D; "
                       f"use a {image.dims}D model for this input (or a {describe_kind(config.dims)} for this model).")
    if image.channels != config.input_channels:
        raise NCAError(f"{path} has {image.channels} channel(s) but the model takes {config.input_channels}; "
                       f"convert the input to {config.input_channels} channel(s) or use a matching model.")


class Predictor:
    """What every predictor shares: the model, its device and its output kind."""

    def __init__(self, model: nn.Module, *, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.arch = architecture_of(model)
        self.config = model.config

    def check(self, image, path) -> None:
        """Raise ``NCAError`` unless ``image`` (an opened input) suits the model."""
        check_input(self.config, image, path)

    def masks(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, OUT, *spatial]`` logits -> boolean foreground masks ``[B, K, *spatial]``."""
        return masks_of(logits, self.arch.softmax, axis=1)

    def normalizer(self, image, normalization: Normalization | None) -> Normalizer:
        norm = normalization or Normalization.for_dtype(image.dtype)
        return Normalizer.fit_image(norm, image)

    @staticmethod
    def cost(image, normalization: Normalization | None) -> InputCost:
        """What reading ``image`` costs (for the memory plan)."""
        return InputCost(image.channels, image.dtype.itemsize, normalization or Normalization.for_dtype(image.dtype),
                         image.kind)

    def prepare(self, image) -> None:
        """Measure, once per process, what the memory plan of ``image`` needs measured (call it
        before taking the run's baseline)."""


class OctreePredictor(Predictor):
    """Multi-level NCAs: single pass or exact tiles, one shared state buffer, ensembles."""

    def __init__(self, model: nn.Module, *, device="cpu", impl: str = "auto", state_dtype: str = "float16"):
        super().__init__(model, device=device)
        from ..kernels import resolve_impl

        self.impl = resolve_impl(impl, list(model.backbones), self.device)
        self.dtype_name = state_dtype
        self.dtype = torch_dtype(state_dtype)

    def logits(self, image: torch.Tensor, *, seed: int = 0, ensemble: int = 1) -> torch.Tensor:
        """Median over ``ensemble`` stochastic runs (seeds ``seed ..``) of the logits."""
        from .octree import predict_logits

        image = image.to(self.device)
        runs = Ensemble(ensemble, (image.shape[0], self.config.output_channels, *image.shape[2:]))
        for k in range(ensemble):
            runs.add(k, (), predict_logits(self.model, image, seed=seed + k, impl=self.impl, state_dtype=self.dtype))
        return runs.whole().median()

    def prepare(self, image) -> None:
        if self.impl == "torch":
            for bb in self.model.backbones:
                torch_step_cost(bb)

    def plan(self, image, *, budget: int, tiling: str = "auto", tile_size: int | None = None, ensemble: int = 1,
             baseline: int = 0, name: str = "the input", normalization: Normalization | None = None,
             want_std: bool = False) -> Plan:
        return plan_run(self.model, image.spatial_shape, dtype=self.dtype, impl=self.impl, budget=budget,
                        tiling=tiling, tile_size=tile_size, ensemble=ensemble, baseline=baseline, name=name,
                        cost=self.cost(image, normalization), want_std=want_std, device_type=self.device.type)

    @torch.inference_mode()
    def predict(self, image, plan: Plan, *, normalization: Normalization | None = None, seed: int = 0,
                ensemble: int = 1, want_std: bool = False, scratch: Path | None = None,
                on_run: Callable[[int, int, Plan], None] | None = None, on_level: LevelCallback | None = None,
                on_tile: TileCallback | None = None, keep_tile: Callable[[list[slice]], bool] | None = None) -> Prediction:
        """``keep_tile(core)`` False: a tile of a tiled plan is not computed (its labels stay 0)."""
        from .octree import drive
        from .sources import FileSource, band_rows
        from .tiled import run_tiled

        c = self.config
        shape = image.spatial_shape
        source = FileSource(image, c.factors, c.pyramid, self.dtype, self.device,
                            keep=plan.mode != "single" or ensemble > 1, normalizer=self.normalizer(image, normalization))
        labels = label_array(shape, scratch)
        acc = Ensemble(ensemble, (*shape, c.output_channels), dtype=torch.float16, device="cpu") if ensemble > 1 else None
        level_times: dict[int, float] = {}
        out_ch = slice(c.input_channels, c.input_channels + c.output_channels)

        def level_done(level, seconds):
            level_times[level] = level_times.get(level, 0.0) + seconds
            if on_level is not None:
                on_level(level)

        def emit(run, region, logits):
            if acc is not None:
                acc.add(run, region, logits)
            else:
                labels[tuple(region)] = labels_of(logits).cpu().numpy()

        for run in range(ensemble):
            if on_run is not None:
                on_run(run, ensemble, plan)
            if plan.mode == "single":
                state = drive(self.model, source, impl=self.impl, seed=seed + run, state_dtype=self.dtype,
                              device=self.device, on_level=level_done)
                rows = band_rows(shape)
                for r0 in range(0, shape[0], rows):
                    band = slice(r0, min(r0 + rows, shape[0]))
                    emit(run, [band], state[0, band][..., out_ch].float())
                del state
            else:
                for core, state in run_tiled(self.model, source, split=plan.split, tile=plan.tile, impl=self.impl,
                                             seed=seed + run, state_dtype=self.dtype, device=self.device,
                                             on_level=level_done, on_tile=on_tile, keep=keep_tile):
                    emit(run, core, state[0][..., out_ch].float())
                    del state  # the tile's memory goes before the next tile is computed
        del source
        std, nqm = None, None
        if acc is not None:
            std, nqm = finish_segmentation(acc, labels, want_std=want_std)
            del acc
        return Prediction(labels, std, {
            "impl": self.impl, "state_dtype": self.dtype_name, "mode": plan.mode, "split_level": plan.split,
            "tile": plan.tile, "tiles": plan.tiles, "predicted_peak_bytes": plan.predicted_bytes,
            "level_seconds": {str(k): v for k, v in sorted(level_times.items())}, "ensemble": ensemble, "nqm": nqm,
        })


class WindowPredictor(Predictor):
    """Patch-wise networks: overlapping windows of the training patch, blended, band by band."""

    def __init__(self, model: nn.Module, *, device="cpu", window: Sequence[int] | None = None):
        super().__init__(model, device=device)
        self.window = list(window) if window else None

    def _window(self, shape: Sequence[int]) -> tuple[int, ...]:
        return window_size(self.model, shape, self.window)

    def logits(self, image: torch.Tensor, *, seed: int = 0, ensemble: int = 1) -> torch.Tensor:
        """Blended window logits of a ``[B, IN, *spatial]`` image (deterministic: one run)."""
        out = []
        for b in range(image.shape[0]):
            x = image[b:b + 1]
            spatial = x.shape[2:]
            rows = [logits for _, _, logits in logit_rows(self.model, lambda r0, r1, x=x: x[:, :, r0:r1], spatial,
                                                            self._window(spatial), device=self.device)]
            out.append(torch.cat(rows, dim=1))
        return torch.stack(out)

    def masks(self, logits: torch.Tensor) -> torch.Tensor:
        return masks_of(logits, self.arch.softmax, axis=1)

    def prepare(self, image) -> None:
        forward_peak_bytes(self.model, self._window(image.spatial_shape), self.config.input_channels, self.device)

    def plan(self, image, *, budget: int, baseline: int = 0, name: str = "the input",
             normalization: Normalization | None = None, **_) -> Plan:
        shape = image.spatial_shape
        return window_plan(self.model, shape, self._window(shape), budget=budget, baseline=baseline, name=name,
                           cost=self.cost(image, normalization), device=self.device)

    @torch.inference_mode()
    def predict(self, image, plan: Plan, *, normalization: Normalization | None = None, scratch: Path | None = None,
                on_tile: TileCallback | None = None, **_) -> Prediction:
        shape = image.spatial_shape
        win = self._window(shape)
        normalize = self.normalizer(image, normalization)
        rest = tuple(slice(0, n) for n in shape[1:])

        def read(r0: int, r1: int) -> torch.Tensor:
            return torch.from_numpy(normalize(image.read((slice(r0, r1), *rest)))).movedim(-1, 0).unsqueeze(0)

        labels = label_array(shape, scratch)
        windows = [0]

        def tick(done: int, total: int) -> None:
            windows[0] = total
            if on_tile is not None:
                on_tile(done, total)

        for r0, r1, logits in logit_rows(self.model, read, shape, win, device=self.device, progress=tick,
                                         folder=scratch):
            labels[r0:r1] = labels_of(logits, self.arch.softmax, axis=0).numpy()
        return Prediction(labels, None, {
            "architecture": self.config.architecture, "impl": "sliding-window", "state_dtype": "float32",
            "mode": "sliding-window", "split_level": None, "tile": list(win), "tiles": windows[0], "overlap": OVERLAP,
            "predicted_peak_bytes": plan.predicted_bytes, "level_seconds": {}, "ensemble": 1, "nqm": None,
        })


def predictor_for(model: nn.Module, *, device="cpu", impl: str = "auto", state_dtype: str = "float16",
                  window: Sequence[int] | None = None) -> Predictor:
    """The predictor of ``model``'s architecture (see the module docstring)."""
    if architecture_of(model).predictor == "octree":
        return OctreePredictor(model, device=device, impl=impl, state_dtype=state_dtype)
    return WindowPredictor(model, device=device, window=window)
