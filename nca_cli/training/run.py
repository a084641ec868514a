"""``nca train``: a new run, a resumed one, or a dry run, from the command's options."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import NCAError
from ..recipes import Recipe, load_recipe
from .options import TrainOptions


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict | None = None     # --dry-run: the model summary, nothing trained
    record: dict | None = None      # the last epoch's metrics


def _run_dir(opts: TrainOptions, recipe: Recipe | None = None) -> Path:
    if opts.output is not None:
        return Path(opts.output)
    return Path("runs") / (recipe or load_recipe(opts.recipe)).name


def train_from_options(opts: TrainOptions) -> TrainResult:
    """Train as ``opts`` says; ``--epochs`` reaches ``train`` as its ``epochs`` flag, which wins over
    ``training.epochs`` and is recorded with the recipe."""
    from .trainer import resumed_recipe, train

    if opts.resume and opts.dry_run:
        raise NCAError("--dry-run validates a new run; drop --resume.")
    changes = None
    if opts.resume:
        run_dir = _run_dir(opts)
        recipe, changes = resumed_recipe(run_dir, list(opts.overrides))
    else:
        recipe = load_recipe(opts.recipe, list(opts.overrides))
        run_dir = _run_dir(opts, recipe)
    if opts.dry_run:
        from .summary import model_summary

        return TrainResult(run_dir, summary=model_summary(recipe.with_flags("training", epochs=opts.epochs)))
    record = train(recipe, run_dir, resume=opts.resume, device=opts.device, epochs=opts.epochs, quiet=opts.quiet,
                   impl=opts.impl, changes=changes)
    return TrainResult(run_dir, record=record)
