"""The training loop shared by every recipe (single process, or DDP under torchrun).

Per epoch: ``batches_per_epoch`` Adam steps on augmented batches, one exponential learning-
rate decay step, one EMA update. Every ``validate_every`` epochs the EMA model is validated
(``steps``); each improvement writes ``best.pt`` and ``model.pt`` (EMA weights), and without
validation data ``model.pt`` is written every ``save_every`` epochs, so a usable model exists
at any moment; the final ``model.pt`` holds the last EMA weights. ``last.pt`` holds everything
needed to continue bit for bit (model, EMA, optimiser, scheduler, generator states, epoch).
SIGTERM or SIGHUP (a cluster preempting the job) stops a single-process run after the batch
in progress: ``last.pt`` then records the batches of the epoch already done, and ``--resume``
continues from the next one with identical weights.

A resumed run (``--resume``) continues the recipe recorded in its folder (``recipe.yaml``);
only settings that do not change the weights' trajectory may change on resume (``RESUMABLE``),
and each change is recorded with the epoch from which it holds.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
import yaml

from ..core import signals
from ..core.device import resolve_device
from ..core.errors import NCAError
from ..core.files import atomic_path, write_failure
from ..core.progress import Progress
from ..core.seeds import fire_seed
from ..models import checkpoint
from ..models.contract import dataset_contract
from ..recipes import Recipe, apply_overrides, parse_override, resolve_dataset, validate_recipe
from .ema import EMA
from .loop import optimise_epoch
from .steps import training_step

LAST, BEST, MODEL, METRICS, RESOLVED = "last.pt", "best.pt", "model.pt", "metrics.jsonl", "recipe.yaml"
RESUMABLE = ("training.epochs", "training.validate_every", "training.early_stop", "training.save_every",
             "description", "paper")


class Distributed:
    """torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK); a no-op in a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        if self.world > 1:
            import torch.distributed as dist

            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def close(self):
        if self.world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"training.lr": 0.0016, "model.hidden": 64, ...}`` of a recipe's mapping."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "model":
            out.update(_flat(v, key + "."))
        elif isinstance(v, dict):
            out.update({f"{key}.{kk}": vv for kk, vv in v.items()})
        else:
            out[key] = v
    return out


def resumed_recipe(run_dir: Path, overrides: list[str], epochs: int | None = None) -> tuple[Recipe, dict]:
    """The recipe a resumed run continues: its folder's ``recipe.yaml`` with ``overrides`` and
    ``epochs`` (a flag, see ``Recipe.with_flags``) applied.

    Returns it with the settings that change (``{key: (recorded, new)}``); a change outside
    ``RESUMABLE`` is refused, since the run would no longer be the one its checkpoints record."""
    path = run_dir / RESOLVED
    if not path.is_file():
        raise NCAError(f"Cannot resume: {path} does not exist; start the run without --resume.")
    recorded = yaml.safe_load(path.read_text())
    recipe = validate_recipe(apply_overrides(recorded, overrides, str(path)), str(path))
    recipe = recipe.with_flags("training", epochs=epochs)
    changes = recipe_changes(validate_recipe(recorded, str(path)), recipe)
    blocked = [k for k in changes if k not in RESUMABLE]
    if blocked:
        given = [parse_override(o)[0] for o in overrides]
        named = ", ".join(f"{k}={changes[k][1]!r}" for k in blocked)
        raise NCAError(f"--resume continues the run recorded in {path} exactly, but {named} would change it "
                       f"(recorded: {', '.join(f'{k}={changes[k][0]!r}' for k in blocked)}); drop "
                       f"{'these overrides' if given else 'the change'} or start a new run with another -o. "
                       f"Only {', '.join(RESUMABLE)} may change on resume.")
    return recipe, changes


