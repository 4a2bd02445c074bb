"""Tests of flowpost/train/ema.py."""

import torch

from flowpost.train.ema import EMA


def test_ema_is_the_exponential_average() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.5)
    values = [1.0, 2.0, 4.0]
    expected = 0.0
    for v in values:
        with torch.no_grad():
            net.weight.fill_(v)
        ema.update(net)
        expected = 0.5 * expected + 0.5 * v
    assert abs(float(ema.module.weight) - expected) < 1e-7
    assert not ema.module.weight.requires_grad


def test_zero_decay_copies() -> None:
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.0)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.equal(ema.module.weight, net.weight)


def test_warm_up_discounts_the_initialisation() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.999)
    with torch.no_grad():
        net.weight.fill_(1.0)
    for k in range(1, 101):
        ema.update(net, num_updates=k)
    # without warm-up, 0.999 ** 100 = 90% of the average would still be the initial 0
    assert float(ema.module.weight) > 0.99
