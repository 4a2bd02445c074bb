"""flowpost: post-training of flow-matching generative models.

Time convention everywhere: ``t = 0`` is noise, ``t = 1`` is data; the linear path is
``x_t = (1 - t) x0 + t x1`` with conditional velocity ``x1 - x0``.
"""

__version__ = "0.1.0"
