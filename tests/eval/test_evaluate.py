"""evaluate_samples picks the right metrics by data type and they rank samples correctly;
plot_samples writes the right kind of figure."""

import numpy as np
import pytest
import torch

from flowpost.data.images import load_image_dataset, thicken
from flowpost.data.toys import mode_info, sample_toy
from flowpost.eval import evaluate_samples, plot_samples


def g(seed):
    return torch.Generator().manual_seed(seed)


def test_vectors_keys_and_ranking():
    ref = sample_toy("moons", 800, g(0))
    good = sample_toy("moons", 800, g(1))
    bad = good + 0.5
    m_good = evaluate_samples(good, ref, generator=g(2))
    m_bad = evaluate_samples(bad, ref, generator=g(2))
    assert set(m_good) == {"w2", "sliced_w2", "mmd", "energy"} | {
        "density",
        "coverage",
        "precision",
        "recall",
    }
    for k in ("w2", "sliced_w2", "mmd", "energy"):  # distances: lower is better
        assert m_bad[k] > 3 * m_good[k], k
    for k in ("density", "coverage", "precision", "recall"):  # higher is better
        assert m_good[k] > 0.9 and m_bad[k] < 0.5, k
    # the exact W2 of a pure shift of the same samples is the shift norm
    assert evaluate_samples(good + 0.5, good)["w2"] == pytest.approx(0.5 * np.sqrt(2), rel=1e-4)


def test_repeatable_and_leaves_the_global_stream_alone():
    # subsampling without a generator is seeded: same sets, same scores whatever the global
    # seed, and the global generator that training draws from is not advanced
    x, ref = torch.randn(2500, 2, generator=g(0)), torch.randn(2500, 2, generator=g(1))
    torch.manual_seed(123)
    first = evaluate_samples(x, ref)
    after = torch.rand(3)
    torch.manual_seed(123)
    torch.testing.assert_close(after, torch.rand(3))
    torch.manual_seed(7)
    assert evaluate_samples(x, ref) == first


def test_w2_subsamples_large_sets():
    x = torch.randn(2500, 2, generator=g(0))
    m = evaluate_samples(x, x + torch.tensor([3.0, 4.0]), generator=g(1))
    assert 4.5 < m["w2"] < 5.5


def test_mixture_mode_metrics_detect_dropped_mode():
    ref = sample_toy("mixture1d", 1000, g(0))
    x = sample_toy("mixture1d", 1000, g(1))
    full = evaluate_samples(x, ref, dataset="mixture1d")
    assert full["mode_coverage"] == 1.0 and full["unassigned"] == 0.0
    assert full["mode_tv"] < 0.05 and abs(full["mode_spread_ratio"] - 1) < 0.1
    dropped = x[x[:, 0] < 1.0]  # lose the mode at 1.5
    m = evaluate_samples(dropped, ref, dataset="mixture1d")
    assert m["mode_coverage"] == 0.75 and m["mode_weight_3"] == 0.0
    assert m["mode_tv"] > 0.2
    blurred = evaluate_samples(
        x + 0.2 * torch.randn(1000, 1, generator=g(3)), ref, dataset="mixture1d"
    )
    assert blurred["mode_spread_ratio"] > 2.5 and blurred["mode_coverage"] == 1.0


def test_transformed_mixture_uses_transformed_modes():
    ref = sample_toy("8gaussians", 1000, g(0), transform="rotate")
    x = sample_toy("8gaussians", 1000, g(1), transform="rotate")
    m = evaluate_samples(x, ref, dataset="8gaussians@rotate")
    assert m["mode_coverage"] == 1.0 and m["unassigned"] < 0.01
    # under the plain name the modes are fitted to the reference (the default rotation)
    plain = evaluate_samples(x, ref, dataset="8gaussians")
    assert plain["mode_coverage"] == 1.0 and plain["mode_tv"] < 0.05
    # a reference that fits no candidate gets no mode metrics rather than wrong ones
    odd = sample_toy("moons", 1000, g(4))
    assert "mode_coverage" not in evaluate_samples(odd, odd, dataset="8gaussians")
    assert "mode_coverage" not in evaluate_samples(
        x, sample_toy("rings", 1000, g(5)), dataset="8gaussians"
    )
    unb = sample_toy("8gaussians", 1000, g(2), transform="unbalanced")
    m_unb = evaluate_samples(unb, sample_toy("8gaussians", 1000, g(3)), dataset="8gaussians")
    target = mode_info("8gaussians", "unbalanced").weights
    assert m_unb["mode_weight_7"] == pytest.approx(float(target[7]), abs=0.04)
    assert m_unb["mode_tv"] > 0.15
    # an unbalanced reference under the plain name: the target weights come from it
    unb_ref = sample_toy("8gaussians", 1000, g(6), transform="unbalanced")
    assert evaluate_samples(unb, unb_ref, dataset="8gaussians")["mode_tv"] < 0.1


