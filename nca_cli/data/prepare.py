"""``nca prepare``: turn a source dataset (or synthetic data) into a prepared dataset.

``prepare(kind, src, dst, **options)`` dispatches on ``kind`` (see ``KINDS``). Options
common to all kinds: ``seed`` (split seed, default 0), ``val_fraction`` (0.1),
``test_fraction`` (0.2), ``overwrite`` (False); the rest go to the converter (see each
module's ``fill_*`` keywords).

``kind="synthetic"`` takes no ``src``: options ``kind`` (pathology, radiology, surgery,
xray, microct), ``cases``, ``size``, ``seed`` and ``shifted`` go to ``make_synthetic``, which writes the
raw layout into ``dst/raw-synthetic-<kind>/``; the matching converter then turns it into
the prepared dataset at ``dst`` (named ``synthetic-<kind>``, ``synthetic: true``). Both are
built in one partial folder and appear together, or not at all.

``prepare_from_options(opts)`` is ``nca prepare``: its :class:`PrepareOptions` turned into
these keywords.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from ..core.errors import NCAError
from ..core.progress import Progress
from .chexmask import fill_chexmask
from .cholecseg8k import fill_cholecseg8k
from .generic import fill_generic
from .msd_prostate import fill_msd_prostate
from .options import PrepareOptions
from .peso import fill_peso
from .synthetic import MICROCT_CLASSES, SYNTHETIC_KINDS, make_synthetic
from .writer import DatasetWriter

FILLERS: dict[str, Callable] = {
    "msd-prostate": fill_msd_prostate,
    "peso": fill_peso,
    "cholecseg8k": fill_cholecseg8k,
    "chexmask": fill_chexmask,
    "generic": fill_generic,
}
KINDS = (*FILLERS, "synthetic")
SYNTHETIC_SOURCE = {"pathology": "peso", "radiology": "msd-prostate", "surgery": "cholecseg8k", "xray": "chexmask",
                    "microct": "generic"}
SYNTHETIC_FILL = {"microct": {"classes": list(MICROCT_CLASSES), "modality": "microCT"}}  # converter defaults
WRITER_OPTIONS = ("seed", "val_fraction", "test_fraction", "test_cases", "overwrite")
SYNTHETIC_OPTIONS = ("kind", "cases", "size", "shifted")


def _check_options(kind: str, fill: Callable, options: dict, extra: tuple[str, ...] = ()) -> None:
    accepted = [p for p in inspect.signature(fill).parameters if p not in ("src", "writer")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        allowed = ", ".join([*WRITER_OPTIONS, *extra, *accepted])
        raise NCAError(f"The option {unknown[0]!r} does not apply to `prepare {kind}`; use only {allowed}.")


def _names(text: str | None) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def prepare_from_options(opts: PrepareOptions) -> Path:
    """``nca prepare``: the options of the command turned into :func:`prepare`'s keywords (options
    for one kind only are passed when given, so another kind refuses them)."""
    options = {"seed": opts.seed, "overwrite": opts.overwrite, "val_fraction": opts.val_fraction,
               "test_fraction": opts.test_fraction}
    if opts.test_cases:
        options["test_cases"] = _names(opts.test_cases)
    options.update({name: getattr(opts, name) for name in opts.CONVERTER_SWITCHES if getattr(opts, name)})
    if opts.kind == "synthetic":
        options.update(kind=opts.synthetic_kind, cases=opts.cases, shifted=opts.shifted)
        if opts.size:
            options["size"] = opts.size
    if opts.classes:
        options["classes"] = _names(opts.classes)
    return prepare(opts.kind, opts.src, opts.output, quiet=opts.quiet, **options)


def prepare(kind: str, src, dst, /, *, quiet: bool = True, **options) -> Path:
    """Prepare a dataset of ``kind`` from ``src`` into ``dst``; returns ``dst``. Progress (cases
    written) is shown unless ``quiet``."""
    if kind not in KINDS:
        raise NCAError(f"Unknown dataset kind {kind!r}; use one of {', '.join(KINDS)}.")
    with Progress(quiet) as progress:
        task = progress.add("cases written")
        notes: list[str] = []
        out = _prepare(kind, src, Path(dst), options, lambda case_id, n: task.update(completed=n, info=case_id), notes)
        for note in notes:
            progress.log(f"note: {note}")
        return out


def _prepare(kind: str, src, dst: Path, options: dict, on_case, notes: list) -> Path:
    writer_options = {k: options.pop(k) for k in WRITER_OPTIONS if k in options}
    if kind != "synthetic":
        fill = FILLERS[kind]
        _check_options(kind, fill, options)
        with DatasetWriter(dst, **writer_options) as writer:
            writer.on_case = on_case
            writer.notes = notes
            fill(src, writer, **options)
        return dst

    if src is not None:
        raise NCAError(f"Synthetic data is generated, so the source {src} is not used; leave the source out.")
    synth = {k: options.pop(k) for k in SYNTHETIC_OPTIONS if k in options}
    which = synth.pop("kind", None)
    if which not in SYNTHETIC_KINDS:
        raise NCAError(f"Synthetic data needs kind set to one of {', '.join(SYNTHETIC_KINDS)}, not {which!r}.")
    source = SYNTHETIC_SOURCE[which]
    fill = FILLERS[source]
    _check_options(f"synthetic {which}", fill, options, SYNTHETIC_OPTIONS)
    seed = writer_options.get("seed", 0)
    with DatasetWriter(dst, **writer_options) as writer:
        writer.on_case = on_case
        writer.notes = notes
        raw = make_synthetic(which, writer.root / f"raw-synthetic-{which}", seed=seed, **synth)
        fill(raw, writer, **{**SYNTHETIC_FILL.get(which, {}), **options})
        suffix = "-shifted" if synth.get("shifted") else ""
        writer.set_info(
            name=f"synthetic-{which}{suffix}",
            synthetic=True,
            source={"format": source, "path": f"raw-synthetic-{which}", "generator": "nca_cli.data.synthetic", "seed": seed, **synth},
        )
    return dst
