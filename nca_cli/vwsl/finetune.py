"""`nca finetune-vwsl`: adapt a trained NCA to unlabeled target-domain images with VWSL.

1. Check everything first (model, images, evaluation data, output); nothing is written when
   a check fails.
2. Surrogate targets: mean and variance of ``predictions`` stochastic predictions per image
   by the starting model, cached in ``<output stem>.vwsl-cache/`` (see :mod:`.targets`).
3. ``epochs`` epochs of Adam (constant lr from the recipe's ``vwsl`` section) over the images
   in batches of equal shape (at most ``vwsl.batch_size``); per batch two stochastic passes
   whose fire-mask seeds derive from (seed, epoch, batch), sharing one random crop when the
   model's recipe trains on crops (``data.crop``/``data.crop_levels``). Batch order and crops
   come from a generator seeded with ``seed``, so a run is reproducible.
4. Write ``<output>`` (the ``model.pt`` format, with ``metadata["adaptation"]``) and
   ``<output stem>.vwsl-metrics.jsonl`` (one record per epoch), atomically.
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import torch

from .. import checkpoint
from ..errors import NCAError
from ..fileio import atomic_path, sha256_file
from ..recipes import SCHEMA, load_recipe
from ..training.trainer import resolve_device
from .evaluation import evaluate, load_eval_cases
from .inputs import load_unlabeled
from .levels import forward_levels, random_crop
from .loss import vwsl_loss
from .targets import cache_dir_for, cache_key, load_or_compute


def metrics_path_for(output: str | Path) -> Path:
    """``<output stem>.vwsl-metrics.jsonl`` beside ``output``."""
    output = Path(output)
    return output.with_name(output.stem + ".vwsl-metrics.jsonl")


def pass_seed(seed: int, epoch: int, batch: int, k: int) -> int:
    """Fire-mask seed of pass ``k`` (0 or 1) of a batch."""
    return (seed * 1_000_003 + epoch * 10_007 + batch * 101 + 7 * k + 0x5EED) & 0xFFFFFFFF


def _settings(payload: dict, recipe_path: str | Path | None) -> tuple[dict, dict]:
    """The vwsl settings (recipe defaults, then the recipe's ``vwsl`` section) and the recipe used:
    ``recipe_path`` when given, else the one stored with the model."""
    recipe = load_recipe(recipe_path) if recipe_path is not None else (payload.get("recipe") or {})
    vwsl = {k: spec.default for k, spec in SCHEMA["vwsl"].items()}
    vwsl.update(recipe.get("vwsl") or {})
    return vwsl, recipe


def _check_output(output: Path, model_file: Path) -> None:
    if output.is_dir():
        raise NCAError(f"Output {output} is a folder; pass a file name such as {output / 'adapted.pt'}.")
    if output.resolve() == model_file.resolve():
        raise NCAError(f"Output {output} is the starting model itself; choose another -o so the original stays intact.")
    parent = output.parent if str(output.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise NCAError(f"The output folder {parent} is not writable; choose another output path.")


def _epoch_batches(groups: dict, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of image indices; each batch holds images of one shape."""
    batches = []
    for idx in groups.values():
        order = [idx[i] for i in torch.randperm(len(idx), generator=gen).tolist()]
        batches += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return Progress(disable=True)
    return Progress(TextColumn("[bold]{task.description}"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"))


def finetune(unlabeled, model, output, *, recipe=None, epochs: int | None = None, gamma: float | None = None,
             predictions: int | None = None, eval_dir=None, device: str = "auto", seed: int | None = None,
             quiet: bool = False) -> dict:
    """Adapt the NCA in ``model`` to the images of ``unlabeled``; write ``output``.

    Returns a summary (paths, settings, losses, and with ``eval_dir`` the Dice and mean
    predicted variance before and after on that labeled target data).
    """
    t0 = time.perf_counter()
    unlabeled, model_file, output = Path(unlabeled), Path(model), Path(output)
    net, payload = checkpoint.load_model(model_file, require_nca=True)
    _check_output(output, model_file)
    vw, used_recipe = _settings(payload, recipe)
    epochs = int(epochs if epochs is not None else vw["epochs"])
    gamma = float(gamma if gamma is not None else vw["gamma"])
    predictions = int(predictions if predictions is not None else vw["predictions"])
    seed = int(seed if seed is not None else vw["seed"])
    if epochs < 1 or predictions < 2 or gamma < 0:
        raise NCAError(f"Fine-tuning needs epochs >= 1, predictions >= 2 and gamma >= 0 (got {epochs}, {predictions}, "
                       f"{gamma}); fix the options or the recipe's vwsl section.")
    data = used_recipe.get("data") or {}
    patch = data.get("crop")
    crop_levels = int(data.get("crop_levels") or 0) if patch else 0
    betas = tuple((used_recipe.get("training") or {}).get("betas") or (0.9, 0.99))

    images = load_unlabeled(unlabeled, net)
    eval_cases = load_eval_cases(eval_dir, net) if eval_dir is not None else None
    dev = resolve_device(device)
    net.to(dev)

    progress = _progress(quiet)
    cache = cache_dir_for(output)
    with progress:
        task = progress.add_task("targets", total=len(images), info=f"{predictions} predictions per image")
        key = cache_key(model_file, [u.path for u in images], predictions)
        targets = load_or_compute(cache, key, net, [u.image for u in images], predictions, dev,
                                  on_image=lambda i: progress.advance(task))
        progress.update(task, completed=len(images), info="reused cache" if targets.reused else "computed")
        before = evaluate(net, eval_cases, predictions, dev) if eval_cases else None

        groups: dict[tuple, list[int]] = {}
        for i, u in enumerate(images):
            groups.setdefault(tuple(u.image.shape), []).append(i)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=float(vw["lr"]), betas=betas)
        records = []
        task = progress.add_task("epoch", total=epochs, info="")
        net.train()
        for epoch in range(epochs):
            te = time.perf_counter()
            sums = {"loss": 0.0, "dice": 0.0, "focal": 0.0, "l1": 0.0}
            batches = _epoch_batches(groups, int(vw["batch_size"]), gen)
            for b, idx in enumerate(batches):
                x = torch.stack([images[i].image for i in idx]).to(dev)
                mean = torch.stack([targets.mean[i] for i in idx]).to(dev)
                var = torch.stack([targets.var[i] for i in idx]).to(dev)
                crop = random_crop(net, x.shape[2:], patch, crop_levels, gen)
                levels_a, region = forward_levels(net, x, seed=pass_seed(seed, epoch, b, 0), crop=crop)
                levels_b, _ = forward_levels(net, x, seed=pass_seed(seed, epoch, b, 1), crop=crop)
                if region is not None:
                    mean = mean[(slice(None), slice(None), *region)]
                    var = var[(slice(None), slice(None), *region)]
                parts = vwsl_loss(levels_a[0], mean, var, levels_a, levels_b, gamma=gamma,
                                  focal_gamma=float(vw["focal_gamma"]))
                if not torch.isfinite(parts["loss"]):
                    raise NCAError(f"Fine-tuning diverged at epoch {epoch + 1} (loss {parts['loss'].item()}); "
                                   f"lower vwsl.lr or --gamma.")
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                opt.step()
                for k in sums:
                    sums[k] += parts[k].item()
            record = {"epoch": epoch + 1, **{k: v / len(batches) for k, v in sums.items()},
                      "seconds": time.perf_counter() - te}
            records.append(record)
            progress.update(task, advance=1, info=f"loss {record['loss']:.4f}  l1 {record['l1']:.5f}")
        net.eval()
        after = evaluate(net, eval_cases, predictions, dev) if eval_cases else None

    variance_before = float(sum(v.mean().item() for v in targets.var) / len(images))
    adaptation = {
        "method": "vwsl", "gamma": gamma, "epochs": epochs, "predictions": predictions,
        "focal_gamma": float(vw["focal_gamma"]), "lr": float(vw["lr"]), "batch_size": int(vw["batch_size"]),
        "seed": seed, "crop": list(patch) if crop_levels else None, "crop_levels": crop_levels,
        "source_checkpoint": str(model_file), "source_checkpoint_sha256": key["model_sha256"],
        "unlabeled": str(unlabeled), "images": len(images), "final_loss": records[-1]["loss"],
        "unlabeled_mean_variance_before": variance_before,
    }
    if eval_cases is not None:
        adaptation["eval"] = {"dir": str(eval_dir), "cases": len(eval_cases),
                              "dice_before": before["dice"], "dice_after": after["dice"],
                              "mean_variance_before": before["mean_variance"],
                              "mean_variance_after": after["mean_variance"]}
    metadata = copy.deepcopy(payload.get("metadata") or {})
    metadata["adaptation"] = adaptation
    metrics = metrics_path_for(output)
    with atomic_path(metrics) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    checkpoint.save_model(output, net, payload.get("recipe") or (used_recipe or None), metadata)
    return {
        "output": str(output), "metrics": str(metrics), "cache": str(cache), "cache_reused": targets.reused,
        "device": str(dev), "output_sha256": sha256_file(output), "seconds": time.perf_counter() - t0,
        **adaptation,
    }
