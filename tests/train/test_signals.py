"""Tests of flowpost/train/signals.py: the first SIGTERM/SIGINT becomes a stop request, handlers
are restored afterwards, and the interruption error carries the shell's exit code."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from flowpost.train.signals import StopRequest, TrainingInterrupted


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_is_a_request_and_handlers_are_restored(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with StopRequest() as stop:
        assert stop.signum is None
        os.kill(os.getpid(), sig)
        assert stop.signum == sig
    assert signal.getsignal(sig) is before


def test_second_sigint_aborts_at_once() -> None:
    # Standard signals do not queue: two SIGINTs sent back to back can arrive as one (seen
    # under load), so the second is sent only once the first has been handled.
    with pytest.raises(KeyboardInterrupt), StopRequest() as request:
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 5.0
        while request.signum is None and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between bytecodes, within this block
            time.sleep(0.001)


def test_interrupted_message_and_exit_code() -> None:
    err = TrainingInterrupted(signal.SIGTERM, 42, Path("run/checkpoints/step_00000042"))
    assert str(err) == "interrupted by SIGTERM at step 42; checkpoint run/checkpoints/step_00000042"
    assert err.exit_code == 143
    assert "no checkpoint written" in str(TrainingInterrupted(signal.SIGINT, 0, None))


def test_nested_requests_share_the_outer_flag() -> None:
    with StopRequest() as outer:
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. while the run is still being built
        with StopRequest() as inner:
            assert inner.signum == signal.SIGTERM
        assert outer.signum == signal.SIGTERM
    with StopRequest() as fresh:
        assert fresh.signum is None
