"""The tasks of a distributed ``nca segment`` run, as the workers run them.

Tasks receive paths and options, never pixels: each opens its input and reads its own region.
A worker process loads the model once (:func:`loaded`). Every file a task writes goes through
a temporary name and a rename, so a task run again (its worker was lost) writes the same bytes.

- :func:`input_task`: one input. When it fits the worker's budget (and is not forced to tile)
  it is segmented and written exactly as the serial run does (``run.segment_one``). Otherwise
  the coarse levels are computed once and stored, and the task returns the tiles to run.
- :func:`tile_task`: one exact tile, grown from the stored coarse state, its labels written
  into its own chunk of the tile store.
- :func:`assemble_task`: the outputs of a tiled input, from the tile store, by the serial writers.

An input that fails for its own reason (``NCAError``, unreadable file) returns its one-sentence
error instead of raising, so the other inputs go on.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import io
from ..core.errors import NCAError
from ..core.machine import peak_rss_bytes
from ..core.progress import Progress
from .outputs import Job
from .tile_store import (StoredSource, labels_exist, load_coarse, open_labels, read_labels, remove_scratch, save_coarse,
                         scratch_folder)

KILL_HOOK = "NCA_TEST_KILL_TILE_MARKER"
"""Tests: a tile task kills its own worker process (SIGKILL) once, when this names a marker
file that does not exist yet (the marker makes it happen only once)."""

FAILURES = (NCAError, OSError, ValueError)


@dataclass
class TaskSpec:
    """What every task of one input gets: the options, the job (paths), this worker's share."""

    opts: object
    job: Job
    threads: int | None
    budget: int | None
    run_id: str = ""


@dataclass
class Loaded:
    predictor: object
    normalization: dict | None
    classes: list[str]
    checkpoint_sha: str
    contract: dict | None = None


_LOADED: dict[tuple, Loaded] = {}


def loaded(opts) -> Loaded:
    """The model of ``opts`` and its predictor, loaded once per worker process."""
    from ..core.device import resolve_device
    from ..core.files import sha256_file
    from ..inference.predictors import predictor_for
    from ..models.checkpoint import load_model
    from ..models.contract import contract_of
    from ..recipes import stored_recipe
    from .run import _class_names, _training_normalization, check_model_flags

    key = (str(Path(opts.model).resolve()), opts.device, opts.impl, opts.state_dtype)
    if key not in _LOADED:
        model, payload = load_model(opts.model)
        check_model_flags(model, opts)
        recipe = stored_recipe(payload.get("recipe"), payload["model_config"], opts.model)
        predictor = predictor_for(model, device=resolve_device(opts.device), impl=opts.impl,
                                  state_dtype=opts.state_dtype, window=recipe.data.patch)
        _LOADED[key] = Loaded(predictor, _training_normalization(payload), _class_names(payload, model),
                              sha256_file(opts.model), contract_of(payload))
    return _LOADED[key]


def _setup(spec: TaskSpec) -> tuple[Loaded, int, int]:
    """Threads set, model loaded; returns it with (budget, available memory)."""
    from ..core.machine import available_memory

    if spec.threads is not None and torch.get_num_threads() != spec.threads:
        torch.set_num_threads(spec.threads)
    model = loaded(spec.opts)
    available = available_memory(model.predictor.device)
    budget = spec.budget if spec.budget is not None else _worker_limit()
    return model, min(budget, available) if budget else available, available


def _worker_limit() -> int | None:
    """The memory limit of the Dask worker running this task (``dask worker --memory-limit``),
    None when it has none (or the task runs outside a worker)."""
    try:
        from distributed import get_worker

        return get_worker().memory_manager.memory_limit or None
    except (ImportError, ValueError, AttributeError):
        return None


def _open(job: Job, opts):
    """The input as ``run.segment_one`` opens it (its resolution is chosen by ``at_resolution``)."""
    return io.open_input(job.input, level=opts.level, start=opts.start, duration=opts.duration,
                         max_frames=opts.max_frames)


def _quiet(_line: str) -> None:
    """Notes of a task (the serial run prints them; the client's summary names failures)."""


