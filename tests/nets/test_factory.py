"""Tests of flowpost/nets/factory.py: every arch for every data shape, end-time loading of a
pretrained state dict, and clear errors for impossible combinations."""

import pytest
import torch
from nets_helpers import perturb

from flowpost.data.base import DataSpec
from flowpost.nets.config import DiscriminatorConfig, NetConfig
from flowpost.nets.factory import build_discriminator, build_velocity_net

SMALL = {
    "mlp": NetConfig(arch="mlp", hidden=32, depth=2),
    "unet": NetConfig(arch="unet", channels=8, channel_mult=[1, 2]),
    "dit": NetConfig(arch="dit", hidden=32, depth=2, heads=2, patch_size=2),
}
SPECS = {
    "2d": DataSpec((2,), num_classes=None),
    "8x8": DataSpec((1, 8, 8), num_classes=10),
    "28x28": DataSpec((1, 28, 28), num_classes=10),
}


@pytest.mark.parametrize("arch", list(SMALL))
@pytest.mark.parametrize("data", list(SPECS))
def test_velocity_net_shapes(arch, data):
    spec = SPECS[data]
    if arch != "mlp" and not spec.is_image:
        with pytest.raises(ValueError, match="use arch: mlp"):
            build_velocity_net(SMALL[arch], spec)
        return
    net = build_velocity_net(SMALL[arch], spec)
    x = torch.randn(3, *spec.shape)
    cond = None if spec.num_classes is None else torch.tensor([0, 4, spec.num_classes])
    assert net(x, torch.rand(3), cond).shape == x.shape


@pytest.mark.parametrize("arch", list(SMALL))
def test_end_time_net_loads_a_pretrained_flow_unchanged(arch):
    spec = SPECS["8x8"]
    pre = perturb(build_velocity_net(SMALL[arch], spec), std=0.05)
    net = build_velocity_net(SMALL[arch], spec, end_time=True)
    missing, unexpected = net.load_state_dict(pre.state_dict(), strict=False)
    assert missing and all(k.startswith("end_time") for k in missing)
    assert not unexpected
    x, t, c = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 9, 10])
    torch.testing.assert_close(net(x, t, c, torch.rand(4)), pre(x, t, c), rtol=0, atol=0)


def test_repeats_only_for_mlp_and_dit():
    spec = SPECS["8x8"]
    for arch in ("mlp", "dit"):
        cfg = SMALL[arch]
        deep = build_velocity_net(NetConfig(**{**cfg.__dict__, "repeats": 2}), spec)
        assert deep.repeat_embed.weight.shape[0] == 2
    with pytest.raises(ValueError, match="repeats"):
        build_velocity_net(NetConfig(arch="unet", repeats=2), spec)


def test_config_options_reach_the_networks():
    spec = SPECS["8x8"]
    unet = build_velocity_net(NetConfig(arch="unet", channels=8, attention=True), spec)
    assert unet.mid_attn is not None
    dit = build_velocity_net(NetConfig(arch="dit", hidden=32, heads=2, pos_embed="learned"), spec)
    assert isinstance(dit.pos, torch.nn.Parameter)
    mlp = build_velocity_net(NetConfig(hidden=16, depth=1, input_encoding=4), SPECS["2d"])
    assert mlp.inp.in_features == 2 * 5
    with pytest.raises(ValueError, match="patch_size=3"):
        build_velocity_net(NetConfig(arch="dit", patch_size=3), spec)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("data", list(SPECS))
def test_discriminator_shapes(arch, data):
    spec = SPECS[data]
    cfg = DiscriminatorConfig(arch=arch, hidden=8, channels=4, depth=2)
    if arch == "conv" and not spec.is_image:
        with pytest.raises(ValueError, match="use arch: mlp"):
            build_discriminator(cfg, spec)
        return
    disc = build_discriminator(cfg, spec, time_conditional=True)
    x = torch.randn(3, *spec.shape)
    cond = None if spec.num_classes is None else torch.tensor([0, 4, 10])
    assert disc(x, cond, torch.rand(3)).shape == (3,)
    if arch == "conv":
        assert disc.stem.out_channels == 4  # `channels`, not the MLP's `hidden`
    with pytest.raises(ValueError, match="pass t"):
        disc(x, cond)


def test_unknown_arch_message():
    cfg = NetConfig()
    cfg.arch = "resnet"
    with pytest.raises(ValueError, match="choose mlp, unet or dit"):
        build_velocity_net(cfg, SPECS["2d"])
