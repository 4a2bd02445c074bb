"""Tests of flowpost/nets/discriminators.py: shapes, conditioning modes, time input, spectral
norm Lipschitz bounds, frozen feature backbones, gradients."""

import pytest
import torch
from nets_helpers import assert_all_params_get_grad, perturb
from torch import nn

from flowpost.nets.discriminators import (
    ConvDiscriminator,
    FeatureDiscriminator,
    MLPDiscriminator,
)


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (1, 28, 28)])
@pytest.mark.parametrize("conditional", ["projection", "embedding", "none"])
def test_mlp_returns_one_logit_per_sample(shape, conditional):
    d = int(torch.tensor(shape).prod())
    disc = MLPDiscriminator(d, hidden=16, depth=2, num_classes=10, conditional=conditional)
    out = disc(torch.randn(5, *shape), torch.tensor([0, 1, 2, 9, 10]))
    assert out.shape == (5,)


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize("conditional", ["projection", "embedding", "none"])
def test_conv_returns_one_logit_per_sample(size, conditional):
    disc = ConvDiscriminator(
        1, channels=8, depth=3, num_classes=10, conditional=conditional, time_conditional=True
    )
    out = disc(torch.randn(4, 1, size, size), torch.tensor([0, 3, 9, 10]), torch.rand(4))
    assert out.shape == (4,)


