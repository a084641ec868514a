"""The Dask cluster of a distributed ``nca segment`` run: a local one, or the user's.

``--workers N`` starts a ``LocalCluster`` of N worker processes listening on 127.0.0.1 only
(no dashboard unless ``--dashboard``), one task thread each; the machine's threads and the
memory budget are split between them (torch threads per worker, a budget per task). Dask's
own memory management stays off: the memory plan of each task keeps it within its budget.
``--scheduler ADDRESS`` / ``--scheduler-file FILE`` connect to a cluster the user started
(e.g. ``dask worker --scheduler-file`` in a Slurm job array); each task then plans with its
worker's available memory, or ``--memory-budget``. ``distributed`` is imported only here.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from ..core.errors import NCAError
from ..core.sizes import parse_size


@dataclass(frozen=True)
class WorkerShare:
    """What each worker may use: torch threads (None: its own default) and the memory budget in
    bytes (None: what its machine has available, decided on the worker)."""

    threads: int | None
    budget: int | None


def local_share(workers: int, memory_budget: str | None) -> WorkerShare:
    """The machine's threads and memory budget split between ``workers`` local processes."""
    import torch

    from ..core.machine import available_memory

    total = parse_size(memory_budget) if memory_budget is not None else available_memory(torch.device("cpu"))
    if total <= 0:
        raise NCAError(f"The memory budget '{memory_budget}' must be positive; write it like 8GiB.")
    threads = max(1, (os.cpu_count() or 1) // workers)
    return WorkerShare(threads, total // workers)


@contextmanager
def dask_client(opts) -> Iterator[tuple[object, WorkerShare]]:
    """A connected ``distributed.Client`` and each worker's share, closed (cluster included) on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise NCAError('--workers, --scheduler and --scheduler-file need Dask: pip install "nca[distributed]".') \
            from exc
    given = [flag for flag, value in (("--workers", opts.workers), ("--scheduler", opts.scheduler),
                                      ("--scheduler-file", opts.scheduler_file)) if value is not None]
    if len(given) > 1:
        raise NCAError(f"{' and '.join(given)} each choose the cluster; give only one of them.")
    if opts.dashboard and opts.workers is None:
        raise NCAError("--dashboard serves the dashboard of the cluster --workers starts; an existing cluster serves "
                       "its own (dask scheduler --dashboard-address).")
    if opts.workers is not None:
        share = local_share(opts.workers, opts.memory_budget)
        cluster = LocalCluster(n_workers=opts.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:8787" if opts.dashboard else None, memory_limit=0,
                               local_directory=tempfile.gettempdir())
        try:
            with Client(cluster) as client:
                _warm(client)
                yield client, share
        finally:
            cluster.close()
        return
    share = WorkerShare(None, parse_size(opts.memory_budget) if opts.memory_budget is not None else None)
    try:
        if opts.scheduler_file is not None:
            if not opts.scheduler_file.is_file():
                raise NCAError(f"The scheduler file {opts.scheduler_file} does not exist; start the scheduler with "
                               f"`dask scheduler --scheduler-file {opts.scheduler_file}` first.")
            client = Client(scheduler_file=str(opts.scheduler_file), timeout="30s")
        else:
            client = Client(opts.scheduler, timeout="30s")
    except OSError as exc:
        raise NCAError(f"Cannot reach the Dask scheduler {opts.scheduler or opts.scheduler_file} ({exc}); check "
                       f"that it runs and that this machine can reach it.") from exc
    with client:
        _warm(client)
        yield client, share


def _warm(client) -> None:
    """Every worker imports the task module (and torch) before the run starts."""
    import importlib

    client.run(importlib.import_module, "nca_cli.segment.dask_tasks")


def workers_alive(client) -> int:
    return len(client.scheduler_info(n_workers=-1).get("workers", {}))


def tasks_lost(client) -> dict[str, int]:
    """The tasks the scheduler holds that it lost with a worker, and how often (each is run again)."""
    def lost(dask_scheduler=None) -> dict[str, int]:
        return {str(key): ts.suspicious for key, ts in dask_scheduler.tasks.items() if ts.suspicious}

    try:
        return client.run_on_scheduler(lost)
    except Exception:   # a scheduler that refuses run_on_scheduler: the count is unknown
        return {}
