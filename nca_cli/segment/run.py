"""``nca segment``: many inputs to masks, one input at a time, through the model's predictor.

1. Expand the inputs (files, folders, globs), keep this process's part (``--num-parts``).
2. Name and check every output first (``outputs.plan_jobs``); nothing runs when a name is
   wrong, taken or unwritable.
3. Per input: skip complete results with ``--continue``; open it, check it against the model,
   plan the memory (refused before it starts when it cannot fit), predict band by band,
   write the outputs, then the run metadata.
"""
from __future__ import annotations

import glob
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__, io
from ..core.device import resolve_device
from ..core.errors import NCAError
from ..core.files import sha256_file
from ..core.machine import (
    available_memory,
    current_rss_bytes,
    peak_rss_bytes,
    reset_peak_rss,
    trim_heap,
)
from ..core.progress import Progress
from ..core.sizes import format_size, parse_size
from ..inference.memory import usable_budget
from .options import SegmentOptions
from .outputs import Job, Rendering, plan_jobs, write_metadata, write_outputs


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given, folders to their supported files (a DICOM series folder stays whole),
    globs expanded; duplicates removed, order kept."""
    from ..io.volume import dicom_series_files

    out: list[Path] = []
    for item in items:
        matches = sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else [item]
        if not matches:
            raise NCAError(f"No input matches '{item}'; check the pattern.")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                if dicom_series_files(p):
                    out.append(p)
                    continue
                found = sorted(q for q in p.iterdir() if q.is_file() and io.is_supported(q) and not q.name.startswith(".")
                               and ".partial" not in q.name)
                found += sorted(q for q in p.iterdir() if q.is_dir() and dicom_series_files(q))
                if not found:
                    raise NCAError(f"The folder {p} holds no supported image; pass a folder of slides, volumes, "
                                   f"videos or images.")
                out.extend(found)
            elif p.exists():
                out.append(p)
            else:
                raise NCAError(f"The input {p} does not exist; check the path.")
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def memory_budget(opts: SegmentOptions, device: torch.device, progress: Progress) -> tuple[int, int]:
    """(budget, what the device has available); a budget above what is available is capped."""
    available = available_memory(device)
    if opts.memory_budget is None:
        return available, available
    budget = parse_size(opts.memory_budget)
    if budget <= 0:
        raise NCAError(f"The memory budget '{opts.memory_budget}' must be positive; write it like 8GiB.")
    if budget > available:
        progress.log(f"note: --memory-budget {format_size(budget)} is more than the {format_size(available)} this "
                     f"{device.type} device has available; using {format_size(available)}.")
        budget = available
    return budget, available


def run_jobs(opts: SegmentOptions) -> list[Job]:
    """This part's jobs of ``opts``: the options checked, the inputs expanded, every output named
    and checked (nothing runs yet)."""
    items = opts.all_inputs
    if not items:
        raise NCAError("No input given; pass files, folders or globs (e.g. nca segment slide.svs -o mask.tif -m model.pt).")
    if not 0 <= opts.part_id < opts.num_parts:
        raise NCAError(f"--part-id {opts.part_id} must lie in 0..{opts.num_parts - 1} for --num-parts {opts.num_parts}.")
    if opts.ensemble == 1 and opts.uncertainty is not None:
        raise NCAError("--uncertainty needs --ensemble N with N >= 2 (the spread of N runs).")
    inputs = expand_inputs(items)
    return plan_jobs(inputs, opts)[opts.part_id::opts.num_parts]


def check_model_flags(model, opts: SegmentOptions) -> None:
    """Options only the NCAs use, given with another model: refused in one sentence."""
    from ..models.registry import architecture_of

    if not architecture_of(model).is_nca and opts.nca_only_flags():
        flags = opts.nca_only_flags()
        many = len(flags) > 1
        raise NCAError(f"{', '.join(flags)} {'apply' if many else 'applies'} to NCA models only, and {opts.model} "
                       f"holds a {model.config.architecture} model; drop {'them' if many else 'it'}.")


def segment_inputs(opts: SegmentOptions) -> list[dict]:
    """Segment every input of ``opts``; returns one record per input (done or skipped)."""
    from ..inference.predictors import predictor_for
    from ..models.checkpoint import load_model
    from ..models.contract import contract_of
    from ..recipes import stored_recipe

    jobs = run_jobs(opts)
    model, payload = load_model(opts.model)
    check_model_flags(model, opts)
    device = resolve_device(opts.device)
    recipe = stored_recipe(payload.get("recipe"), payload["model_config"], opts.model)
    predictor = predictor_for(model, device=device, impl=opts.impl, state_dtype=opts.state_dtype,
                              window=recipe.data.patch)
    normalization = _training_normalization(payload)
    classes = _class_names(payload, model)
    checkpoint_sha = sha256_file(opts.model)
    contract = contract_of(payload)
    results = []
    with Progress(opts.quiet) as progress:
        budget, available = memory_budget(opts, device, progress)
        for job in jobs:
            if opts.resume and job.complete():
                results.append({"input": str(job.input), "output": str(job.mask), "status": "skipped (complete)"})
                continue
            job.clear_partials()
            record = segment_one(job, predictor, opts, progress, budget=budget, available=available,
                                 normalization=normalization, checkpoint_sha=checkpoint_sha, classes=classes,
                                 contract=contract)
            results.append({"input": str(job.input), "output": str(job.mask), "status": "done",
                            "metadata": str(job.metadata), "megapixels_per_second": record["megapixels_per_second"],
                            "peak_memory_bytes_per_pixel": record["peak_memory_bytes_per_pixel"]})
    return results


def _class_names(payload: dict, model) -> list[str]:
    """The foreground class names the model was trained on (recorded by `nca train`)."""
    from ..models.registry import architecture_of

    names = (payload.get("metadata") or {}).get("classes")
    count = architecture_of(model).classes(model.config.output_channels)
    if isinstance(names, list) and len(names) == count:
        return [str(n) for n in names]
    return [f"class {k + 1}" for k in range(count)]


def _training_normalization(payload: dict) -> dict | None:
    """How the model's training data was normalised (recorded by `nca train`), else None."""
    entry = (payload.get("metadata") or {}).get("normalization")
    return entry if isinstance(entry, dict) else None


