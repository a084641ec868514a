"""The training loop shared by every recipe (single process, or DDP under torchrun).

Per epoch: ``batches_per_epoch`` Adam steps on augmented batches, one exponential learning-
rate decay step, one EMA update. Every ``validate_every`` epochs the EMA model is evaluated
(NCAs: the median of ``ensemble`` stochastic runs; baselines: sliding-window Dice of the whole
validation cases). Batches, loss and validation per architecture: ``steps``. ``last.pt`` holds everything needed to
continue bit-for-bit (model, EMA, optimiser, scheduler, generator states, epoch).
"""
from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from .. import checkpoint
from ..errors import NCAError
from ..fileio import atomic_path
from ..recipes import resolve_dataset
from .ema import EMA
from .losses import dice_score
from .steps import training_step

LAST, BEST, MODEL, METRICS, RESOLVED = "last.pt", "best.pt", "model.pt", "metrics.jsonl", "recipe.yaml"


def resolve_device(device: str) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NCAError(f"--device {device} was requested but this machine has no usable CUDA GPU; use --device cpu.")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise NCAError(f"Unknown device '{device}'; use auto, cpu or cuda.")
    return torch.device(device)


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


def _fire_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + batch * 101 + rank) & 0xFFFFFFFF


def forward(model, x, recipe, *, seed, generator):
    """Logits and the level-0 region they cover (NCA crops), for any model."""
    from ..models import is_nca

    core = model.module if hasattr(model, "module") else model
    if is_nca(core):
        data = recipe["data"]
        return model(x, seed=seed, patch=data.get("crop"), crop_levels=data["crop_levels"] if data.get("crop") else 0,
                     generator=generator)
    return model(x), None


@torch.no_grad()
def evaluate(model, cases, *, ensemble: int, impl: str = "auto") -> float:
    """Mean Dice over cases of the median of ``ensemble`` stochastic runs' logits."""
    from ..models import is_nca

    if not cases:
        return float("nan")
    scores = []
    for x, y in cases:
        if is_nca(model):
            runs = torch.stack([model.predict_logits(x, seed=s, impl=impl) for s in range(ensemble)])
            logits = runs.median(dim=0).values
        else:
            logits = model(x)
        scores.append(dice_score(logits > 0, y).mean().item())
    return float(sum(scores) / len(scores))


def _check_dataset(ds, recipe, path) -> None:
    from ..models import softmax_classes

    m = recipe["model"]
    if ds.dims != m["dims"]:
        raise NCAError(f"Dataset {path} is {ds.dims}D but the recipe's model is {m['dims']}D; "
                       f"use a {ds.dims}D recipe or another dataset.")
    if ds.channels != m["input_channels"]:
        raise NCAError(f"Dataset {path} has {ds.channels} image channel(s) but the model takes {m['input_channels']}; "
                       f"set model.input_channels={ds.channels} or use another dataset.")
    background = 1 if softmax_classes(m) else 0  # softmax models predict the background as class 0
    if ds.num_classes + background != m["output_channels"]:
        raise NCAError(f"Dataset {path} has {ds.num_classes} class(es) but the model predicts {m['output_channels']}"
                       f"{' softmax classes' if background else ''}; set model.output_channels={ds.num_classes + background}"
                       f"{' (the classes plus background)' if background else ''}.")


