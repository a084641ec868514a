"""`nca finetune-vwsl`: adapt a trained NCA to unlabeled target-domain images with VWSL.

1. Check everything first (model, images, evaluation data, output); nothing is written when
   a check fails.
2. Surrogate targets: mean and variance of ``predictions`` stochastic predictions per image
   by the starting model, cached in ``<output stem>.vwsl-cache/`` (see :mod:`.targets`).
3. ``epochs`` epochs of Adam (constant lr from the recipe's ``vwsl`` section) over the
   training images in batches of equal shape (at most ``vwsl.batch_size``); per batch two
   stochastic passes whose fire-mask seeds derive from (seed, epoch, batch), sharing one
   random crop when the model's recipe trains on crops (``data.crop``/``data.crop_levels``).
   Batch order and crops come from a generator seeded with ``seed``, so a run is reproducible.
4. Selection (``select="best"``): a ``holdout`` fraction of the images (chosen by ``seed``;
   none with fewer than 5 images, then the training images serve) is never trained on; the
   starting model and every epoch are scored by the VWSL objective on them (whole images,
   two passes with fixed seeds through the lean inference path, the consistency term on the
   finest output), and the lowest score is kept: the starting
   model itself when no epoch beats it, so fine-tuning cannot leave the model worse by its
   own measure. ``select="last"`` keeps the last epoch.
5. Write ``<output>`` (the ``model.pt`` format, with ``metadata["adaptation"]``) and
   ``<output stem>.vwsl-metrics.jsonl`` (one record per epoch), atomically.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.device import resolve_device
from ..core.errors import NCAError
from ..core.files import atomic_path, check_writable, sha256_file
from ..core.progress import Progress
from ..core.seeds import VWSL_STREAM, fire_seed

SELECTION_STREAM = VWSL_STREAM + 101    # fire-mask seeds of the selection passes
MIN_HOLDOUT_IMAGES = 5                  # fewer unlabeled images: selection on the training images
from ..models import checkpoint
from ..recipes import Recipe, VwslSettings, load_recipe, stored_recipe
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


def _recipe(opts: FinetuneOptions, payload: dict) -> Recipe:
    """The recipe used: ``opts.recipe`` when given, else the one stored with the model, with the
    flags given (``--epochs``, ``--gamma``, ``--predictions``, ``--seed``) over its ``vwsl`` section."""
    if opts.recipe is not None:
        recipe = load_recipe(opts.recipe)
    else:
        recipe = stored_recipe(payload.get("recipe"), payload["model_config"], opts.model)
    return recipe.with_flags("vwsl", epochs=opts.epochs, gamma=opts.gamma, predictions=opts.predictions,
                             seed=opts.seed)


def _check_output(output: Path, model_file: Path) -> None:
    if output.is_dir():
        raise NCAError(f"Output {output} is a folder; pass a file name such as {output / 'adapted.pt'}.")
    if output.resolve() == model_file.resolve():
        raise NCAError(f"Output {output} is the starting model itself; choose another -o so the original stays intact.")
    check_writable(output)


def split_holdout(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, selection) image indices: ``round(fraction · count)`` images (at least one)
    held out, drawn by ``seed``; with fewer than ``MIN_HOLDOUT_IMAGES`` images or ``fraction``
    0 nothing is held out and selection uses the training images."""
    held = max(1, round(fraction * count)) if fraction > 0 and count >= MIN_HOLDOUT_IMAGES else 0
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 1)).tolist()
    train = sorted(order[held:])
    return train, (sorted(order[:held]) if held else train)


