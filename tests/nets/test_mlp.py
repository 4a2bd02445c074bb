"""Tests of flowpost/nets/mlp.py: shapes, conditioning, end-time input, repeats, training."""

import pytest
import torch
from nets_helpers import assert_all_params_get_grad, n_params, perturb

from flowpost.nets.mlp import MLPVelocity


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (1, 28, 28)])
def test_output_shape_matches_input(shape):
    d = int(torch.tensor(shape).prod())
    net = MLPVelocity(d, hidden=32, depth=2, num_classes=10)
    x = torch.randn(5, *shape)
    assert net(x, torch.rand(5), torch.randint(0, 11, (5,))).shape == x.shape


def test_conditioning_changes_output_and_null_label():
    net = MLPVelocity(2, hidden=32, depth=2, num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    a = net(x, t, torch.tensor([0, 0, 0, 0]))
    b = net(x, t, torch.tensor([1, 1, 1, 1]))
    assert float((a - b).abs().max()) > 1e-4
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.full((4,), 3)))


def test_time_changes_output():
    net = MLPVelocity(2, hidden=32, depth=2)
    x = torch.randn(4, 2)
    assert float((net(x, torch.zeros(4)) - net(x, torch.ones(4))).abs().max()) > 1e-4


def test_end_time_loads_pretrained_and_is_initially_identical():
    torch.manual_seed(1)
    pre = perturb(MLPVelocity(3, hidden=32, depth=2, num_classes=4))
    net = MLPVelocity(3, hidden=32, depth=2, num_classes=4, end_time=True)
    missing, unexpected = net.load_state_dict(pre.state_dict(), strict=False)
    assert missing and all(k.startswith("end_time") for k in missing)
    assert not unexpected
    x, t, c = torch.randn(6, 3), torch.rand(6), torch.randint(0, 5, (6,))
    t_end = torch.rand(6)
    torch.testing.assert_close(net(x, t, c, t_end), pre(x, t, c), rtol=0, atol=0)
    # once the end-time embedding trains, the target time matters
    perturb(net.end_time_embed)
    assert float((net(x, t, c, t_end) - net(x, t, c, 1 - t_end)).abs().max()) > 1e-4


def test_t_end_without_end_time_raises():
    net = MLPVelocity(2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="end_time=True"):
        net(torch.randn(2, 2), torch.rand(2), None, torch.rand(2))


def test_repeats_share_weights_and_change_output():
    one = MLPVelocity(4, hidden=32, depth=2, repeats=1)
    three = MLPVelocity(4, hidden=32, depth=2, repeats=3)
    assert n_params(three) - n_params(one) == 3 * 32  # only the repeat embedding
    missing, _ = three.load_state_dict(one.state_dict(), strict=False)
    assert missing == ["repeat_embed.weight"]
    x, t = torch.randn(5, 4), torch.rand(5)
    assert float((three(x, t) - one(x, t)).abs().max()) > 1e-3
    # the repeat embedding is used: changing it changes the output
    before = three(x, t)
    with torch.no_grad():
        three.repeat_embed.weight[1] += 1.0
    assert float((three(x, t) - before).abs().max()) > 1e-3


@pytest.mark.parametrize("residual", [True, False])
def test_gradient_reaches_every_parameter(residual):
    net = MLPVelocity(
        2,
        hidden=16,
        depth=2,
        num_classes=3,
        end_time=True,
        repeats=2,
        residual=residual,
        input_encoding=4,
    )
    x, t, t_end = torch.randn(16, 2), torch.rand(16), torch.rand(16)
    c = torch.arange(16) % 4  # includes the null label 3
    assert_all_params_get_grad(net, lambda: net(x, t, c, t_end).pow(2).mean())


def test_mlp_fits_a_velocity_field():
    # default (non-zero) output init: a small MLP must fit v(x, t) = -x (1 + t) quickly
    net = MLPVelocity(2, hidden=64, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def loss():
        x, t = torch.randn(256, 2), torch.rand(256)
        return (net(x, t) + x * (1 + t)[:, None]).pow(2).mean()

    with torch.no_grad():
        start = float(loss())
    for _ in range(150):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert float(value) < 0.05 * start


def test_input_checks():
    net = MLPVelocity(4, hidden=8, depth=1)
    with pytest.raises(ValueError, match="4 features"):
        net(torch.randn(2, 3), torch.rand(2))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        net(torch.randn(2, 4), torch.rand(3))
