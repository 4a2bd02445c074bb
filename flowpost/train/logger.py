"""Run logging: ``metrics.jsonl`` (one JSON object per line), TensorBoard events, progress bar.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> log = RunLogger(Path(tempfile.mkdtemp()), tensorboard=False)
    >>> log.write({"step": 1, "policy/fm": 0.5})
    >>> log.close()
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from flowpost.train.runfolder import append_line, atomic_write_text


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
    """Appends metric records to ``metrics.jsonl`` and TensorBoard; truncates on resume."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, resume_step: int = 0) -> None:
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
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    str(run_dir / "tensorboard"), purge_step=resume_step or None
                )
            except ImportError:  # tensorboard missing: jsonl still has everything
                self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        append_line(self._fh, json.dumps({k: _jsonable(v) for k, v in record.items()}))
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


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
