"""Tests of flowpost/nets/dit.py: patching, adaLN-zero, conditioning, end time, repeats."""

import pytest
import torch
from nets_helpers import assert_all_params_get_grad, n_params, perturb

from flowpost.nets.dit import DiT, sincos_pos_embed_2d


def small(**kw):
    args = dict(in_channels=1, image_size=8, hidden=32, depth=2, heads=2, patch_size=2)
    args.update(kw)
    return DiT(**args)


@pytest.mark.parametrize("size,patch", [(8, 2), (8, 4), (28, 2), (28, 4), (28, 7)])
def test_output_shape(size, patch):
    net = perturb(small(image_size=size, patch_size=patch, num_classes=10))
    x = torch.randn(2, 1, size, size)
    out = net(x, torch.rand(2), torch.tensor([3, 10]))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


def test_unpatchify_inverts_patchify_layout():
    # With adaLN-zero every block starts as the identity, so the real DiT.forward reduces to
    # final(norm(patch(x) + pos)). Make the patch embedding copy each pixel of a patch into
    # its own channel, the final layer copy it back, and drop the norm and position terms:
    # the network must then return x exactly, which holds only if unpatchify puts every
    # value back at the row, column and channel the patch embedding took it from.
    p, c = 2, 2
    net = small(hidden=32, patch_size=p, in_channels=c, pos_embed="learned", depth=1)
    with torch.no_grad():
        net.pos.zero_()
        net.patch.weight.zero_()
        net.patch.bias.zero_()
        net.final.weight.zero_()
        net.final.bias.zero_()
        for ch in range(c):
            for py in range(p):
                for px in range(p):
                    k = (ch * p + py) * p + px  # token channel holding this pixel
                    net.patch.weight[k, ch, py, px] = 1.0
                    net.final.weight[(py * p + px) * c + ch, k] = 1.0
    net.final_norm = torch.nn.Identity()
    x = torch.randn(2, c, 8, 8)
    torch.testing.assert_close(net(x, torch.rand(2)), x)
    # and with the real norm, a pixel only influences the output patch it belongs to
    net = perturb(small(patch_size=p), std=0.0)
    with torch.no_grad():
        net.final.weight.normal_()
    x = torch.randn(1, 1, 8, 8)
    bumped = x.clone()
    bumped[0, 0, 5, 2] += 1.0
    t = torch.rand(1)
    changed = (net(bumped, t) - net(x, t)).abs()[0, 0] > 1e-6
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[4:6, 2:4] = True
    assert torch.equal(changed, expected)


def test_starts_as_zero_field():
    out = small()(torch.randn(3, 1, 8, 8), torch.rand(3))
    assert float(out.abs().max()) == 0.0


def test_sincos_position_embedding_distinct():
    pos = sincos_pos_embed_2d(32, 4)
    assert pos.shape == (16, 32)
    dist = torch.cdist(pos, pos) + torch.eye(16) * 10
    assert float(dist.min()) > 0.1


def test_conditioning_and_null_label():
    net = perturb(small(num_classes=10), std=0.1)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    a = net(x, t, torch.full((4,), 1))
    b = net(x, t, torch.full((4,), 8))
    assert float((a - b).abs().max()) > 1e-4
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((4,), 10)))


def test_end_time_loads_pretrained_and_is_initially_identical():
    pre = perturb(small(num_classes=10), std=0.1)
    net = small(num_classes=10, end_time=True)
    missing, unexpected = net.load_state_dict(pre.state_dict(), strict=False)
    assert missing and all(k.startswith("end_time") for k in missing) and not unexpected
    x, t, c = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([0, 4, 10])
    torch.testing.assert_close(net(x, t, c, torch.rand(3)), pre(x, t, c), rtol=0, atol=0)


def test_repeats_share_weights_and_change_output():
    one = perturb(small(), std=0.1)
    four = small(repeats=4)
    assert n_params(four) - n_params(one) == 4 * 32
    missing, _ = four.load_state_dict(one.state_dict(), strict=False)
    assert missing == ["repeat_embed.weight"]
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    assert float((four(x, t) - one(x, t)).abs().max()) > 1e-3
    before = four(x, t)
    with torch.no_grad():
        four.repeat_embed.weight[2] += 0.5
    assert float((four(x, t) - before).abs().max()) > 1e-4


def test_gradient_reaches_every_parameter():
    net = small(num_classes=3, end_time=True, repeats=2, pos_embed="learned")
    x, t, t_end = torch.randn(8, 1, 8, 8), torch.rand(8), torch.rand(8)
    c = torch.arange(8) % 4
    assert_all_params_get_grad(net, lambda: (net(x, t, c, t_end) - x).pow(2).mean(), steps=3)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"choose one of \[1, 2, 4, 7, 14, 28\]"):
        small(image_size=28, patch_size=3)
    with pytest.raises(ValueError, match="divisible by heads"):
        small(hidden=30, heads=4)
    with pytest.raises(ValueError, match="built for images"):
        small()(torch.randn(2, 1, 16, 16), torch.rand(2))