def test_collapsed_clumps_with_bridges_are_caught_where_w2_is_fooled():
    """The failure the old within-mode std missed: FAIL-PD's 2-step demo samples were tight
    clumps (std ~0.03 against the target's 0.10) joined by bridges, with W2 at the floor."""
    info = mode_info("8gaussians", "rotate")
    ref = sample_toy("8gaussians", 2000, g(0), transform="rotate")
    fresh = evaluate_samples(sample_toy("8gaussians", 2000, g(1), transform="rotate"), ref,
                             dataset="8gaussians@rotate")  # fmt: skip
    n, nb = 2000, 240  # 12% of the mass on bridges between neighbouring modes
    clumps = info.centers[torch.randint(0, 8, (n - nb,), generator=g(2))]
    clumps = clumps + 0.03 * torch.randn(n - nb, 2, generator=g(3))
    j, u = torch.randint(0, 8, (nb,), generator=g(4)), torch.rand(nb, 1, generator=g(5))
    bridges = info.centers[j] * (1 - u) + info.centers[(j + 1) % 8] * u
    collapsed = evaluate_samples(torch.cat([clumps, bridges]), ref, dataset="8gaussians@rotate")
    # the distances cannot tell: W2 is no worse than that of a fresh target sample set
    assert collapsed["w2"] < fresh["w2"] + 0.02 and collapsed["mode_coverage"] == 1.0
    # the diversity metrics can
    assert fresh["mode_spread_ratio"] == pytest.approx(1.0, abs=0.1)
    assert collapsed["mode_spread_ratio"] < 0.45 and collapsed["mode_spread"] < 0.045
    assert fresh["between_modes"] < 0.02 and collapsed["between_modes"] > 0.04
    assert fresh["coverage"] > 0.93 and collapsed["coverage"] < 0.6
    assert collapsed["recall"] < 0.8 < fresh["recall"]


def test_images_metrics():
    train, held = load_image_dataset("digits")
    real = evaluate_samples(held.x, train.x[:500], dataset="digits")
    assert {"sliced_w2", "frechet", "confidence", "class_tv", "classes_covered"} <= set(real)
    assert "class_9" in real and "w2" not in real
    thick = evaluate_samples(thicken(held.x), train.x[:500], dataset="digits")
    assert thick["frechet"] > 3 * real["frechet"]
    assert real["confidence"] > 0.9 and real["classes_covered"] == 1.0
    ones = evaluate_samples(held.x[held.cond == 1], train.x[:500], dataset="digits")
    assert ones["classes_covered"] < 0.2 and ones["class_tv"] > 0.8
    # without a dataset name only pixel metrics are reported
    assert set(evaluate_samples(held.x, train.x[:500])) == {
        "sliced_w2", "density", "coverage", "precision", "recall"
    }  # fmt: skip
    assert real["coverage"] > 0.8 and ones["coverage"] < 0.3


def test_errors():
    with pytest.raises(ValueError, match="same data"):
        evaluate_samples(torch.zeros(5, 2), torch.zeros(5, 3))
    bad = torch.zeros(4, 2)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="samples: sample 2"):
        evaluate_samples(bad, torch.zeros(4, 2))


@pytest.mark.parametrize("shape", [(50, 1), (50, 2), (50, 5), (10, 1, 8, 8), (10, 3, 6, 6)])
def test_plot_samples_writes_png(tmp_path, shape):
    x = torch.rand(*shape) * 2 - 1
    plot_samples(x, tmp_path / "p", reference=x, title="t")
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    plot_samples(x.numpy(), tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 1000


def test_doctests():
    import doctest

    import flowpost.eval.evaluate as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_package_doctest():
    import doctest

    import flowpost.eval as package

    result = doctest.testmod(package)
    assert result.attempted > 0 and result.failed == 0
