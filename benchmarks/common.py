"""Pieces shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]


def flowpost(*args: str, timeout: float | None = None, with_stderr: bool = False) -> str:
    """``python -m flowpost ...`` from the repository root on one thread (unless
    ``OMP_NUM_THREADS`` says otherwise); its stdout (and stderr, where the warnings go, with
    ``with_stderr``), or a RuntimeError naming the command
    with the last lines of its output. The checkout comes first on the path, then whatever
    the caller's ``PYTHONPATH`` holds (packages installed by path)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=threads)
    proc = subprocess.run(
        [sys.executable, "-m", "flowpost", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"flowpost {' '.join(args[:2])} failed: {' | '.join(tail)}")
    return proc.stdout + proc.stderr if with_stderr else proc.stdout


class PlainMLP(nn.Module):
    """A velocity MLP on ``(x, t)`` with 3 hidden SiLU layers, the same for every library
    compared; ``calls`` counts network evaluations."""

    def __init__(self, dim: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, dim),
        )  # fmt: skip
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        self.calls += 1
        return self.net(torch.cat([x, t.unsqueeze(1)], 1))
