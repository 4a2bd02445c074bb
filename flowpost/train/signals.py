"""Stopping a run cleanly on SIGTERM or SIGINT (Ctrl-C).

While a :class:`StopRequest` is open, the first SIGTERM or SIGINT only sets a flag: the
trainer finishes the current step, writes a checkpoint, says how to resume and raises
:class:`TrainingInterrupted`. A second signal while that happens takes the default action
(Ctrl-C twice aborts at once). Outside the main thread signals cannot be caught; the request
then never fires.

Example:
    >>> import os, signal
    >>> with StopRequest() as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     stop.signum == signal.SIGTERM
    True
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(RuntimeError):
    """The run stopped on a signal after writing a checkpoint (``checkpoint``, or None)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "no checkpoint written"
        super().__init__(f"interrupted by {name} at step {step}; {where}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class StopRequest:
    """A context that turns the first SIGTERM/SIGINT into a flag (``signum``).

    Requests nest: an inner one (the trainer's) shares the outer one's flag (the command
    line opens one before it builds anything, so a signal during start-up is not lost: the
    run then stops after its first step, with a checkpoint).
    """

    _active: StopRequest | None = None

    def __init__(self) -> None:
        self._signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._outer: StopRequest | None = None

    @property
    def signum(self) -> int | None:
        """The first signal received while open (None: none yet)."""
        return self._outer.signum if self._outer is not None else self._signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._signum is not None:  # second signal: the default action
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self._signum = signum

    def __enter__(self) -> StopRequest:
        if StopRequest._active is not None:
            self._outer = StopRequest._active
        elif threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            StopRequest._active = self
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if StopRequest._active is self:
            StopRequest._active = None
