"""Tests of flowpost/train/signals.py: the first SIGTERM/SIGINT becomes a stop request, handlers
are restored afterwards, and the interruption error carries the shell's exit code."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
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


def wait_until(condition: Callable[[], object], seconds: float = 20.0) -> None:
    """Poll (signal handlers run between bytecodes of the main thread) until ``condition``."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_second_signal_takes_the_previous_action(sig: int) -> None:
    # Ctrl-C twice aborts at once: the second signal goes to the handler that was there
    # before the request (for SIGINT normally Python's KeyboardInterrupt). A recording
    # handler stands in for it, and the test waits for each delivery instead of timing
    # them: standard signals do not queue, and under load two back-to-back kills arrive
    # as one.
    seen: list[int] = []
    before = signal.signal(sig, lambda signum, frame: seen.append(signum))
    try:
        with StopRequest() as request:
            os.kill(os.getpid(), sig)
            wait_until(lambda: request.signum is not None)
            assert request.signum == sig and not seen  # the first only sets the flag
            os.kill(os.getpid(), sig)
            wait_until(lambda: seen)
            assert seen == [sig]
    finally:
        signal.signal(sig, before)


def test_second_sigint_raises_keyboard_interrupt() -> None:
    # Python's own SIGINT handler is installed first: in a full test session an earlier
    # library may have left another handler in place (this test then failed with "DID NOT
    # RAISE"), and the request hands the second signal to whatever handler it found.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), StopRequest() as request:
            os.kill(os.getpid(), signal.SIGINT)
            wait_until(lambda: request.signum is not None)
            os.kill(os.getpid(), signal.SIGINT)
            wait_until(lambda: False, seconds=20.0)  # the KeyboardInterrupt ends this wait
    finally:
        signal.signal(signal.SIGINT, before)


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
