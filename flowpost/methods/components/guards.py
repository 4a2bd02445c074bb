"""Guards against a dominating discriminator, shared by the adversarial methods.

A discriminator that separates expert from policy samples almost perfectly gives the policy
vanishing or useless gradients, and training collapses while the losses still look calm
(issue 9: 99% accuracy on policy samples, exit 0). :class:`DiscriminatorGuard` watches an
exponential moving average of the discriminator's accuracy on both halves and, while both
are above ``threshold`` (it *dominates*):

* skips discriminator updates (an adaptive number of discriminator steps: zero until its
  accuracy falls below ``release``, so the policy can catch up);
* multiplies the gradient penalty by ``gp_boost`` each time domination starts (a smoother
  discriminator gives the policy usable gradients), up to ``max_gp_scale``;
* warns once, with :class:`GuardWarning` (the trainer prints it as one line).

Mode collapse, including inside modes, is watched by the trainer on held-out demonstrations
(:mod:`flowpost.train.selection`), which knows no method's mathematics.

Example:
    >>> g = DiscriminatorGuard(decay=0.0)
    >>> g.observe(0.6, 0.6), g.allow_update()
    (False, True)
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     g.observe(0.99, 0.98), g.allow_update(), g.gp_scale
    (True, False, 2.0)
    >>> len(seen), issubclass(seen[0].category, GuardWarning)
    (1, True)
    >>> g.observe(0.7, 0.7), g.allow_update()
    (False, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["GuardWarning", "DiscriminatorGuard"]


class GuardWarning(UserWarning):
    """A training guard fired; the trainer prints each as one ``warning:`` line."""


class DiscriminatorGuard:
    """Adaptive discriminator steps and gradient penalty when the discriminator dominates.

    ``observe(acc_real, acc_fake)`` after each discriminator evaluation returns whether it
    dominates now; ``allow_update()`` says whether to take the next discriminator step;
    ``gp_scale`` multiplies the configured gradient penalty.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.9,
        release: float = 0.75,
        decay: float = 0.9,
        gp_boost: float = 2.0,
        max_gp_scale: float = 16.0,
        enabled: bool = True,
    ) -> None:
        if not 0.5 < release <= threshold <= 1.0:
            raise ValueError(f"need 0.5 < release <= threshold <= 1, got {release}, {threshold}")
        self.threshold, self.release, self.decay = threshold, release, decay
        self.gp_boost, self.max_gp_scale, self.enabled = gp_boost, max_gp_scale, enabled
        self.acc = 0.5
        self.dominating = False
        self.gp_scale = 1.0
        self.events = 0
        self.skipped = 0

    def observe(self, acc_real: float, acc_fake: float) -> bool:
        """Update the running accuracy (the smaller of the two halves) and the state."""
        now = min(acc_real, acc_fake)
        self.acc = self.decay * self.acc + (1 - self.decay) * now
        if not self.enabled:
            return False
        if not self.dominating and self.acc > self.threshold:
            self.dominating = True
            self.events += 1
            self.gp_scale = min(self.gp_scale * self.gp_boost, self.max_gp_scale)
            if self.events == 1:
                warnings.warn(
                    GuardWarning(
                        f"the discriminator dominates (accuracy {self.acc:.2f} on expert and "
                        f"policy samples): discriminator steps paused until it falls below "
                        f"{self.release}, gradient penalty x{self.gp_scale:g}"
                    ),
                    stacklevel=2,
                )
        elif self.dominating and self.acc < self.release:
            self.dominating = False
        return self.dominating

    def allow_update(self) -> bool:
        """Whether to take the next discriminator step (not while it dominates)."""
        if self.dominating:
            self.skipped += 1
            return False
        return True

    def logs(self) -> dict[str, float]:
        return {
            "guard/disc_acc": self.acc,
            "guard/disc_dominates": float(self.dominating),
            "guard/gp_scale": self.gp_scale,
        }

    def state(self) -> dict[str, Any]:
        keys = ("acc", "dominating", "gp_scale", "events", "skipped")
        return {k: getattr(self, k) for k in keys}

    def load_state(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            if key in ("acc", "gp_scale"):
                setattr(self, key, float(value))
            elif key in ("events", "skipped"):
                setattr(self, key, int(value))
            elif key == "dominating":
                self.dominating = bool(value)