def _epoch_batches(groups: dict, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of image indices; each batch holds images of one shape."""
    batches = []
    for idx in groups.values():
        order = [idx[i] for i in torch.randperm(len(idx), generator=gen).tolist()]
        batches += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


@dataclass
class _Job:
    """Everything a fine-tuning run works with, checked before anything is computed."""

    opts: FinetuneOptions
    net: torch.nn.Module
    payload: dict
    recipe: Recipe              # its vwsl section: the settings in effect, flags applied
    patch: list | None
    crop_levels: int
    images: list
    train_idx: list[int]        # images fine-tuned on
    select_idx: list[int]       # images the epoch is chosen on (held out, or the training ones)
    eval_cases: list | None
    device: torch.device

    @classmethod
    def check(cls, opts: FinetuneOptions) -> "_Job":
        model_file, output = Path(opts.model), Path(opts.output)
        net, payload = checkpoint.load_model(model_file, require_nca=True)
        _check_output(output, model_file)
        recipe = _recipe(opts, payload)
        patch = recipe.data.crop
        normalization = (payload.get("metadata") or {}).get("normalization")
        images = load_unlabeled(opts.unlabeled, net, normalization)
        eval_cases = load_eval_cases(opts.eval_dir, net, normalization) if opts.eval_dir is not None else None
        device = resolve_device(opts.device)
        train_idx, select_idx = split_holdout(len(images), float(opts.holdout), recipe.vwsl.seed)
        return cls(opts, net.to(device), payload, recipe, patch, recipe.data.crop_levels if patch else 0, images,
                   train_idx, select_idx, eval_cases, device)

    @property
    def settings(self) -> VwslSettings:
        return self.recipe.vwsl

    def evaluate(self) -> dict | None:
        return evaluate(self.net, self.eval_cases, self.settings.predictions, self.device) if self.eval_cases else None


@torch.inference_mode()
def selection_score(job: _Job, targets) -> float:
    """Mean VWSL objective of ``job.net`` on the selection images: whole images, one at a time,
    two passes with fixed fire-mask seeds through the lean inference path (fused kernel where it
    runs), the consistency term on the finest output."""
    from ..inference.octree import predict_logits

    vw, total = job.settings, 0.0
    for i in job.select_idx:
        x = job.images[i].image[None].to(job.device)
        a = predict_logits(job.net, x, seed=fire_seed(vw.seed, 0, i, SELECTION_STREAM), impl="auto").float()
        b = predict_logits(job.net, x, seed=fire_seed(vw.seed, 0, i, SELECTION_STREAM + 7), impl="auto").float()
        parts = vwsl_loss(a, targets.mean[i][None].to(job.device), targets.var[i][None].to(job.device), [a], [b],
                          gamma=vw.gamma, focal_gamma=vw.focal_gamma)
        total += float(parts["loss"])
    return total / len(job.select_idx)


def _adapt(job: _Job, targets, progress: Progress) -> tuple[list[dict], int, float | None]:
    """The fine-tuning epochs; returns one metrics record per epoch, the epoch kept (0: the
    starting model), whose weights ``job.net`` holds on return, and the starting model's
    selection score."""
    net, vw = job.net, job.settings
    best = job.opts.select == "best"
    net.eval()
    start_score = best_score = selection_score(job, targets) if best else None
    best_epoch, best_state = 0, copy.deepcopy(net.state_dict()) if best else None
    groups: dict[tuple, list[int]] = {}
    for i in job.train_idx:
        groups.setdefault(tuple(job.images[i].image.shape), []).append(i)
    gen = torch.Generator().manual_seed(vw.seed)
    opt = torch.optim.Adam(net.parameters(), lr=vw.lr, betas=tuple(job.recipe.training.betas))
    records = []
    task = progress.add("epoch", total=vw.epochs)
    net.train()
    for epoch in range(vw.epochs):
        te = time.perf_counter()

        def loss(b: int, idx: list[int]) -> dict:
            x = torch.stack([job.images[i].image for i in idx]).to(job.device)
            mean = torch.stack([targets.mean[i] for i in idx]).to(job.device)
            var = torch.stack([targets.var[i] for i in idx]).to(job.device)
            crop = net.random_crop(x.shape[2:], job.patch, job.crop_levels, gen)
            levels_a, region = net(x, seed=pass_seed(vw.seed, epoch, b, 0), crop=crop, all_levels=True)
            levels_b, _ = net(x, seed=pass_seed(vw.seed, epoch, b, 1), crop=crop, all_levels=True)
            if region is not None:
                mean = mean[(slice(None), slice(None), *region)]
                var = var[(slice(None), slice(None), *region)]
            return vwsl_loss(levels_a[0], mean, var, levels_a, levels_b, gamma=vw.gamma,
                             focal_gamma=vw.focal_gamma)

        means = optimise_epoch(opt, _epoch_batches(groups, vw.batch_size, gen), loss,
                               diverged=f"Fine-tuning diverged at epoch {epoch + 1} (loss {{value}}); "
                                        f"lower vwsl.lr or --gamma.")
        record = {"epoch": epoch + 1, **means, "seconds": time.perf_counter() - te}
        if best:
            net.eval()
            record["selection"] = score = selection_score(job, targets)
            if score < best_score:
                best_score, best_epoch, best_state = score, epoch + 1, copy.deepcopy(net.state_dict())
            net.train()
        records.append(record)
        kept = f"  kept {best_epoch}" if best else ""
        task.advance(info=f"loss {means['loss']:.4f}  l1 {means['l1']:.5f}{kept}")
    net.eval()
    if best:
        net.load_state_dict(best_state)
        return records, best_epoch, start_score
    return records, vw.epochs, None


def finetune(opts: FinetuneOptions) -> dict:
    """Adapt the NCA in ``opts.model`` to the images of ``opts.unlabeled``; write ``opts.output``.

    Returns a summary (paths, settings, losses, and with ``eval_dir`` the Dice and mean
    predicted variance before and after on that labeled target data).
    """
    t0 = time.perf_counter()
    job = _Job.check(opts)
    vw = job.settings
    model_file, output = Path(opts.model), Path(opts.output)
    cache = cache_dir_for(output)
    with Progress(opts.quiet) as progress:
        task = progress.add("targets", total=len(job.images), info=f"{vw.predictions} predictions per image")
        key = cache_key(model_file, [u.path for u in job.images], vw.predictions)
        targets = load_or_compute(cache, key, job.net, [u.image for u in job.images], vw.predictions, job.device,
                                  on_image=lambda i: task.advance())
        task.update(completed=len(job.images), info="reused cache" if targets.reused else "computed")
        before = job.evaluate()
        records, kept, start_score = _adapt(job, targets, progress)
        after = job.evaluate()
    adaptation = {
        "method": "vwsl", "gamma": vw.gamma, "epochs": vw.epochs, "predictions": vw.predictions,
        "focal_gamma": vw.focal_gamma, "lr": vw.lr, "batch_size": vw.batch_size,
        "seed": vw.seed, "crop": list(job.patch) if job.crop_levels else None, "crop_levels": job.crop_levels,
        "source_checkpoint": str(model_file), "source_checkpoint_sha256": key["model_sha256"],
        "unlabeled": str(opts.unlabeled), "images": len(job.images), "final_loss": records[-1]["loss"],
        "select": opts.select, "selected_epoch": kept,
        "selection_images": len(job.select_idx) if opts.select == "best" else 0,
        "selection_held_out": opts.select == "best" and job.select_idx != job.train_idx,
        "selection_score_start": start_score,
        "unlabeled_mean_variance_before": float(sum(v.mean().item() for v in targets.var) / len(job.images)),
    }
    if job.eval_cases is not None:
        adaptation["eval"] = {"dir": str(opts.eval_dir), "cases": len(job.eval_cases),
                              "dice_before": before["dice"], "dice_after": after["dice"],
                              "mean_variance_before": before["mean_variance"],
                              "mean_variance_after": after["mean_variance"]}
    metadata = copy.deepcopy(job.payload.get("metadata") or {})
    metadata["adaptation"] = adaptation
    metrics = metrics_path_for(output)
    with atomic_path(metrics) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    given = job.recipe.to_dict() if opts.recipe is not None else None
    checkpoint.save_model(output, job.net, job.payload.get("recipe") or given, metadata)
    return {
        "output": str(output), "metrics": str(metrics), "cache": str(cache), "cache_reused": targets.reused,
        "device": str(job.device), "output_sha256": sha256_file(output), "seconds": time.perf_counter() - t0,
        **adaptation,
    }