def input_task(spec: TaskSpec) -> dict:
    """One input: done (segmented whole), skipped (complete), tiled (tiles to run) or failed."""
    opts, job = spec.opts, spec.job
    t0 = time.perf_counter()
    try:
        if opts.resume and job.complete():
            return {"status": "skipped (complete)"}
        job.clear_partials()
        model, budget, available = _setup(spec)
        tiled = _coarse(spec, model, budget)
        if tiled is not None:
            return tiled
        from .run import segment_one

        record = segment_one(job, model.predictor, opts, Progress(quiet=True), budget=budget, available=available,
                             normalization=model.normalization, checkpoint_sha=model.checkpoint_sha,
                             classes=model.classes, contract=model.contract)
        return {"status": "done", "megapixels": record["megapixels"], "seconds": time.perf_counter() - t0,
                "worker_peak_bytes": peak_rss_bytes()}
    except FAILURES as exc:
        return {"status": "failed", "error": str(exc)}


def _coarse(spec: TaskSpec, model: Loaded, budget: int) -> dict | None:
    """Tiled inputs: the coarse levels, stored; the tiles to run (those with tissue, as the serial
    run picks them). None when the input is segmented whole (it fits, it is resampled, or it is an
    ensemble or a patch-wise model's input)."""
    from ..core.machine import current_rss_bytes
    from ..inference.octree import drive
    from ..inference.predictors import OctreePredictor
    from ..inference.sources import FileSource
    from ..inference.tiled import plan_tiles
    from ..io.normalize import Normalization
    from ..models.schedule import LevelSchedule
    from .resolution import at_resolution
    from .run import _plan
    from .tissue import TissueRun, tiling_for, tissue_for

    opts, job, predictor = spec.opts, spec.job, model.predictor
    if not isinstance(predictor, OctreePredictor) or opts.ensemble > 1:
        return None
    source = opened = _open(job, opts)
    try:
        predictor.check(opened, job.input)
        io.check_finite_input(opened)
        source, image, resolution = at_resolution(opened, opts, model.contract or {}, _quiet)
        if image is not source:        # resized, its mask written back at the input's size: one task
            return None
        tissue = tissue_for(source, opts, _quiet)
        within = TissueRun(tissue, float(image.meta.get("downsample") or 1.0)) if tissue is not None else None
        tiling, tile_size = tiling_for(opts, tissue, predictor.model, predictor.device.type)
        norm = Normalization.from_entry(model.normalization, image.dtype)
        image.read(tuple(slice(0, 1) for _ in image.spatial_shape))
        predictor.prepare(image)
        plan = _plan(predictor, image, source, opts, (tiling, tile_size), budget=budget,
                     baseline=current_rss_bytes(), normalization=norm, name=job.input)
        if plan.mode != "tiled":
            return None
        c = predictor.config
        normalizer = predictor.normalizer(image, norm)
        pyramid = FileSource(image, c.factors, c.pyramid, predictor.dtype, predictor.device, keep=True,
                             normalizer=normalizer)
        with torch.inference_mode():
            state = drive(predictor.model, pyramid, impl=predictor.impl, seed=opts.seed, state_dtype=predictor.dtype,
                          device=predictor.device, stop_level=plan.split)
        folder = scratch_folder(job.mask)
        save_coarse(folder, state, pyramid.levels[1:plan.split])
        kept = labels_exist(folder, image.spatial_shape, plan.tile)   # tiles of an earlier run are there
        open_labels(folder, image.spatial_shape, plan.tile)
        schedule = LevelSchedule.of(predictor.model, image.spatial_shape)
        cores = [t.core for t in plan_tiles(schedule, plan.split, plan.tile)]
        corners = [[s.start for s in core] for core in cores if within is None or within.keep(core)]
        return {"status": "tiled", "split": plan.split, "tile": list(plan.tile), "corners": corners,
                "shape": list(image.spatial_shape), "shapes": [list(s) for s in pyramid.shapes],
                "normalizer": normalizer, "plan": plan, "store_kept": kept, "tissue": within,
                "resolution": resolution}
    finally:
        source.close()