@pytest.mark.parametrize("conditional", ["projection", "embedding"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_labels_change_logits_and_null_label_is_default(conditional, kind):
    if kind == "mlp":
        disc = MLPDiscriminator(64, hidden=16, depth=2, num_classes=5, conditional=conditional)
    else:
        disc = ConvDiscriminator(1, channels=8, depth=2, num_classes=5, conditional=conditional)
    perturb(disc, std=0.1)
    x = torch.randn(6, 1, 8, 8)
    a, b = disc(x, torch.zeros(6, dtype=torch.long)), disc(x, torch.full((6,), 3))
    assert float((a - b).abs().max()) > 1e-4
    torch.testing.assert_close(disc(x), disc(x, torch.full((6,), 5)))


def test_unconditional_ignores_labels():
    disc = MLPDiscriminator(2, hidden=16, depth=2, num_classes=5, conditional="none")
    x = torch.randn(4, 2)
    torch.testing.assert_close(disc(x, torch.tensor([0, 1, 2, 3])), disc(x))


def test_time_conditional():
    disc = perturb(MLPDiscriminator(2, hidden=16, depth=2, time_conditional=True), 0.1)
    x = torch.randn(4, 2)
    assert float((disc(x, None, torch.zeros(4)) - disc(x, None, torch.ones(4))).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="pass t"):
        disc(x)
    with pytest.raises(ValueError, match="time_conditional=True"):
        MLPDiscriminator(2, hidden=8, depth=1)(x, None, torch.rand(4))


def _converge_spectral_norm(disc: nn.Module, x: torch.Tensor) -> None:
    """Run power iterations (one per training-mode forward) until they have converged."""
    disc.train()
    with torch.no_grad():
        for _ in range(200):
            disc(x)
    disc.eval()


def test_mlp_spectral_norm_bounds_lipschitz_constant():
    disc = MLPDiscriminator(6, hidden=32, depth=3, conditional="none", spectral_norm=True)
    perturb(disc, std=1.0)  # large raw weights: without normalisation the constant is large
    _converge_spectral_norm(disc, torch.randn(8, 6))
    for layer in [*disc.layers, disc.head]:
        sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
        assert abs(float(sigma) - 1.0) < 1e-2
    x, y = torch.randn(512, 6), torch.randn(512, 6)
    with torch.no_grad():
        ratio = (disc(x) - disc(y)).abs() / (x - y).norm(dim=1)
    assert float(ratio.max()) <= 1.0 + 1e-2
    # the same raw weights without spectral norm give a much larger slope
    plain = MLPDiscriminator(6, hidden=32, depth=3, conditional="none")
    perturb(plain, std=1.0)
    with torch.no_grad():
        ratio_plain = (plain(x) - plain(y)).abs() / (x - y).norm(dim=1)
    assert float(ratio_plain.max()) > 2.0


def test_conv_spectral_norm_normalises_every_layer():
    disc = ConvDiscriminator(1, channels=8, depth=2, spectral_norm=True, conditional="none")
    perturb(disc, std=1.0)
    _converge_spectral_norm(disc, torch.randn(4, 1, 8, 8))
    layers = [disc.stem, *disc.stages, disc.head]
    for layer in layers:
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        assert abs(float(torch.linalg.matrix_norm(w, ord=2)) - 1.0) < 1e-2


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_gradient_reaches_every_parameter(kind):
    if kind == "mlp":
        disc = MLPDiscriminator(
            64,
            hidden=16,
            depth=2,
            num_classes=3,
            time_conditional=True,
            spectral_norm=True,
            input_encoding=2,
        )
    else:
        disc = ConvDiscriminator(
            1,
            channels=8,
            depth=2,
            num_classes=3,
            time_conditional=True,
            spectral_norm=True,
            conditional="embedding",
        )
    x, t, c = torch.randn(8, 1, 8, 8), torch.rand(8), torch.arange(8) % 4
    assert_all_params_get_grad(disc, lambda: nn.functional.softplus(-disc(x, c, t)).mean())


def test_feature_discriminator_freezes_backbone():
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Dropout(0.5), nn.Tanh())
    before = [p.detach().clone() for p in backbone.parameters()]
    disc = FeatureDiscriminator(backbone, head_dim=12, hidden=16, num_classes=10)
    disc.train()
    assert not backbone.training  # stays in eval mode: dropout off
    assert all(not p.requires_grad for p in backbone.parameters())
    x = torch.randn(6, 1, 8, 8, requires_grad=True)
    c = torch.tensor([0, 1, 2, 3, 9, 10])
    assert disc(x, c).shape == (6,)
    torch.testing.assert_close(disc(x, c), disc(x, c))  # deterministic: dropout is off
    trainable = [p for p in disc.parameters() if p.requires_grad]
    assert trainable and all(any(p is q for q in disc.head.parameters()) for p in trainable)
    opt = torch.optim.Adam(trainable, lr=1e-2)
    loss = disc(x, c).mean()
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # flows through the backbone
    opt.step()
    for p, q in zip(backbone.parameters(), before):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_errors():
    with pytest.raises(ValueError, match="conditional must be one of"):
        MLPDiscriminator(2, conditional="concat", num_classes=3)
    with pytest.raises(ValueError, match="built for 2 features"):
        MLPDiscriminator(2, hidden=8)(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ConvDiscriminator(1, channels=4)(torch.randn(3, 64))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        MLPDiscriminator(2, hidden=8, num_classes=3)(torch.randn(2, 2), torch.tensor([0, 7]))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_gradient_penalty_double_backward(kind):
    # R1 / gradient penalties differentiate ||dD/dx||^2 with respect to the parameters
    if kind == "mlp":
        disc = MLPDiscriminator(
            64, hidden=16, depth=2, num_classes=3, spectral_norm=True, time_conditional=True
        )
    else:
        disc = ConvDiscriminator(1, channels=8, depth=2, num_classes=3, time_conditional=True)
    x = torch.randn(6, 1, 8, 8, requires_grad=True)
    c, t = torch.tensor([0, 1, 2, 3, 0, 1]), torch.rand(6)
    (grad,) = torch.autograd.grad(disc(x, c, t).sum(), x, create_graph=True)
    penalty = grad.pow(2).flatten(1).sum(1).mean()
    penalty.backward()
    # first-layer weights (biases get none: LeakyReLU has zero second derivative)
    first = next(
        p for n, p in disc.named_parameters() if ("layers.0" in n or "stem" in n) and "weight" in n
    )
    assert first.grad is not None and float(first.grad.abs().sum()) > 0
