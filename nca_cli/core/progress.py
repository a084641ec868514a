"""Progress of long work, one builder for every command.

On a terminal: rich progress bars. Otherwise (output redirected to a log file, a pipe, a
batch system): plain lines, flushed at once, at a steady pace (at most one line per task
every ``interval`` seconds, plus the first and the last), so a log shows how far a run got
even when it is killed. ``quiet``: nothing at all.

    with Progress(quiet) as progress:
        epochs = progress.add("epoch", total=100)
        ...
        epochs.advance(info="loss 0.31  dice 0.82  4.1 s/epoch")
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

PLAIN_INTERVAL = 10.0


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Task:
    """One line of progress: ``completed`` of ``total`` units, and a free-text ``info``."""

    def __init__(self, owner: "Progress", description: str, total: float | None, completed: float, info: str):
        self.owner = owner
        self.description = description
        self.total = total
        self.completed = completed
        self.info = info
        self.started = time.monotonic()
        self.last_line = None
        self._rich_id = None

    def advance(self, n: float = 1, info: str | None = None) -> None:
        self.update(completed=self.completed + n, info=info)

    def update(self, completed: float | None = None, total: float | None = None, info: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if info is not None:
            self.info = info
        self.owner._show(self)

    def remove(self) -> None:
        self.owner._remove(self)

    def line(self) -> str:
        """The plain-text state: ``description 3/10 (30%)  info  elapsed 0:12  ETA 0:28``."""
        elapsed = time.monotonic() - self.started
        done = f"{self.completed:g}" + (f"/{self.total:g}" if self.total else "")
        parts = [f"{self.description} {done}"]
        if self.total:
            parts[0] += f" ({100 * self.completed / self.total:.0f}%)"
        if self.info:
            parts.append(self.info)
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and 0 < self.completed < self.total:
            parts.append(f"ETA {_clock(elapsed * (self.total - self.completed) / self.completed)}")
        return "  ".join(parts)


class Progress:
    """Rich bars on a terminal, plain lines elsewhere, nothing when ``quiet`` (module docstring).

    ``plain``: force plain lines (True) or bars (False); default: bars only when ``stream``
    (standard output) is a terminal.
    """

    def __init__(self, quiet: bool = False, *, plain: bool | None = None, interval: float = PLAIN_INTERVAL,
                 stream: TextIO | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.plain = (not _isatty(self.stream)) if plain is None else plain
        self.interval = interval
        self._rich = None
        self.tasks: list[Task] = []

    def __enter__(self) -> "Progress":
        if not self.quiet and not self.plain:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                                      console=Console(file=self.stream), transient=False)
            self._rich.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
            self._rich = None

    def add(self, description: str, total: float | None = None, *, completed: float = 0, info: str = "") -> Task:
        task = Task(self, description, total, completed, info)
        self.tasks.append(task)
        if self._rich is not None:
            task._rich_id = self._rich.add_task(description, total=total, completed=completed, info=info)
        return task

    def log(self, text: str) -> None:
        """One line of text between the bars (or in the log)."""
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.console.print(text)
        else:
            self._write(text)

    def _show(self, task: Task) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.update(task._rich_id, completed=task.completed, total=task.total, info=task.info)
            return
        now = time.monotonic()
        finished = task.total is not None and task.completed >= task.total
        if task.last_line is None or finished or now - task.last_line >= self.interval:
            task.last_line = now
            self._write(task.line())

    def _remove(self, task: Task) -> None:
        if task in self.tasks:
            self.tasks.remove(task)
        if self._rich is not None and task._rich_id is not None:
            self._rich.remove_task(task._rich_id)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
