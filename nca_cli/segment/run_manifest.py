"""The manifest of a distributed ``nca segment`` run, written by the client only.

It records which inputs are done (or failed, with their error) and, for inputs tiled across
workers, which tiles are in the tile store, with the checkpoint's and the options' hashes.
``--continue`` after a killed client trusts its tiles only when both hashes and the tile
size match, and recomputes only the tiles it does not list (complete inputs are recognised
by their run metadata, as in a serial run). The file is rewritten atomically.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..core.files import write_json
from ..io.formats import strip_suffix

# Options that change how the run is carried out, not what it writes.
_NOT_HASHED = {"resume", "quiet", "workers", "scheduler", "scheduler_file", "dashboard", "memory_budget", "tile_size",
               "num_parts", "part_id"}


def options_hash(opts) -> str:
    fields = {k: str(v) for k, v in sorted(vars(opts).items()) if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def manifest_path(jobs, opts) -> Path:
    """``<mask stem>.run_manifest.json`` beside a single mask, else ``run_manifest.json`` in the
    output folder (one per part with ``--num-parts``)."""
    part = f".part{opts.part_id}of{opts.num_parts}" if opts.num_parts > 1 else ""
    output = Path(opts.output)
    if len(jobs) == 1 and jobs[0].mask == output:
        return output.with_name(f"{strip_suffix(output)}{part}.run_manifest.json")
    return output / f"run_manifest{part}.json"


class RunManifest:
    def __init__(self, path: Path, checkpoint_sha: str, opts_sha: str, resume: bool):
        self.path = path
        self.data = {"checkpoint_sha256": checkpoint_sha, "options_sha256": opts_sha, "inputs": {}}
        self.previous: dict = {}
        if resume and path.is_file():
            try:
                old = json.loads(path.read_text())
                if old.get("checkpoint_sha256") == checkpoint_sha and old.get("options_sha256") == opts_sha:
                    self.previous = old.get("inputs", {})
            except (OSError, ValueError):
                pass
        self._written = 0.0

    def entry(self, job) -> dict:
        return self.data["inputs"].setdefault(str(job.input), {"output": str(job.mask), "status": "pending"})

    def tiles_done(self, job, tile: list[int]) -> set[tuple[int, ...]]:
        """Tiles a previous run of the same checkpoint and options stored, with the same tile size."""
        old = self.previous.get(str(job.input), {})
        if old.get("tile") != list(tile):
            return set()
        return {tuple(c) for c in old.get("tiles_done", [])}

    def set_tiled(self, job, tile: list[int], total: int, done) -> None:
        e = self.entry(job)
        e.update(status="tiled", tile=list(tile), tiles_total=total, tiles_done=[list(c) for c in sorted(done)])

    def add_tile(self, job, corner) -> None:
        self.entry(job)["tiles_done"].append(list(corner))

    def task_done(self, job, result: dict) -> None:
        """A task's measurements: the seconds its tasks took, the peak memory of their workers."""
        e = self.entry(job)
        e["task_seconds"] = e.get("task_seconds", 0.0) + float(result.get("seconds", 0.0))
        e["worker_peak_bytes"] = max(e.get("worker_peak_bytes", 0), int(result.get("worker_peak_bytes", 0)))

    def finish(self, job, status: str, error: str | None = None) -> None:
        e = self.entry(job)
        e["status"] = status
        if error is not None:
            e["error"] = error

    def write(self, force: bool = False) -> None:
        if force or time.monotonic() - self._written > 1.0:
            write_json(self.path, self.data)
            self._written = time.monotonic()