def segment_one(job: Job, predictor, opts: SegmentOptions, progress: Progress, *, budget: int, available: int,
                normalization: dict | None, checkpoint_sha: str, classes: list[str], contract: dict | None = None) -> dict:
    """Segment one input into its outputs; returns the run metadata (also written beside the mask)."""
    from ..io.normalize import Normalization
    from ..io.resize import resize_labels
    from .resolution import at_resolution
    from .tissue import TissueRun, tiling_for, tissue_for

    t_start = time.perf_counter()
    device = predictor.device
    source = io.open_input(job.input, level=opts.level, start=opts.start, duration=opts.duration,
                           max_frames=opts.max_frames)
    try:
        predictor.check(source, job.input)
        io.check_finite_input(source)
        source, image, resolution = at_resolution(source, opts, contract or {}, progress.log)
        tissue = tissue_for(source, opts, progress.log)
        within = TissueRun(tissue, float(image.meta.get("downsample") or 1.0)) if tissue is not None else None
        tiling, tile_size = tiling_for(opts, tissue, predictor.model, device.type)
        norm = Normalization.from_entry(normalization, image.dtype)
        image.read(tuple(slice(0, 1) for _ in image.spatial_shape))   # readers that decode whole files do it now
        predictor.prepare(image)
        trim_heap()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        meter = "VmHWM of this input" if device.type == "cpu" and reset_peak_rss() else "process peak"
        rss0 = current_rss_bytes()
        baseline = rss0 if device.type == "cpu" else torch.cuda.memory_allocated(device)
        plan = _plan(predictor, image, source, opts, (tiling, tile_size), budget=budget, baseline=baseline,
                     normalization=norm, name=job.input)
        tracker = _Tracker(progress, job.input.name, image.spatial_shape, getattr(predictor.config, "levels", 0))
        prediction = predictor.predict(image, plan, normalization=norm, seed=opts.seed, ensemble=opts.ensemble,
                                       want_std=opts.uncertainty is not None, scratch=job.mask.parent,
                                       on_run=tracker.run, on_level=tracker.level, on_tile=tracker.tile,
                                       keep_tile=within.keep if within is not None else None)
        tracker.done()
        labels, std, info = prediction.labels, prediction.std, prediction.info
        if within is not None:
            within.apply(labels)
        if image is not source:
            labels = resize_labels(labels, source.spatial_shape)
            std = resize_labels(std, source.spatial_shape) if std is not None else None
        del prediction
        render = Rendering(classes, opts.preview_style, opts.geojson_tolerance,
                           float(source.meta.get("downsample") or 1.0), checkpoint_sha256=checkpoint_sha, tissue=tissue)
        write_outputs(job, source, labels, render, std)
        record = run_record(job, source, opts, device, labels, t_start, checkpoint_sha) | info | {
            "memory_budget_bytes": budget, "available_bytes": available, "baseline_rss_bytes": rss0,
            "peak_meter": meter, "predicted_phases_bytes": plan.phases,
            "normalization": norm.entry(str(image.dtype)), "scale": resolution.pop("scale", None),
            "segmented_shape": list(image.spatial_shape), **resolution,
            **(within.record() if within is not None else {"tissue": "off"}),
        }
        write_metadata(job, record)
        return record
    finally:
        source.close()


