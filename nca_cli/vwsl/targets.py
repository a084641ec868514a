"""Surrogate targets: the mean and per-pixel variance of the starting model's stochastic
predictions, computed once and cached beside the adapted checkpoint.

For every image, ``predictions`` forward passes with fire-mask seeds ``0 .. predictions−1``
(the seeds ``nca segment --ensemble`` uses) give sigmoid probabilities; their mean is the
target and their population variance the weight map (``inference.outputs.Ensemble``). The cache folder
``<output stem>.vwsl-cache/`` holds ``key.json`` and one ``NNNN.npz`` (``mean``, ``var``,
float32 ``[OUT, *spatial]``) per image. It is reused while the key matches: the model file's
SHA-256, every image's resolved path, size and modification time, and ``predictions``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.files import atomic_path, sha256_file, write_json

CACHE_FORMAT = "nca-vwsl-cache/1"
KEY_FILE = "key.json"


@dataclass
class Targets:
    """Per image: ``mean`` and ``var`` ``[OUT, *spatial]`` tensors; ``reused`` if read from the cache."""

    mean: list[torch.Tensor]
    var: list[torch.Tensor]
    reused: bool


def cache_dir_for(output: str | Path) -> Path:
    """``<output stem>.vwsl-cache`` beside ``output``."""
    output = Path(output)
    return output.with_name(output.stem + ".vwsl-cache")


def cache_key(model_file: str | Path, image_paths: Sequence[Path], predictions: int) -> dict:
    """What the cached targets depend on."""
    images = []
    for p in image_paths:
        st = Path(p).stat()
        images.append({"path": str(Path(p).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {"format": CACHE_FORMAT, "model_sha256": sha256_file(model_file), "predictions": int(predictions),
            "images": images}


@torch.inference_mode()
def predict_stats(model, image: torch.Tensor, predictions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance over ``predictions`` stochastic runs (seeds ``0 ..``) of the
    sigmoid of a ``[1, IN, *spatial]`` image's logits; each ``[OUT, *spatial]``. The runs go
    through the lean inference driver (fused kernels where they run), float32 state."""
    from ..inference.octree import predict_logits
    from ..inference.outputs import Ensemble

    runs = Ensemble(predictions, (model.config.output_channels, *image.shape[2:]))
    for seed in range(predictions):
        runs.add(seed, (), predict_logits(model, image, seed=seed, impl="auto")[0].float())
    stats = runs.whole()
    return stats.mean(), stats.var()


def _read_cache(folder: Path, key: dict, count: int) -> Targets | None:
    try:
        if json.loads((folder / KEY_FILE).read_text()) != key:
            return None
        means, variances = [], []
        for i in range(count):
            with np.load(folder / f"{i:04d}.npz") as z:
                means.append(torch.from_numpy(z["mean"]))
                variances.append(torch.from_numpy(z["var"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return Targets(means, variances, reused=True)


def load_or_compute(folder: str | Path, key: dict, model, images: Sequence[torch.Tensor], predictions: int,
                    device: torch.device | str = "cpu",
                    on_image: Callable[[int], None] | None = None) -> Targets:
    """Targets of ``images`` (each ``[IN, *spatial]``) from the cache in ``folder`` when its key
    equals ``key``; otherwise computed with ``model``, written to the cache, and returned."""
    folder = Path(folder)
    cached = _read_cache(folder, key, len(images))
    if cached is not None:
        return cached
    if (folder / KEY_FILE).exists():
        (folder / KEY_FILE).unlink()
    for old in folder.glob("[0-9][0-9][0-9][0-9].npz"):
        old.unlink()
    means, variances = [], []
    for i, x in enumerate(images):
        mean, var = predict_stats(model, x[None].to(device), predictions)
        mean, var = mean.cpu().clone(), var.cpu().clone()   # ordinary tensors: they are training targets
        with atomic_path(folder / f"{i:04d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, mean=mean.numpy(), var=var.numpy())
        means.append(mean)
        variances.append(var)
        if on_image is not None:
            on_image(i)
    write_json(folder / KEY_FILE, key)
    return Targets(means, variances, reused=False)