def _kill_hook() -> None:
    marker = os.environ.get(KILL_HOOK)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def tile_task(spec: TaskSpec, tiled: dict, corner: list[int]) -> dict:
    """One exact tile of a tiled input into its chunk of the tile store."""
    from ..inference.octree import step_runner
    from ..inference.outputs import labels_of
    from ..inference.tiled import grow_tile, tile_at
    from ..models.schedule import LevelSchedule
    from .resolution import at_resolution

    t0 = time.perf_counter()
    model, _, _ = _setup(spec)
    _kill_hook()
    predictor, opts, job = model.predictor, spec.opts, spec.job
    folder = scratch_folder(job.mask)
    coarse, levels = load_coarse(folder)
    opened = _open(job, opts)
    try:
        opened, image, _ = at_resolution(opened, opts, model.contract or {}, _quiet)   # as the coarse task read it
        shapes = [tuple(s) for s in tiled["shapes"]]
        source = StoredSource(image, shapes, levels, predictor.dtype, tiled["normalizer"], predictor.device)
        schedule = LevelSchedule.of(predictor.model, shapes[0])
        split = tiled["split"]
        tile = tile_at(schedule, corner, tiled["tile"], split)
        c = predictor.config
        with torch.inference_mode():
            state = grow_tile(predictor.model, source, schedule, coarse, tile, split,
                              run=step_runner(predictor.impl), seed=opts.seed)
            labels = labels_of(state[0][..., c.input_channels:c.input_channels + c.output_channels].float())
        del state
        store = open_labels(folder, shapes[0], tiled["tile"])
        store[tuple(tile.core)] = labels.numpy()
    finally:
        opened.close()
    return {"megapixels": float(np.prod([s.stop - s.start for s in tile.core])) / 1e6,
            "seconds": time.perf_counter() - t0, "worker_peak_bytes": peak_rss_bytes()}


def _written_by(job: Job, run_id: str) -> bool:
    """Whether this run's assembly of ``job`` already finished (its metadata names the run)."""
    import json

    try:
        return job.complete() and json.loads(job.metadata.read_text()).get("run_id") == run_id
    except (OSError, ValueError):
        return False


def assemble_task(spec: TaskSpec, tiled: dict, *tiles_done) -> dict:
    """The outputs of a tiled input from its tile store, as the serial run writes them; the
    store is removed after the run metadata (written last)."""
    from ..inference.windows import label_array
    from .outputs import Rendering, write_metadata, write_outputs
    from .resolution import at_resolution
    from .run import run_record

    t0 = time.perf_counter()
    opts, job = spec.opts, spec.job
    try:
        folder = scratch_folder(job.mask)
        if _written_by(job, spec.run_id):   # run again after it finished (its worker was lost before it reported)
            remove_scratch(folder)
            return {"status": "done", "megapixels": float(np.prod(tiled["shape"])) / 1e6, "seconds": 0.0}
        job.clear_partials()
        model, budget, available = _setup(spec)
        image = _open(job, opts)
        try:
            image, _, _ = at_resolution(image, opts, model.contract or {}, _quiet)   # as the coarse task read it
            labels = read_labels(folder, label_array(tiled["shape"], folder))
            within = tiled.get("tissue")
            if within is not None:
                within.apply(labels)      # as the serial run: the mask ANDed with the tissue
            render = Rendering(model.classes, opts.preview_style, opts.geojson_tolerance,
                               float(image.meta.get("downsample") or 1.0), checkpoint_sha256=model.checkpoint_sha,
                               tissue=within.tissue if within is not None else None)
            write_outputs(job, image, labels, render, None)
            plan = tiled["plan"]
            record = run_record(job, image, opts, model.predictor.device, labels, t0, model.checkpoint_sha) | {
                "impl": model.predictor.impl, "state_dtype": model.predictor.dtype_name, "mode": plan.mode,
                "split_level": plan.split, "tile": plan.tile, "tiles": plan.tiles,
                "predicted_peak_bytes": plan.predicted_bytes, "ensemble": 1, "memory_budget_bytes": budget,
                "available_bytes": available, "distributed": True, "run_id": spec.run_id,
                "segmented_shape": tiled["shape"], **tiled.get("resolution", {}),
                **(within.record() if within is not None else {"tissue": "off"}),
            }
            del labels
            write_metadata(job, record)
        finally:
            image.close()
        remove_scratch(folder)
        return {"status": "done", "megapixels": record["megapixels"], "seconds": time.perf_counter() - t0,
                "worker_peak_bytes": peak_rss_bytes()}
    except FAILURES as exc:
        return {"status": "failed", "error": str(exc)}