def train(recipe: dict, run_dir: str | os.PathLike, *, resume: bool = False, device: str = "auto",
          epochs: int | None = None, quiet: bool = False, impl: str = "auto") -> dict:
    """Train the recipe's model; returns the final metrics record."""
    from ..data.dataset import PreparedDataset
    from ..models import build_model

    run_dir = Path(run_dir)
    tr, data = recipe["training"], recipe["data"]
    total_epochs = epochs or tr["epochs"]
    ds_path = resolve_dataset(recipe)
    if ds_path is None:
        raise NCAError(f"Recipe {recipe.get('_source', '')} names no dataset; set data.dataset (or --set data.dataset=PATH).")
    if not (ds_path / "dataset.yaml").is_file():
        raise NCAError(f"Dataset folder {ds_path} has no dataset.yaml; create it with `nca prepare` first.")
    last_path = run_dir / LAST
    if last_path.exists() and not resume:
        raise NCAError(f"Run folder {run_dir} already holds a run; pass --resume to continue it or choose another -o.")
    if resume and not last_path.exists():
        raise NCAError(f"Cannot resume: {last_path} does not exist; start the run without --resume.")

    dist = Distributed(resolve_device(device))
    dev = dist.device
    try:
        train_ds = PreparedDataset(ds_path, "train")
        val_ds = PreparedDataset(ds_path, "val")
        _check_dataset(train_ds, recipe, ds_path)
        torch.manual_seed(tr["seed"])
        model = build_model(recipe["model"]).to(dev)
        step = training_step(model, recipe, train_ds)
        ema = EMA(model, tr["ema_decay"])
        opt = torch.optim.Adam(model.parameters(), lr=tr["lr"], betas=tuple(tr["betas"]))
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=tr["lr_decay"])
        gen = torch.Generator().manual_seed(tr["seed"] * 7919 + dist.rank)
        start, best, history_ok = 0, -1.0, 0
        if resume:
            state = checkpoint.load(last_path, map_location=dev)
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gens = state["generators"]
            if len(gens) != dist.world:
                raise NCAError(f"{last_path} was written by {len(gens)} process(es); resume it with the same number.")
            gen.set_state(gens[dist.rank])
            start, best = int(state["epoch"]), float(state["best_dice"])
            history_ok = start
        ddp_model = dist.wrap(model)
        per_epoch = data.get("batches_per_epoch") or max(1, len(train_ds) // data["batch_size"])
        val_cases = step.validation_cases(val_ds) if dist.main and len(val_ds) else []
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(run_dir / RESOLVED) as tmp:
                tmp.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if not k.startswith("_")}, sort_keys=False))
            _trim_metrics(run_dir / METRICS, history_ok)

        progress = _progress(quiet or not dist.main)
        record: dict = {}
        stale = 0
        with progress:
            task = progress.add_task("training", total=total_epochs, completed=start, info="")
            for epoch in range(start, total_epochs):
                t0 = time.perf_counter()
                model.train()
                losses = []
                for b in range(per_epoch):
                    x, y = step.batch(gen)
                    loss = step.loss(ddp_model, x.to(dev), y.to(dev), seed=_fire_seed(tr["seed"], epoch, b, dist.rank),
                                     generator=gen)
                    if not torch.isfinite(loss):
                        raise NCAError(f"Training diverged at epoch {epoch + 1} (loss is {loss.item()}); "
                                       f"lower training.lr in {recipe.get('_source', 'the recipe')}.")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                sched.step()
                ema.update(model)
                record = {"epoch": epoch + 1, "loss": dist.mean(sum(losses) / len(losses)),
                          "lr": sched.get_last_lr()[0], "epoch_seconds": time.perf_counter() - t0}
                validate = (epoch + 1) % tr["validate_every"] == 0 or epoch + 1 == total_epochs
                improved = False
                if validate and dist.main and val_cases:
                    dice = step.validate(ema.shadow, val_cases, ensemble=tr["ensemble"], impl=impl)
                    record["val_dice"] = dice
                    improved = dice > best
                    if improved:
                        best = dice
                        checkpoint.save_model(run_dir / BEST, ema.shadow, recipe, {"epoch": epoch + 1, "val_dice": dice})
                    stale = 0 if improved else stale + 1
                gens = dist.gather(gen.get_state())
                if dist.main:
                    checkpoint.save({"model": model.state_dict(), "ema": ema.state_dict(),
                                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                     "generators": gens, "epoch": epoch + 1, "best_dice": best}, last_path)
                    with open(run_dir / METRICS, "a") as f:
                        f.write(json.dumps(record) + "\n")
                info = f"loss {record['loss']:.4f}" + (f"  dice {record['val_dice']:.3f}" if "val_dice" in record else "") \
                    + f"  {record['epoch_seconds']:.1f} s/epoch"
                progress.update(task, advance=1, info=info)
                if tr["early_stop"] and validate and stale >= tr["early_stop"]:
                    break
        if dist.main:
            meta = {"epochs": record.get("epoch", start), "best_val_dice": best if best >= 0 else None,
                    "final_loss": record.get("loss"), "recipe_name": recipe.get("name")}
            checkpoint.save_model(run_dir / MODEL, ema.shadow, recipe, meta)
        dist.barrier()
        return record
    finally:
        dist.close()


def _trim_metrics(path: Path, epochs: int) -> None:
    """Keep the metrics of epochs ``<= epochs`` (a resumed run rewrites what came after)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] <= epochs]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def _progress(disabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if disabled:
        return Progress(disable=True)
    return Progress(TextColumn("[bold]epoch"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), transient=False)