def recipe_changes(before: Recipe, after: Recipe) -> dict:
    """``{key: (before, after)}`` for every setting that differs between two recipes."""
    a, b = _flat(before.to_dict()), _flat(after.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_dataset(ds, recipe: Recipe, path, patches: bool = False) -> None:
    """Raise ``NCAError`` unless the dataset suits the recipe's model (dimensions, channels,
    classes) and, with ``patches``, its patch and crop fit inside the cases (``--dry-run``;
    training itself zero-pads cases smaller than the patch)."""
    from ..models import architecture

    m = recipe.model
    arch = architecture(m["architecture"])
    if ds.dims != m["dims"]:
        raise NCAError(f"Dataset {path} is {ds.dims}D but the recipe's model is {m['dims']}D; "
                       f"use a {ds.dims}D recipe or another dataset.")
    if ds.channels != m["input_channels"]:
        raise NCAError(f"Dataset {path} has {ds.channels} image channel(s) but the model takes {m['input_channels']}; "
                       f"set model.input_channels={ds.channels} or use another dataset.")
    background = 1 if arch.softmax else 0  # softmax models predict the background as class 0
    if ds.num_classes + background != m["output_channels"]:
        raise NCAError(f"Dataset {path} has {ds.num_classes} class(es) but the model predicts {m['output_channels']}"
                       f"{' softmax classes' if background else ''}; set model.output_channels={ds.num_classes + background}"
                       f"{' (the classes plus background)' if background else ''}.")
    for key in ("patch", "crop") if patches else ():
        size = getattr(recipe.data, key)
        if not size:
            continue
        if len(size) != ds.dims:
            raise NCAError(f"Recipe key 'data.{key}' has {len(size)} sizes but dataset {path} is {ds.dims}D; "
                           f"give one size per axis.")
        largest = [max(c["shape"][a] for c in ds.cases) for a in range(ds.dims)]
        if any(s > n for s, n in zip(size, largest)):
            raise NCAError(f"Recipe key 'data.{key}' {size} is larger than every case of dataset {path} (largest "
                           f"{largest}); set data.{key} to at most {[min(s, n) for s, n in zip(size, largest)]}.")


def _check_run_folder(run_dir: Path, resume: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise NCAError(f"The run folder {run_dir} is a file; pass a folder with -o (e.g. -o runs/{run_dir.stem}).")
    last_path = run_dir / LAST
    if last_path.exists() and not resume:
        raise NCAError(f"Run folder {run_dir} already holds a run; pass --resume to continue it or choose another -o.")
    if resume and not last_path.exists():
        raise NCAError(f"Cannot resume: {last_path} does not exist; start the run without --resume.")


def _dataset(recipe: Recipe):
    from ..data.dataset import PreparedDataset

    ds_path = resolve_dataset(recipe)
    if ds_path is None:
        raise NCAError(f"Recipe {recipe.source or ''} names no dataset; set data.dataset (or --set data.dataset=PATH).")
    if not (ds_path / "dataset.yaml").is_file():
        raise NCAError(f"Dataset folder {ds_path} has no dataset.yaml; create it with `nca prepare` first.")
    return ds_path, PreparedDataset(ds_path, "train"), PreparedDataset(ds_path, "val")


class _Run:
    """The state of one training run: model, EMA, optimiser, scheduler, generator, counters."""

    def __init__(self, recipe: Recipe, train_ds, dist: Distributed):
        from ..models import build_model

        tr = recipe.training
        torch.manual_seed(tr.seed)
        self.model = build_model(recipe.model).to(dist.device)
        self.step = training_step(self.model, recipe, train_ds)
        self.ema = EMA(self.model, tr.ema_decay)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tr.lr, betas=tuple(tr.betas))
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=tr.lr_decay)
        self.gen = torch.Generator().manual_seed(tr.seed * 7919 + dist.rank)
        self.epoch, self.batch, self.best, self.resumes = 0, 0, -1.0, []

    def restore(self, path: Path, dist: Distributed) -> None:
        state = checkpoint.load(path, map_location=dist.device)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise NCAError(f"{path} does not match the recipe's model ({str(exc).splitlines()[0]}); resume with the "
                           f"recipe the run was started with, or start a new run with another -o.") from None
        gens = state["generators"]
        if len(gens) != dist.world:
            raise NCAError(f"{path} was written by {len(gens)} process(es); resume it with the same number.")
        self.gen.set_state(gens[dist.rank])
        self.epoch, self.best = int(state["epoch"]), float(state["best_dice"])
        self.batch = int(state.get("batch", 0))
        self.resumes = list(state.get("resumes") or [])

    def save_last(self, path: Path, gens: list) -> None:
        checkpoint.save({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                         "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                         "generators": gens, "epoch": self.epoch, "batch": self.batch, "best_dice": self.best,
                         "resumes": self.resumes},
                        path)


