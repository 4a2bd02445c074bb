"""Post-training methods; importing this package registers the built-in ones."""

from flowpost.methods import adversarial, fail, flow_matching, reward  # noqa: F401
