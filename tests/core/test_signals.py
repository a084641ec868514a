import os
import signal

import pytest

from nca_cli.core import signals


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in signals.HANDLED}
    signals.install()
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_unwind_like_ctrl_c(handlers, sig):
    cleaned = []
    with pytest.raises(KeyboardInterrupt) as caught:
        try:
            os.kill(os.getpid(), sig)
            for _ in range(10**6):   # the handler runs between bytecodes
                pass
        finally:
            cleaned.append(True)
    assert cleaned == [True]
    assert signals.message(caught.value) == (f"stopped by {signal.Signals(sig).name}; nothing half-written was kept",
                                             128 + sig)


def test_a_signal_inside_deferred_waits_for_a_safe_point(handlers):
    steps = []
    with pytest.raises(signals.Stopped) as caught:
        with signals.deferred():
            for step in range(5):
                if signals.pending():
                    raise signals.stopped()
                steps.append(step)
                if step == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
    assert steps == [0, 1] and caught.value.signum == signal.SIGTERM and signals.pending() is None


def test_a_second_signal_inside_deferred_stops_at_once(handlers):
    with pytest.raises(signals.Stopped):
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert signals.pending() == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGHUP)
            pytest.fail("the second signal did not stop the block")
    signals.stopped()   # leave no pending signal behind


def test_ctrl_c_through_typer_is_one_line_with_code_130(monkeypatch):
    monkeypatch.setitem(signals._state, "received", None)
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("typer's Exit") from exc
    except RuntimeError:
        try:
            raise SystemExit(130)
        except SystemExit as exc:
            assert signals.message(exc) == ("stopped by SIGINT; nothing half-written was kept", 130)
    assert signals.message(SystemExit(0)) is None


def test_a_stop_that_a_library_swallowed_is_still_reported(monkeypatch):
    monkeypatch.setitem(signals._state, "received", signal.SIGTERM)   # the handler ran, its exception was lost
    assert signals.message(SystemExit(0)) == ("stopped by SIGTERM; nothing half-written was kept", 143)
