"""The trainer: Accelerate, optimisers, EMA, checkpoints, resume, logging, evaluation.

``Trainer`` and ``run_training`` are imported lazily so that light pieces (the updater, EMA,
checkpoints) can be used without importing Accelerate and the evaluation stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer", "run_training"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from flowpost.train import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
