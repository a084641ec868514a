"""The ``nca`` command line: each command parses its options and calls the core package.

Every command's options are declared once, as the fields of an options dataclass next to its
application (``data/options.py``, ``training/options.py``, ``vwsl/options.py``,
``segment/options.py``, ``benchmark/options.py``); the commands here are built from those
fields, and each hands the filled dataclass to its application. Heavy modules (torch,
readers, kernels) are imported inside the commands, so ``nca --help`` answers at once.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from typing import Callable, List, Literal, Optional

import typer

from .core.options import REQUIRED, NoOptions, flag_of

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


def _prepare(opts) -> None:
    from .data.prepare import prepare_from_options

    typer.echo(f"prepared dataset: {prepare_from_options(opts)}")


def _train(opts) -> None:
    from .training.run import train_from_options

    result = train_from_options(opts)
    if result.summary is not None:
        from .training.summary import format_summary

        typer.echo(json.dumps(result.summary, indent=2) if opts.as_json else format_summary(result.summary))
    elif not opts.quiet:
        typer.echo(f"run folder: {result.run_dir}  last epoch: {json.dumps(result.record)}")


def _finetune(opts) -> None:
    from .vwsl.finetune import finetune

    typer.echo(json.dumps(finetune(opts), indent=2))


def _segment(opts) -> None:
    if opts.distributed:
        from .segment.distributed import segment_distributed as segment_inputs
    else:
        from .segment.run import segment_inputs

    results = segment_inputs(opts)
    if not opts.quiet:
        for r in results:
            typer.echo(f"{r['input']} -> {r['output']}  ({r.get('status', 'done')})")


def _benchmark(opts) -> None:
    from .benchmark.api import run_benchmarks

    run_benchmarks(opts)


def _version(_opts) -> None:
    from . import __version__

    typer.echo(__version__)


def _register() -> None:
    from .benchmark.options import BenchmarkOptions
    from .data.options import PrepareOptions
    from .segment.options import SegmentOptions
    from .training.options import TrainOptions
    from .vwsl.options import FinetuneOptions

    _command("prepare", PrepareOptions, _prepare,
             "Convert a public dataset's layout (or your own folders) into a prepared dataset.")
    _command("train", TrainOptions, _train,
             "Train a model from a recipe (multi-process: torchrun --nproc_per_node N -m nca_cli train ...).")
    _command("finetune-vwsl", FinetuneOptions, _finetune,
             "Adapt a trained NCA to unlabeled images with the Variance-Weighted Segmentation Loss.")
    _command("segment", SegmentOptions, _segment, "Segment slides, volumes, videos or images in a single pass.")
    _command("benchmark", BenchmarkOptions, _benchmark,
             "Measure the largest single-pass input, throughput and memory, side by side.")
    _command("version", NoOptions, _version, "Print the version.")


_register()


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
