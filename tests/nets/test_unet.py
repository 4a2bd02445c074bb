"""Tests of flowpost/nets/unet.py: image sizes 8x8 / 28x28, conditioning, end time, gradients."""

import pytest
import torch
from nets_helpers import assert_all_params_get_grad, perturb

from flowpost.nets.unet import UNet, group_norm


@pytest.mark.parametrize(
    "size,mult,attention",
    [(8, (1, 2), False), (8, (1, 2), True), (28, (1, 2), False), (28, (1, 2, 2), True)],
)
def test_output_shape(size, mult, attention):
    net = UNet(1, channels=8, channel_mult=mult, num_classes=10, attention=attention)
    x = torch.randn(3, 1, size, size)
    assert net(x, torch.rand(3), torch.tensor([0, 9, 10])).shape == x.shape


def test_28_goes_down_to_7():
    net = UNet(1, channels=8, channel_mult=(1, 2, 2))
    sizes = []
    hook = net.mid1.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    net(torch.randn(2, 1, 28, 28), torch.rand(2))
    hook.remove()
    assert sizes == [(7, 7)]


def test_multichannel_images():
    net = UNet(3, channels=8, channel_mult=(1, 2))
    x = torch.randn(2, 3, 8, 8)
    assert net(x, torch.rand(2)).shape == x.shape


def test_starts_as_zero_field():
    net = UNet(1, channels=8, channel_mult=(1, 2))
    out = net(torch.randn(4, 1, 8, 8), torch.rand(4))
    assert float(out.abs().max()) == 0.0


def test_conditioning_and_null_label():
    net = perturb(UNet(1, channels=8, channel_mult=(1, 2), num_classes=10))
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    a = net(x, t, torch.full((4,), 2))
    b = net(x, t, torch.full((4,), 7))
    assert float((a - b).abs().max()) > 1e-4
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((4,), 10)))
    assert float((net(x, torch.zeros(4)) - net(x, torch.ones(4))).abs().max()) > 1e-4


def test_end_time_loads_pretrained_and_is_initially_identical():
    pre = perturb(UNet(1, channels=8, channel_mult=(1, 2), num_classes=10))
    net = UNet(1, channels=8, channel_mult=(1, 2), num_classes=10, end_time=True)
    missing, unexpected = net.load_state_dict(pre.state_dict(), strict=False)
    assert missing and all(k.startswith("end_time") for k in missing) and not unexpected
    x, t, c = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 5, 10])
    torch.testing.assert_close(net(x, t, c, torch.rand(3)), pre(x, t, c), rtol=0, atol=0)


def test_gradient_reaches_every_parameter():
    net = UNet(1, channels=8, channel_mult=(1, 2), num_classes=3, end_time=True, attention=True)
    x, t, t_end = torch.randn(8, 1, 8, 8), torch.rand(8), torch.rand(8)
    c = torch.arange(8) % 4
    assert_all_params_get_grad(net, lambda: (net(x, t, c, t_end) - x).pow(2).mean(), steps=2)


def test_errors():
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(1, channel_mult=())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        UNet(1, channels=8)(torch.randn(2, 64), torch.rand(2))
    assert group_norm(24).num_groups == 8 and group_norm(12).num_groups == 6
