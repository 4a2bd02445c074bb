"""flowpost: post-training of flow-matching generative models.

Time convention everywhere: ``t = 0`` is noise, ``t = 1`` is data; the linear path is
``x_t = (1 - t) x0 + t x1`` with conditional velocity ``x1 - x0``.

The library API is :func:`fit` (objects in, a trained :class:`Run` out) and :func:`load` (a
:class:`Run` from a run folder). They are imported on first use, so ``import flowpost`` stays
light.

Example:
    >>> import flowpost
    >>> sorted(name for name in flowpost.__all__ if not name.startswith("_"))
    ['Run', 'fit', 'load']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Run", "fit", "load", "__version__"]

if TYPE_CHECKING:
    from flowpost.api import fit
    from flowpost.run import Run, load

_LAZY = {"fit": "flowpost.api", "Run": "flowpost.run", "load": "flowpost.run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flowpost' has no attribute {name!r}")
