"""Shared test settings: one intra-op thread (the models under test are tiny, and extra
threads only add synchronisation cost) and matplotlib's file-only backend."""

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
