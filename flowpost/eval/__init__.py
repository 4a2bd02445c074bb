"""Evaluation: sample-set distances, classifier-feature scores, error vs NFE, plots.

Example:
    >>> import torch
    >>> x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    >>> sorted(evaluate_samples(x, x))
    ['coverage', 'density', 'energy', 'mmd', 'precision', 'recall', 'sliced_w2', 'w2']
"""

from flowpost.eval.evaluate import evaluate_samples, plot_samples
from flowpost.eval.evaluator import Evaluator

__all__ = ["Evaluator", "evaluate_samples", "plot_samples"]