class _Preempted(Exception):
    """A signal arrived; batch ``batch`` of the epoch is the next one to run."""

    def __init__(self, batch: int):
        super().__init__(batch)
        self.batch = batch


def _preemptible(dist: Distributed):
    """Signals wait for the end of the batch in progress (one process; with several, each
    process stops at once and ``last.pt`` holds the last completed epoch)."""
    return signals.deferred() if dist.world == 1 else contextlib.nullcontext()


def _append_metrics(path: Path, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise write_failure(path, exc) from None


def train(recipe: Recipe, run_dir: str | os.PathLike, *, resume: bool = False, device: str = "auto",
          epochs: int | None = None, quiet: bool = False, impl: str = "auto", changes: dict | None = None) -> dict:
    """Train the recipe's model into ``run_dir``; returns the final metrics record.

    ``epochs`` wins over ``training.epochs`` exactly as ``--epochs`` does (``Recipe.with_flags``)
    and is recorded with the recipe. With ``resume``, ``recipe`` is the one recorded in the run
    folder (see ``resumed_recipe``) and ``changes`` what differs from it."""
    run_dir = Path(run_dir)
    flagged = recipe.with_flags("training", epochs=epochs)
    if resume and flagged is not recipe:
        changes = {**(changes or {}), **recipe_changes(recipe, flagged)}
    recipe, tr = flagged, flagged.training
    ds_path, train_ds, val_ds = _dataset(recipe)
    _check_run_folder(run_dir, resume)
    check_dataset(train_ds, recipe, ds_path)
    dist = Distributed(resolve_device(device))
    try:
        run = _Run(recipe, train_ds, dist)
        if resume:
            run.restore(run_dir / LAST, dist)
            if changes:
                run.resumes.append({"epoch": run.epoch, "changes": {k: list(v) for k, v in changes.items()}})
        ddp_model = dist.wrap(run.model)
        val_cases = run.step.validation_cases(val_ds) if dist.main and len(val_ds) else []
        batches = _batches_per_epoch(recipe, train_ds)
        meta = {"recipe_name": recipe.name, "normalization": train_ds.normalization,
                "classes": train_ds.classes, "dataset": str(ds_path), "resumes": run.resumes,
                "contract": dataset_contract(train_ds.manifest)}
        if dist.main:
            _write_run_files(run_dir, recipe, ds_path, run.epoch)
        record: dict = {}
        stale = 0
        with Progress(quiet or not dist.main) as progress, _preemptible(dist):
            task = progress.add("epoch", total=tr.epochs, completed=run.epoch)
            for epoch in range(run.epoch, tr.epochs):
                record = _train_epoch(run, ddp_model, recipe, epoch, batches, dist, run_dir / LAST)
                validate = run.epoch % tr.validate_every == 0 or run.epoch == tr.epochs
                if validate and dist.main and val_cases:
                    record["val_dice"] = run.step.validate(run.ema.shadow, val_cases, ensemble=tr.ensemble, impl=impl)
                    stale = 0 if _keep_if_best(run, record["val_dice"], run_dir, recipe, meta) else stale + 1
                elif dist.main and not val_cases and run.epoch % tr.save_every == 0:
                    _save_model(run_dir / MODEL, run, recipe, meta | {"epoch": run.epoch, "weights": "latest"})
                gens = dist.gather(run.gen.get_state())
                if dist.main:
                    run.save_last(run_dir / LAST, gens)
                    _append_metrics(run_dir / METRICS, record)
                task.advance(info=_progress_line(record))
                if tr.early_stop and validate and stale >= tr.early_stop:
                    break
                if signals.pending():
                    raise signals.stopped()
        if dist.main:
            _save_model(run_dir / MODEL, run, recipe, meta | {
                "epochs": record.get("epoch", run.epoch), "best_val_dice": run.best if run.best >= 0 else None,
                "final_loss": record.get("loss"), "weights": "final"})
        dist.barrier()
        return record
    finally:
        dist.close()


def _batches_per_epoch(recipe: Recipe, train_ds) -> int:
    return recipe.data.batches_per_epoch or max(1, len(train_ds) // recipe.data.batch_size)


def _train_epoch(run: _Run, ddp_model, recipe: Recipe, epoch: int, batches: int, dist: Distributed,
                 last: Path) -> dict:
    """One epoch: ``batches`` optimiser steps, one learning-rate decay step, one EMA update;
    returns the epoch's metrics record."""
    t0 = time.perf_counter()
    means = _optimise(run, ddp_model, dist, recipe, epoch, batches, last)
    run.sched.step()
    run.ema.update(run.model)
    run.epoch = epoch + 1
    return {"epoch": run.epoch, "loss": dist.mean(means["loss"]), "lr": run.sched.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - t0}


def _optimise(run: _Run, ddp_model, dist: Distributed, recipe: Recipe, epoch: int, batches: int, last: Path) -> dict:
    """The batches of ``epoch`` from ``run.batch`` on; returns the means of the loss terms. A
    signal stops it between two batches, with ``last`` saved to resume from the next one."""
    run.model.train()

    def loss(_index: int, b: int):
        if signals.pending():     # a safe point: batches < b are done, b not begun
            raise _Preempted(b)
        x, y = run.step.batch(run.gen)
        return run.step.loss(ddp_model, x.to(dist.device), y.to(dist.device),
                             seed=fire_seed(recipe.training.seed, epoch, b, dist.rank), generator=run.gen)

    try:
        means = optimise_epoch(run.opt, range(run.batch, batches), loss,
                               diverged=f"Training diverged at epoch {epoch + 1} (loss is {{value}}); lower "
                                        f"training.lr in {recipe.where}.")
    except _Preempted as stop:
        run.batch = stop.batch
        run.save_last(last, [run.gen.get_state()])
        raise signals.stopped() from None
    run.batch = 0
    return means


def _keep_if_best(run: _Run, dice: float, run_dir: Path, recipe: Recipe, meta: dict) -> bool:
    """Write ``best.pt`` and ``model.pt`` when ``dice`` improves on the best so far."""
    if not dice > run.best:
        return False
    run.best = dice
    for name in (BEST, MODEL):
        _save_model(run_dir / name, run, recipe, meta | {"epoch": run.epoch, "val_dice": dice, "weights": "best"})
    return True


def _save_model(path: Path, run: _Run, recipe: Recipe, metadata: dict) -> None:
    checkpoint.save_model(path, run.ema.shadow, recipe.to_dict(), metadata)


def _progress_line(record: dict) -> str:
    return (f"loss {record['loss']:.4f}" + (f"  dice {record['val_dice']:.3f}" if "val_dice" in record else "")
            + f"  {record['epoch_seconds']:.1f} s/epoch")


def _write_run_files(run_dir: Path, recipe: Recipe, ds_path: Path, epoch: int) -> None:
    """``recipe.yaml`` (the effective recipe, dataset path resolved) and the metrics of epochs
    ``<= epoch`` (a resumed run rewrites what came after)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = recipe.to_dict()
    resolved["data"]["dataset"] = str(ds_path.resolve())
    with atomic_path(run_dir / RESOLVED) as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    path = run_dir / METRICS
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epoch]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))
