"""``nca segment --workers N`` / ``--scheduler`` / ``--scheduler-file``: the run on a Dask cluster.

The client submits one task per input (``dask_tasks.input_task``). An input that must be
tiled (it does not fit a worker's budget, or ``--tiling force``) comes back with its tiles:
one task per exact tile, then one task that assembles its outputs from the tile store. Tasks
get paths and options, never pixels. A worker lost mid-task costs only its tasks, which Dask
runs again (tasks are idempotent). An input that fails for its own reason is recorded with its
error; the others finish, then the run ends in one sentence naming each failed input (exit 1).
The client alone writes the run manifest (``run_manifest``) and shows one progress display.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ..core.errors import NCAError
from ..core.files import sha256_file
from ..core.progress import Progress
from .dask_cluster import dask_client, tasks_lost, workers_alive
from .dask_tasks import TaskSpec, assemble_task, input_task, tile_task
from .run_manifest import RunManifest, manifest_path, options_hash


@dataclass
class _Board:
    """The run's one progress display: inputs and tiles done, MP/s, ETA, workers, retries."""

    progress: Progress
    client: object
    inputs_total: int
    t0: float = field(default_factory=time.perf_counter)
    megapixels: float = 0.0
    inputs_done: int = 0
    tiles_done: int = 0
    tiles_total: int = 0
    _polled: float = 0.0
    _workers: int = 0
    _lost: dict = field(default_factory=dict)

    def __post_init__(self):
        self.inputs = self.progress.add("inputs", total=self.inputs_total)
        self.tiles = None

    def add_tiles(self, total: int, done: int) -> None:
        self.tiles_total += total
        self.tiles_done += done
        if self.tiles is None:
            self.tiles = self.progress.add("tiles", total=self.tiles_total)
        self.refresh()

    @property
    def retried(self) -> int:
        return sum(self._lost.values())

    def refresh(self, megapixels: float = 0.0, poll: bool = False) -> None:
        self.megapixels += megapixels
        now = time.perf_counter()
        if poll or now - self._polled > 2.0:
            self._polled = now
            self._workers = workers_alive(self.client)
            for key, count in tasks_lost(self.client).items():
                self._lost[key] = max(count, self._lost.get(key, 0))
        elapsed = now - self.t0
        done = self.inputs_done + self.tiles_done
        left = (self.inputs_total - self.inputs_done) + (self.tiles_total - self.tiles_done)
        eta = f"run ETA {elapsed / done * left:.0f} s" if done else "run ETA ?"
        info = (f"{self.megapixels / max(elapsed, 1e-9):.2f} MP/s, {eta}, {self._workers} workers, "
                f"{self.retried} retried")
        self.inputs.update(completed=self.inputs_done, info=info)
        if self.tiles is not None:
            self.tiles.update(completed=self.tiles_done, total=self.tiles_total, info=info)


def _error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if text.endswith(".") else text + "."


def segment_distributed(opts) -> list[dict]:
    """Segment the inputs of ``opts`` on the cluster it names; returns one record per input."""
    from .run import run_jobs

    jobs = run_jobs(opts)
    manifest = RunManifest(manifest_path(jobs, opts), sha256_file(opts.model), options_hash(opts), opts.resume)
    t0 = time.perf_counter()
    with Progress(opts.quiet) as progress, dask_client(opts) as (client, share):
        manifest.data["cluster_start_seconds"] = time.perf_counter() - t0
        run = _Run(client, opts, manifest, _Board(progress, client, len(jobs)))
        for i, job in enumerate(jobs):
            run.submit("input", i, TaskSpec(opts, job, share.threads, share.budget, run.run_id), input_task)
        run.wait()
        manifest.data["tasks_retried"] = run.board.retried
        manifest.write(force=True)
    return _summary(jobs, run.status)


class _Run:
    """The client's side of a run: submits tasks, takes their results as they come, keeps the
    manifest and the display up to date."""

    def __init__(self, client, opts, manifest: RunManifest, board: _Board):
        from distributed import as_completed

        self.client, self.opts, self.manifest, self.board = client, opts, manifest, board
        self.run_id = uuid.uuid4().hex
        self.pending = as_completed()
        self.role: dict[str, tuple] = {}
        self.held: dict[int, list] = {}   # an input's futures, kept until it is finished (retries stay countable)
        self.status: dict[int, tuple[str, str | None]] = {}

    def submit(self, kind: str, i: int, spec: TaskSpec, fn, *args, extra=None):
        key = f"nca-{kind}-{i}-{'-'.join(map(str, extra or ()))}-{time.time_ns()}"
        future = self.client.submit(fn, spec, *args, pure=False, key=key)
        self.role[future.key] = (kind, i, spec, extra)
        self.pending.add(future)
        if kind == "input":
            self.manifest.entry(spec.job)
        return future

    def wait(self) -> None:
        for future in self.pending:
            kind, i, spec, extra = self.role.pop(future.key)
            self.held.setdefault(i, []).append(future)
            if self.status.get(i, ("",))[0] == "failed":
                continue   # another task of this input failed already
            try:
                result = future.result()
            except Exception as exc:   # a task that raised, or one lost with too many workers
                result = {"status": "failed", "error": _error(exc)}
            if result.get("status") != "failed":
                self.manifest.task_done(spec.job, result)
            if kind == "tile" and result.get("status") != "failed":
                self.manifest.add_tile(spec.job, extra)
                self.board.tiles_done += 1
                self.board.refresh(result["megapixels"])
                self.manifest.write()
            elif result["status"] == "tiled":
                self._tiles(i, spec, result)
            else:
                self._finish(kind, i, spec, result)

    def _tiles(self, i: int, spec: TaskSpec, tiled: dict) -> None:
        """A tiled input: one task per tile its manifest does not list, then its assembly."""
        job = spec.job
        done = self.manifest.tiles_done(job, tiled["tile"]) if self.opts.resume and tiled["store_kept"] else set()
        self.manifest.set_tiled(job, tiled["tile"], len(tiled["corners"]), done)
        tiles = [self.submit("tile", i, spec, tile_task, tiled, corner, extra=corner)
                 for corner in tiled["corners"] if tuple(corner) not in done]
        self.board.add_tiles(len(tiled["corners"]), len(done))
        self.submit("assemble", i, spec, assemble_task, tiled, *tiles)
        self.manifest.write()

    def _finish(self, kind: str, i: int, spec: TaskSpec, result: dict) -> None:
        job = spec.job
        self.status[i] = (result["status"], result.get("error"))
        self.manifest.finish(job, result["status"], result.get("error"))
        self.manifest.write(force=True)
        self.board.inputs_done += 1
        self.board.refresh(result.get("megapixels", 0.0) if kind == "input" else 0.0, poll=True)
        self.held.pop(i, None)
        if result["status"] == "failed":
            self.board.progress.log(f"{job.input}: failed: {result['error']}")


def _summary(jobs, status: dict[int, tuple[str, str | None]]) -> list[dict]:
    failed = [(jobs[i], err) for i, (state, err) in sorted(status.items()) if state == "failed"]
    if failed:
        names = "; ".join(f"{job.input} ({err.rstrip('.')})" for job, err in failed)
        raise NCAError(f"{len(failed)} of {len(jobs)} inputs failed, the others were written: {names}; fix these "
                       f"inputs and run again with --continue.")
    return [{"input": str(job.input), "output": str(job.mask), "status": status.get(i, ("done",))[0],
             "metadata": str(job.metadata)} for i, job in enumerate(jobs)]
