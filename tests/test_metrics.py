"""Metrics on cases with known answers."""
import math

import numpy as np
import pytest
import torch

from tokencache.profiling import metrics


def test_identical_images():
    x = torch.rand(4, 1, 28, 28)
    assert metrics.psnr(x, x) == math.inf
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    assert metrics.rel_l2(x, x) == 0.0


def test_psnr_of_known_noise_level():
    g = torch.Generator().manual_seed(0)
    x = torch.full((8, 1, 64, 64), 0.5)
    sigma = 0.05
    noisy = x + sigma * torch.randn(x.shape, generator=g)       # stays inside [0, 1] at this level
    expected = 10 * math.log10(1 / sigma ** 2)                   # 26.02 dB
    assert metrics.psnr(x, noisy.clamp(0, 1)) == pytest.approx(expected, abs=0.1)
    assert metrics.ssim(x, noisy.clamp(0, 1)) < 0.9


def test_psnr_rejects_images_outside_unit_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 2.0))


def test_frechet_distance_of_shifted_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) + np.array([2.0, 0, 0])
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(a, b) == pytest.approx(4.0, abs=0.25)   # |mu1 - mu2|^2, same covariance


def test_count_flops_of_a_linear_layer():
    layer = torch.nn.Linear(8, 16)
    assert metrics.count_flops(layer, torch.randn(4, 8)) == 2 * 4 * 8 * 16