def _plan(predictor, image, source, opts: SegmentOptions, tiling: tuple[str, int | None], *, budget: int,
          baseline: int, normalization, name):
    """The memory plan of segmenting ``image``: tiles chosen for a slide's tissue run as deep as
    they fit; labels written back at the source's size are counted."""
    from .tissue import deepest_split

    want_std = opts.uncertainty is not None
    plan = predictor.plan(image, budget=budget, tiling=tiling[0], tile_size=tiling[1], ensemble=opts.ensemble,
                          baseline=baseline, name=str(name), normalization=normalization, want_std=want_std)
    if tiling[0] != opts.tiling:
        plan = deepest_split(plan, predictor, image, budget=budget, baseline=baseline, normalization=normalization,
                             ensemble=opts.ensemble, want_std=want_std)
    if image is not source:
        _plan_write_back(plan, image, source, baseline, budget, name)
    return plan


def _plan_write_back(plan, image, source, baseline: int, budget: int, name) -> None:
    """Add to ``plan`` the labels written back at the input's size, and the writer's copies."""
    plan.phases["write_input_size"] = 3 * int(np.prod(source.spatial_shape))
    plan.predicted_bytes = max(plan.predicted_bytes, baseline + plan.phases["write_input_size"]
                               + int(np.prod(image.spatial_shape)))
    if plan.predicted_bytes > usable_budget(budget):
        raise NCAError(f"Segmenting {name} needs about {format_size(plan.predicted_bytes)} but the budget "
                       f"is {format_size(budget)}; raise --memory-budget or resize less.")


def run_record(job: Job, image, opts: SegmentOptions, device, labels: np.ndarray, t_start: float,
               checkpoint_sha: str) -> dict:
    """The run_metadata.json fields every model kind shares (measured now: wall time, peak memory)."""
    wall = time.perf_counter() - t_start
    shape = image.spatial_shape
    cells = int(np.prod(shape))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    return {
        "tool": "nca", "version": __version__, "input": str(job.input), "checkpoint": str(opts.model),
        "checkpoint_sha256": checkpoint_sha,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "command": " ".join(sys.argv), "seed": opts.seed, "device": str(device), "input_kind": image.kind,
        "shape": list(shape), "megapixels": cells / 1e6, "peak_memory_bytes": int(peak),
        "peak_memory_bytes_per_pixel": peak / cells, "wall_seconds": wall, "megapixels_per_second": cells / 1e6 / wall,
        "foreground_fraction": float((labels > 0).mean()), "host": platform.node(), "torch": torch.__version__,
    }


class _Tracker:
    """Progress of one input: levels and tiles (NCAs) or windows (patch-wise models), then MP/s."""

    def __init__(self, progress: Progress, name: str, shape, levels: int):
        self.progress = progress
        self.name = name
        self.levels_total = levels
        self.megapixels = float(np.prod(shape)) / 1e6
        self.levels = self.tiles = None
        self.t0 = time.perf_counter()

    def _clear(self) -> None:
        for task in (self.levels, self.tiles):
            if task is not None:
                task.remove()
        self.levels = self.tiles = None

    def run(self, run: int, runs: int, plan) -> None:
        self._clear()
        label = self.name + (f" run {run + 1}/{runs}" if runs > 1 else "")
        tiled = plan.mode == "tiled"
        self.levels = self.progress.add(f"{label} levels", total=self.levels_total - (plan.split if tiled else 0))
        if tiled:
            self.tiles = self.progress.add(f"{label} tiles", total=plan.tiles)

    def level(self, level: int) -> None:
        if self.levels is not None and self.levels.completed < (self.levels.total or 0):
            self.levels.advance(info=f"level {level} done")

    def tile(self, done: int, total: int) -> None:
        if self.tiles is None:
            self.tiles = self.progress.add(f"{self.name} windows", total=total)
        self.tiles.update(completed=done, total=total)

    def done(self) -> None:
        seconds = time.perf_counter() - self.t0
        self._clear()
        self.progress.log(f"{self.name}: {self.megapixels:.1f} MP in {seconds:.1f} s "
                          f"({self.megapixels / max(seconds, 1e-9):.2f} MP/s)")
