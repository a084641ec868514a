"""Labeled target-domain data for measuring an adaptation: Dice and mean predicted variance.

``--eval-dir`` is either a prepared dataset (its test split, or all cases when the test split
is empty) or a folder with ``images/`` and ``masks/`` whose files pair up by name (``a.png``
with ``a.png`` or ``a.tif``; a mask value k marks class k, and with one class any non-zero
value is foreground).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import io
from ..core.errors import NCAError
from ..inference.outputs import Ensemble, masks_of, mean_dice, whole
from ..io.formats import strip_suffix
from .inputs import list_images, read_input

Case = tuple[torch.Tensor, torch.Tensor]   # image [1, IN, *spatial], target [1, K, *spatial]


def _prepared_cases(root: Path, model) -> list[Case]:
    from ..data.dataset import PreparedDataset

    ds = PreparedDataset(root, "test")
    if len(ds) == 0:
        ds = PreparedDataset(root, "all")
    c = model.config
    if ds.dims != c.dims or ds.channels != c.input_channels or ds.num_classes != c.output_channels:
        raise NCAError(f"Evaluation dataset {root} holds {ds.dims}D data with {ds.channels} channel(s) and "
                       f"{ds.num_classes} class(es) but the model is {c.dims}D with {c.input_channels} input channel(s) "
                       f"and {c.output_channels} class(es); pass labeled data of the model's kind.")
    cases = []
    for i in range(len(ds)):
        x = torch.from_numpy(ds.to_float(ds.image(i))).movedim(-1, 0)
        y = torch.from_numpy(ds.to_masks(ds.label(i))).movedim(-1, 0).float()
        cases.append((x[None].contiguous(), y[None].contiguous()))
    return cases


def _folder_cases(root: Path, model, normalization: dict | None) -> list[Case]:
    masks = {strip_suffix(p): p for p in list_images(root / "masks")}
    classes = model.config.output_channels
    cases = []
    for path in list_images(root / "images"):
        mask_path = masks.get(strip_suffix(path))
        if mask_path is None:
            raise NCAError(f"Evaluation image {path} has no mask in {root / 'masks'}; add {strip_suffix(path)}.png "
                           f"there or remove the image.")
        x = read_input(path, model, normalization)
        label, _ = io.read_labels(mask_path)
        if tuple(label.shape) != tuple(x.shape[1:]):
            raise NCAError(f"Mask {mask_path} has shape {tuple(label.shape)} but its image is {tuple(x.shape[1:])}; "
                           f"pass masks of the images' size.")
        if classes == 1:
            y = (label > 0)[None]
        else:
            y = np.stack([label == k + 1 for k in range(classes)])
        cases.append((x[None], torch.from_numpy(np.ascontiguousarray(y)).float()[None]))
    return cases


def load_eval_cases(eval_dir: str | Path, model, normalization: dict | None = None) -> list[Case]:
    """Labeled cases of ``eval_dir`` (a prepared dataset, or ``images/`` + ``masks/``)."""
    root = Path(eval_dir)
    if (root / "dataset.yaml").is_file():
        return _prepared_cases(root, model)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return _folder_cases(root, model, normalization)
    raise NCAError(f"Evaluation folder {root} is neither a prepared dataset (no dataset.yaml) nor an images/ + masks/ "
                   f"folder; pass a folder written by `nca prepare` or one with those two subfolders.")


@torch.inference_mode()
def evaluate(model, cases: list[Case], predictions: int, device: torch.device | str = "cpu") -> dict:
    """Mean over cases of the Dice of the median of ``predictions`` stochastic runs' logits
    (``> 0``), and the mean per-pixel variance of those runs' sigmoid probabilities."""
    from ..inference.octree import predict_logits

    variances = []

    def masks(x: torch.Tensor) -> torch.Tensor:
        runs = Ensemble(predictions, (x.shape[0], model.config.output_channels, *x.shape[2:]), device="cpu")
        for seed in range(predictions):
            runs.add(seed, (), predict_logits(model, x.to(device), seed=seed, impl="auto").float())
        stats = runs.whole()
        variances.append(stats.var().mean().item())
        return masks_of(stats.median())

    dice = mean_dice(cases, whole(masks))
    return {"dice": dice, "mean_variance": float(np.mean(variances)), "cases": len(cases)}
