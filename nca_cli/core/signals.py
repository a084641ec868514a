"""SIGTERM and SIGHUP take the path of Ctrl-C: an exception that unwinds the running command.

Clusters stop jobs with SIGTERM (Slurm, Kubernetes) and closed terminals send SIGHUP; by
default either kills Python at once, leaving temporary files behind. :func:`install` turns
both into :class:`Stopped`, a ``KeyboardInterrupt``, so every ``finally`` and ``except
BaseException`` that already cleans up after Ctrl-C (atomic writes, partial dataset folders)
runs for them too, and the CLI ends in one line with exit code ``128 + signal``.

Work that must not be cut in the middle (an optimiser step) runs inside :func:`deferred`:
there a signal is only recorded, the work polls :func:`pending` at a safe point, saves what
it needs and raises :func:`stopped`. A second signal while deferred stops at once.
Creating a temporary inside :func:`deferred` means a signal never leaves it behind unnamed. A
stop that Python had to swallow (a signal landing in a finaliser, where exceptions are ignored)
still ends the command in the same line (:func:`message`).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HANDLED = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)

_state = {"deferring": 0, "pending": None, "received": None}


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by ``signum`` (SIGINT, SIGTERM or SIGHUP)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum, _frame) -> None:
    _state["received"] = signum
    if _state["deferring"] and _state["pending"] is None:
        _state["pending"] = signum
        return
    raise Stopped(signum)


def install() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Stopped` in the main thread (call once, early;
    a no-op outside the main thread, where Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HANDLED:
        signal.signal(sig, _handler)


def pending() -> int | None:
    """The signal received inside :func:`deferred` and not yet acted on, else None."""
    return _state["pending"]


def stopped() -> Stopped:
    """The exception to raise for the pending signal (SIGINT when none is pending)."""
    signum = _state["pending"]
    _state["pending"] = None
    return Stopped(signal.SIGINT if signum is None else signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within this block a first SIGTERM/SIGHUP is recorded (see :func:`pending`), not raised."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        if not _state["deferring"] and _state["pending"] is not None:
            raise stopped()


def interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The interruption behind ``exc`` (itself, or the cause of the ``SystemExit`` that typer
    raises for a ``KeyboardInterrupt``), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def message(exc: BaseException) -> tuple[str, int] | None:
    """The one line the CLI prints when ``exc`` comes from an interruption, and the exit code
    (``128 + signal``); None when it does not."""
    stop = interruption(exc)
    if stop is None and _state["received"] is not None:
        stop = Stopped(_state["received"])          # raised where Python ignores exceptions
    if stop is None:
        return None
    if not isinstance(stop, Stopped):
        stop = Stopped(signal.SIGINT)
    return f"stopped by {stop.name}; nothing half-written was kept", stop.exit_code
