"""Build a run's method and data from its config (what :meth:`Trainer.from_config` does).

Seeds everything, loads the data and builds the method; with ``init_from`` the pretrained
flow's weights are checked against the data and the network (one-line errors naming the
tensor and both shapes) and loaded. A diffusers transformer with LoRA comes from the
``[diffusers]`` extra, imported only then.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from flowpost.data import DataSplit, load_data
from flowpost.methods.base import Method, get_method_class
from flowpost.train.checkpoint import check_pretrained_fits, load_policy_state
from flowpost.train.config import RunConfig
from flowpost.train.selection import check_pretrained_data


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (before building the networks:
    the seed then decides the initial weights too)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_method_and_data(config: RunConfig, *, load_init: bool = True) -> tuple[Method, DataSplit]:
    """Seed, load the data and build the method (with the ``init_from`` weights unless
    ``load_init`` is False: a checkpoint of this run is about to be restored)."""
    seed_everything(config.train.seed)
    data = load_data(config.data)
    method_cls = get_method_class(config.method.name)
    if config.diffusers is not None:  # a diffusers transformer with LoRA ([diffusers] extra)
        from flowpost.adapters.diffusers.build import build_method, load_init_state

        method = build_method(
            method_cls, config.method, data.spec, config.diffusers, config.init_from
        )
        if config.init_from and load_init:
            load_init_state(method, config.init_from)
        return method, data
    method = method_cls(config.method, data.spec, config.model)
    if config.init_from and load_init:
        check_pretrained_data(config.init_from, data.spec)
        state = load_policy_state(config.init_from)
        for role in ("policy", "generator"):  # the role a pretrained flow is loaded into
            if isinstance(getattr(method, role, None), nn.Module):
                check_pretrained_fits(getattr(method, role), state, config.init_from)
                break
        method.load_pretrained(state)
    return method, data
