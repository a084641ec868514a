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
import time
from pathlib import Path

import torch

from ..core.device import resolve_device
from ..core.errors import NCAError
from ..core.files import atomic_path, check_writable, sha256_file
from ..core.progress import Progress
from ..core.seeds import VWSL_STREAM, fire_seed
from ..models import checkpoint
from ..recipes import SCHEMA, load_recipe
from ..training.loop import optimise_epoch
from .evaluation import evaluate, load_eval_cases
from .inputs import load_unlabeled
from .loss import vwsl_loss
from .options import FinetuneOptions
from .targets import cache_dir_for, cache_key, load_or_compute


def metrics_path_for(output: str | Path) -> Path:
    """``<output stem>.vwsl-metrics.jsonl`` beside ``output``."""
    output = Path(output)
    return output.with_name(output.stem + ".vwsl-metrics.jsonl")


def pass_seed(seed: int, epoch: int, batch: int, k: int) -> int:
    """Fire-mask seed of pass ``k`` (0 or 1) of a batch."""
    return fire_seed(seed, epoch, batch, VWSL_STREAM + 7 * k)


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
    check_writable(output)


def _epoch_batches(groups: dict, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of image indices; each batch holds images of one shape."""
    batches = []
    for idx in groups.values():
        order = [idx[i] for i in torch.randperm(len(idx), generator=gen).tolist()]
        batches += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def finetune(opts: FinetuneOptions) -> dict:
    """Adapt the NCA in ``opts.model`` to the images of ``opts.unlabeled``; write ``opts.output``.

    Returns a summary (paths, settings, losses, and with ``eval_dir`` the Dice and mean
    predicted variance before and after on that labeled target data).
    """
    t0 = time.perf_counter()
    unlabeled, model_file, output = Path(opts.unlabeled), Path(opts.model), Path(opts.output)
    net, payload = checkpoint.load_model(model_file, require_nca=True)
    _check_output(output, model_file)
    vw, used_recipe = _settings(payload, opts.recipe)
    epochs = int(opts.epochs if opts.epochs is not None else vw["epochs"])
    gamma = float(opts.gamma if opts.gamma is not None else vw["gamma"])
    predictions = int(opts.predictions if opts.predictions is not None else vw["predictions"])
    seed = int(opts.seed if opts.seed is not None else vw["seed"])
    if epochs < 1 or predictions < 2 or gamma < 0:
        raise NCAError(f"Fine-tuning needs epochs >= 1, predictions >= 2 and gamma >= 0 (got {epochs}, {predictions}, "
                       f"{gamma}); fix the options or the recipe's vwsl section.")
    data = used_recipe.get("data") or {}
    patch = data.get("crop")
    crop_levels = int(data.get("crop_levels") or 0) if patch else 0
    betas = tuple((used_recipe.get("training") or {}).get("betas") or (0.9, 0.99))
    normalization = (payload.get("metadata") or {}).get("normalization")

    images = load_unlabeled(unlabeled, net, normalization)
    eval_cases = load_eval_cases(opts.eval_dir, net, normalization) if opts.eval_dir is not None else None
    dev = resolve_device(opts.device)
    net.to(dev)

    cache = cache_dir_for(output)
    with Progress(opts.quiet) as progress:
        task = progress.add("targets", total=len(images), info=f"{predictions} predictions per image")
        key = cache_key(model_file, [u.path for u in images], predictions)
        targets = load_or_compute(cache, key, net, [u.image for u in images], predictions, dev,
                                  on_image=lambda i: task.advance())
        task.update(completed=len(images), info="reused cache" if targets.reused else "computed")
        before = evaluate(net, eval_cases, predictions, dev) if eval_cases else None

        groups: dict[tuple, list[int]] = {}
        for i, u in enumerate(images):
            groups.setdefault(tuple(u.image.shape), []).append(i)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=float(vw["lr"]), betas=betas)
        records = []
        task = progress.add("epoch", total=epochs)
        net.train()
        for epoch in range(epochs):
            te = time.perf_counter()

            def loss(b: int, idx: list[int]) -> dict:
                x = torch.stack([images[i].image for i in idx]).to(dev)
                mean = torch.stack([targets.mean[i] for i in idx]).to(dev)
                var = torch.stack([targets.var[i] for i in idx]).to(dev)
                crop = net.random_crop(x.shape[2:], patch, crop_levels, gen)
                levels_a, region = net(x, seed=pass_seed(seed, epoch, b, 0), crop=crop, all_levels=True)
                levels_b, _ = net(x, seed=pass_seed(seed, epoch, b, 1), crop=crop, all_levels=True)
                if region is not None:
                    mean = mean[(slice(None), slice(None), *region)]
                    var = var[(slice(None), slice(None), *region)]
                return vwsl_loss(levels_a[0], mean, var, levels_a, levels_b, gamma=gamma,
                                 focal_gamma=float(vw["focal_gamma"]))

            means = optimise_epoch(opt, _epoch_batches(groups, int(vw["batch_size"]), gen), loss,
                                   diverged=f"Fine-tuning diverged at epoch {epoch + 1} (loss {{value}}); "
                                            f"lower vwsl.lr or --gamma.")
            record = {"epoch": epoch + 1, **means, "seconds": time.perf_counter() - te}
            records.append(record)
            task.advance(info=f"loss {record['loss']:.4f}  l1 {record['l1']:.5f}")
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
        adaptation["eval"] = {"dir": str(opts.eval_dir), "cases": len(eval_cases),
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
