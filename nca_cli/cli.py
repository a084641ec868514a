"""The ``nca`` command line: each command parses its options and calls the core package.

The options of ``segment``, ``finetune-vwsl`` and ``benchmark`` are declared once, as fields of
their options dataclass; the commands here are built from those fields. Heavy modules (torch,
readers, kernels) are imported inside the commands, so ``nca --help`` answers at once.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Callable, List, Literal, Optional

import typer

from .core.options import REQUIRED, flag_of

app = typer.Typer(
    name="nca",
    help="Segment very large medical images in one pass with Neural Cellular Automata.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _command(name: str, options_cls: type, run: Callable, help: str) -> None:
    """Register ``name`` with one Typer parameter per field of ``options_cls``; the command
    builds the dataclass and hands it to ``run``."""
    hints = typing.get_type_hints(options_cls)
    params = []
    for f in dataclasses.fields(options_cls):
        spec = flag_of(f)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = None if spec.argument else f.default_factory()
        else:
            default = REQUIRED
        kwargs = {"help": spec.help, "hidden": spec.hidden}
        if spec.min is not None:
            kwargs["min"] = spec.min
        if spec.max is not None:
            kwargs["max"] = spec.max
        info = typer.Argument(default, **kwargs) if spec.argument else typer.Option(default, *spec.flags, **kwargs)
        annotation = Literal[spec.choices] if spec.choices else hints[f.name]
        if spec.argument and typing.get_origin(annotation) in (list, List):
            annotation = Optional[annotation]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))

    def command(**values):
        for f in dataclasses.fields(options_cls):
            if f.default_factory is not dataclasses.MISSING and values.get(f.name) is None:
                values[f.name] = f.default_factory()
        return run(options_cls(**values))

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = help
    command.__name__ = name.replace("-", "_")
    app.command(name)(command)


@app.command()
def prepare(
    kind: str = typer.Argument(..., help="msd-prostate, peso, cholecseg8k, chexmask, generic or synthetic."),
    src: Optional[Path] = typer.Argument(None, help="Source folder in the dataset's own layout (not for synthetic)."),
    output: Path = typer.Option(..., "-o", "--output", help="Prepared dataset folder to create."),
    synthetic_kind: str = typer.Option("pathology", "--kind", help="synthetic only: pathology, radiology, surgery, xray or microct."),
    cases: Optional[int] = typer.Option(None, "--cases", min=1, help="synthetic only: number of cases (default per kind)."),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="synthetic only: slide/image side (default per kind)."),
    shifted: bool = typer.Option(False, "--shifted", help="synthetic xray and pathology only: the shifted target domain (other patients, each image a "
                                 "phone photo of a monitor: washed-out tone, tilt, glare, moiré, blur, noise)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val/test split (and of synthetic data)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="generic only: comma-separated class names."),
    binary: bool = typer.Option(False, "--binary",
                                help="generic only: merge every non-zero label into one foreground class "
                                     "(instance masks: one id per object)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.99,
                                       help="Share of patients for validation."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=0.99,
                                        help="Share of patients held out for testing."),
    test_cases: Optional[str] = typer.Option(None, "--test-cases",
                                             help="Comma-separated case ids to hold out for testing (instead of "
                                                  "--test-fraction)."),
    skip_unlabeled: bool = typer.Option(False, "--skip-unlabeled",
                                        help="generic only: leave out images without a mask (named in a note) "
                                             "instead of refusing them."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress display."),
):
    """Convert a public dataset's layout (or your own folders) into a prepared dataset."""
    from .data.prepare import prepare as run_prepare

    options = {"seed": seed, "overwrite": overwrite, "quiet": quiet, "val_fraction": val_fraction,
               "test_fraction": test_fraction}
    if test_cases:
        options["test_cases"] = [c.strip() for c in test_cases.split(",") if c.strip()]
    if binary:
        options["binary"] = True
    if skip_unlabeled:
        options["skip_unlabeled"] = True
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
    recipe: str = typer.Argument(..., help="Recipe YAML, or the name of a shipped recipe (e.g. octree_pathology)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Run folder (default: runs/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", "--continue",
                                help="Continue the run in the run folder, with the recipe recorded there."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override training.epochs."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe key: section.key=value (repeatable)."),
    impl: Literal["auto", "fused", "torch"] = typer.Option("auto", "--impl", help="Inference path used for validation."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Validate the recipe (and its dataset, when present), build the model, print its summary."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
):
    """Train a model from a recipe (multi-process: torchrun --nproc_per_node N -m nca_cli train ...)."""
    from .recipes import load_recipe

    if resume and dry_run:
        raise typer.BadParameter("--dry-run validates a new run; drop --resume.")
    changes = None
    if resume:
        from .training.trainer import resumed_recipe

        first = load_recipe(recipe) if output is None else None
        run_dir = output or Path("runs") / first["name"]
        r, changes = resumed_recipe(run_dir, list(overrides), epochs)
    else:
        r = load_recipe(recipe, overrides + ([f"training.epochs={epochs}"] if epochs else []))
        run_dir = output or Path("runs") / r["name"]
    if dry_run:
        from .training.summary import format_summary, model_summary

        summary = model_summary(r)
        typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
        return
    from .training.trainer import train as run_train

    record = run_train(r, run_dir, resume=resume, device=device, quiet=quiet, impl=impl, changes=changes)
    if not quiet:
        typer.echo(f"run folder: {run_dir}  last epoch: {json.dumps(record)}")


def _finetune(opts) -> None:
    from .vwsl.finetune import finetune

    typer.echo(json.dumps(finetune(opts), indent=2))


def _segment(opts) -> None:
    from .segment.run import segment_inputs

    results = segment_inputs(opts)
    if not opts.quiet:
        for r in results:
            typer.echo(f"{r['input']} -> {r['output']}  ({r.get('status', 'done')})")


def _benchmark(opts) -> None:
    from .benchmark.api import run_benchmarks

    run_benchmarks(opts)


def _register() -> None:
    from .benchmark.options import BenchmarkOptions
    from .segment.options import SegmentOptions
    from .vwsl.options import FinetuneOptions

    _command("finetune-vwsl", FinetuneOptions, _finetune,
             "Adapt a trained NCA to unlabeled images with the Variance-Weighted Segmentation Loss.")
    _command("segment", SegmentOptions, _segment, "Segment slides, volumes, videos or images in a single pass.")
    _command("benchmark", BenchmarkOptions, _benchmark,
             "Measure the largest single-pass input, throughput and memory, side by side.")


_register()


@app.command()
def version():
    """Print the version."""
    from . import __version__

    typer.echo(__version__)


def main(argv: Optional[list] = None) -> None:
    """Entry point: user errors end in one sentence on stderr and exit code 1."""
    from .core.errors import NCAError
    from .core import signals
    from .core.machine import return_freed_memory

    return_freed_memory()
    signals.install()
    try:
        app(args=argv)
    except NCAError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, SystemExit) as exc:   # typer turns Ctrl-C into SystemExit(130)
        if (said := signals.message(exc)) is None:
            raise
        line, code = said
        typer.echo(line, err=True)
        sys.exit(code)
