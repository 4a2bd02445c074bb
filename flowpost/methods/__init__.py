"""Post-training methods; importing this package registers the built-in ones."""

from flowpost.methods import fail, reward  # noqa: F401
from flowpost.methods import adversarial  # noqa: F401
