"""Run logging: ``metrics.jsonl`` (one JSON object per line), the run's experiment trackers
(TensorBoard, W&B: :mod:`flowpost.train.tracking`), progress bar.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> log = RunLogger(Path(tempfile.mkdtemp()))
    >>> log.write({"step": 1, "policy/fm": 0.5})
    >>> log.close()
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from flowpost.train.runfolder import append_line, atomic_write_text

if TYPE_CHECKING:
    from accelerate.tracking import GeneralTracker


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _step_of(line: str) -> int | None:
    """The step of a metrics line, or None for a line a kill cut short (dropped on resume)."""
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


class RunLogger:
    """Appends metric records to ``metrics.jsonl`` (truncated on resume) and sends their
    numbers to ``trackers`` (Accelerate's, started by
    :func:`~flowpost.train.tracking.start_trackers`), which :meth:`close` finishes."""

    def __init__(
        self,
        run_dir: Path,
        *,
        resume_step: int = 0,
        trackers: Sequence[GeneralTracker] = (),
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step and self.path.exists():
            # records written after the checkpoint we resume from are replayed, so drop them
            lines = self.path.read_text().splitlines()
            kept = [ln for ln in lines if (_step_of(ln) or resume_step + 1) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif not resume_step and self.path.exists():
            self.path.unlink()
        self._fh = self.path.open("a")
        self.trackers = list(trackers)
        self.closed = False

    def write(self, record: dict[str, Any]) -> None:
        append_line(self._fh, json.dumps({k: _jsonable(v) for k, v in record.items()}))
        scalars = {
            key: value
            for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        if scalars:
            step = int(record.get("step", 0))
            for tracker in self.trackers:
                tracker.log(scalars, step=step)

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        """Log a uint8 ``(H, W, 3)`` image to every tracker (nothing once closed)."""
        if self.closed:
            return
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
            else:
                tracker.log_images({name: [image]}, step=step)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._fh.close()
        for tracker in self.trackers:
            tracker.finish()


class ProgressBar:
    """A rich progress bar showing the phase and the latest losses; silent when disabled."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[phase]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=total, completed=start, phase="train", losses=""
            )

    def update(self, step: int, phase: str, logs: dict[str, float] | None = None) -> None:
        if self._progress is None:
            return
        fields: dict[str, Any] = {"phase": phase}
        if logs is not None:
            fields["losses"] = " ".join(
                f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, float)
            )[:120]
        self._progress.update(self._task, completed=step, **fields)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
