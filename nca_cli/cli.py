"""The ``nca`` command line: each command parses its options and calls the core package.

Heavy modules (torch, readers, kernels) are imported inside the commands so ``nca --help``
answers at once.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="nca",
    help="Segment very large medical images in one pass with Neural Cellular Automata.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Impl(str, Enum):
    auto = "auto"
    fused = "fused"
    torch = "torch"


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Tiling(str, Enum):
    auto = "auto"
    off = "off"
    force = "force"


class Task(str, Enum):
    pathology = "pathology"
    surgery = "surgery"
    radiology = "radiology"


@app.command()
def prepare(
    kind: str = typer.Argument(..., help="msd-prostate, peso, cholecseg8k, chexmask, generic or synthetic."),
    src: Optional[Path] = typer.Argument(None, help="Source folder in the dataset's own layout (not for synthetic)."),
    output: Path = typer.Option(..., "-o", "--output", help="Prepared dataset folder to create."),
    synthetic_kind: str = typer.Option("pathology", "--kind", help="synthetic only: pathology, radiology, surgery, xray or microct."),
    cases: Optional[int] = typer.Option(None, "--cases", min=1, help="synthetic only: number of cases (default per kind)."),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="synthetic only: slide/image side (default per kind)."),
    shifted: bool = typer.Option(False, "--shifted", help="synthetic xray only: the shifted target domain (phone photo of a monitor)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val/test split (and of synthetic data)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="generic only: comma-separated class names."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
):
    """Convert a public dataset's layout (or your own folders) into a prepared dataset."""
    from .data.prepare import prepare as run_prepare

    options = {"seed": seed, "overwrite": overwrite}
    if kind == "synthetic":
        options.update(kind=synthetic_kind, cases=cases, shifted=shifted)
        if size:
            options["size"] = size
    if classes:
        options["classes"] = [c.strip() for c in classes.split(",") if c.strip()]
    out = run_prepare(kind, src, output, **options)
    typer.echo(f"prepared dataset: {out}")


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Run folder (default: runs/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", "--continue", help="Continue the run in the run folder."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override training.epochs."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe key: section.key=value (repeatable)."),
    impl: Impl = typer.Option(Impl.auto, "--impl", help="Inference path used for validation."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the recipe, build the model, print its summary."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
):
    """Train a model from a recipe (multi-process: torchrun --nproc_per_node N -m nca_cli train ...)."""
    from .recipes import load_recipe

    r = load_recipe(recipe, overrides)
    if dry_run:
        from .training.summary import format_summary, model_summary

        summary = model_summary(r)
        typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
        return
    from .training.trainer import train as run_train

    run_dir = output or Path("runs") / r["name"]
    record = run_train(r, run_dir, resume=resume, device=device, epochs=epochs, quiet=quiet, impl=impl.value)
    if not quiet:
        typer.echo(f"run folder: {run_dir}  last epoch: {json.dumps(record)}")


@app.command("finetune-vwsl")
def finetune_vwsl(
    unlabeled: Path = typer.Argument(..., help="Folder (or file) of unlabeled target-domain images."),
    model: Path = typer.Option(..., "--model", "-m", help="model.pt of a trained NCA."),
    output: Path = typer.Option(..., "-o", "--output", help="Adapted checkpoint to write (e.g. adapted.pt)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe whose vwsl section to use (default: the model's)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Fine-tuning epochs (default 100)."),
    gamma: Optional[float] = typer.Option(None, "--gamma", min=0.0, help="Weight of the L1 consistency term (default 1e3)."),
    predictions: Optional[int] = typer.Option(None, "--predictions", min=2, help="Stochastic predictions per image (default 10)."),
    eval_dir: Optional[Path] = typer.Option(None, "--eval-dir", help="Prepared dataset (or images/ + masks/) of labeled target data."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default: the recipe's vwsl.seed)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Adapt a trained NCA to unlabeled images with the Variance-Weighted Segmentation Loss."""
    from .vwsl.finetune import finetune

    result = finetune(unlabeled, model, output, recipe=recipe, epochs=epochs, gamma=gamma, predictions=predictions,
                      eval_dir=eval_dir, device=device, seed=seed, quiet=quiet)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def segment(
    inputs: List[str] = typer.Argument(None, help="Input files, folders or globs."),
    more_inputs: List[str] = typer.Option([], "-i", "--input", help="More inputs (repeatable)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output file (one input) or folder (many)."),
    model: Path = typer.Option(..., "--model", "-m", help="model.pt written by `nca train`."),
    level: Optional[int] = typer.Option(None, "--level", min=0, help="Slides: pyramid level to segment."),
    mpp: Optional[float] = typer.Option(None, "--mpp", min=0.0, help="Slides: resolution in µm/px (level chosen, or the slide's mpp when it has none)."),
    start: Optional[float] = typer.Option(None, "--start", min=0.0, help="Videos: start time in seconds."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.0, help="Videos: seconds to read."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Videos: at most this many frames."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Videos: write an mp4 with the mask blended on the frames."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Write a downscaled overlay PNG."),
    uncertainty: Optional[Path] = typer.Option(None, "--uncertainty", help="With --ensemble: per-pixel standard deviation image."),
    ensemble: int = typer.Option(1, "--ensemble", min=1, help="Stochastic runs; the median of their logits is used."),
    state_dtype: DType = typer.Option(DType.float16, "--state-dtype", help="Storage type of the NCA state."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="e.g. 8GiB (default: available memory)."),
    tiling: Tiling = typer.Option(Tiling.auto, "--tiling", help="auto: tile only when one pass does not fit."),
    tile_size: Optional[int] = typer.Option(None, "--tile-size", min=16, help="Tile side at level 0 (default: largest that fits)."),
    impl: Impl = typer.Option(Impl.auto, "--impl", help="auto, fused or torch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of the stochastic updates."),
    num_parts: int = typer.Option(1, "--num-parts", min=1, help="Split the input list into this many parts."),
    part_id: int = typer.Option(0, "--part-id", min=0, help="Which part this process handles (0-based)."),
    resume: bool = typer.Option(False, "--continue", help="Skip inputs whose output exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
):
    """Segment slides, volumes, videos or images in a single pass."""
    from .segment.api import SegmentOptions, segment_inputs

    opts = SegmentOptions(
        level=level, mpp=mpp, start=start, duration=duration, max_frames=max_frames, overlay=overlay,
        preview=preview, uncertainty=uncertainty, ensemble=ensemble, state_dtype=state_dtype.value,
        memory_budget=memory_budget, tiling=tiling.value, tile_size=tile_size, impl=impl.value, device=device,
        seed=seed, quiet=quiet,
    )
    results = segment_inputs(list(inputs or []) + list(more_inputs), output, model, opts,
                             num_parts=num_parts, part_id=part_id, skip_existing=resume)
    if not quiet:
        for r in results:
            typer.echo(f"{r['input']} -> {r['output']}  ({r.get('status', 'done')})")


@app.command()
def benchmark(
    max_size: bool = typer.Option(False, "--max-size", help="Largest single-pass input per model within the budget."),
    curve: bool = typer.Option(False, "--curve", help="Peak memory and time against input size."),
    kernel: bool = typer.Option(False, "--kernel", help="Fused vs PyTorch NCA step."),
    task: Task = typer.Option(Task.pathology, "--task", help="pathology (square slides) , surgery (video) or radiology."),
    models: List[str] = typer.Option([], "--models", help="Subset of models (repeatable)."),
    impls: List[str] = typer.Option([], "--impl", help="Subset of implementations (repeatable)."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="e.g. 24GiB (default: available memory)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="With --curve: write a PNG plot."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="With --curve: write a CSV."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Measure the largest single-pass input, throughput and memory, side by side."""
    if not (max_size or curve or kernel):
        raise typer.BadParameter("choose at least one of --max-size, --curve, --kernel")
    from .benchmark.api import run_benchmarks

    run_benchmarks(max_size=max_size, curve=curve, kernel=kernel, task=task.value, models=models, impls=impls,
                   memory_budget=memory_budget, device=device, json_out=json_out, plot=plot, csv_out=csv_out,
                   quiet=quiet)


@app.command()
def version():
    """Print the version."""
    from . import __version__

    typer.echo(__version__)


def main(argv: Optional[list] = None) -> None:
    """Entry point: user errors end in one sentence on stderr and exit code 1."""
    from .errors import NCAError

    try:
        app(args=argv)
    except NCAError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
