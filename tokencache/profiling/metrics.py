"""Fidelity and quality metrics that run offline.

Images for PSNR/SSIM are in [0, 1]. `fd_clf` is a Fréchet distance in the feature space of the
in-project classifier: the same formula as FID, a different network, so never call it FID.
"""
from __future__ import annotations

import numpy as np
import torch


def _numpy01(images: torch.Tensor) -> np.ndarray:
    a = images.detach().float().cpu().numpy()
    if a.min() < -1e-6 or a.max() > 1 + 1e-6:
        raise ValueError(f"images must be in [0, 1] for PSNR/SSIM, got range [{a.min():.3f}, {a.max():.3f}]")
    return a.reshape(a.shape[0], -1, *a.shape[-2:])


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Mean PSNR (dB) over images; inf for identical images."""
    a, b = _numpy01(reference), _numpy01(test)
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(1)
    with np.errstate(divide="ignore"):
        values = 10 * np.log10(1.0 / mse)
    return float(np.mean(values))


def ssim(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Mean SSIM over images (skimage, data_range=1, per channel)."""
    from skimage.metrics import structural_similarity

    a, b = _numpy01(reference), _numpy01(test)
    return float(np.mean([structural_similarity(a[i, c], b[i, c], data_range=1.0)
                          for i in range(a.shape[0]) for c in range(a.shape[1])]))


def rel_l2(reference: torch.Tensor, test: torch.Tensor) -> float:
    return float((test.float() - reference.float()).norm() / reference.float().norm())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(root)))


@torch.no_grad()
def classifier_features(classifier, images: torch.Tensor, batch: int = 1000) -> np.ndarray:
    return torch.cat([classifier.features(images[i:i + batch]) for i in range(0, len(images), batch)]).numpy()


def fd_clf(classifier, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """Fréchet distance between two image sets in the classifier's feature space."""
    return frechet_distance(classifier_features(classifier, images_a), classifier_features(classifier, images_b))


@torch.no_grad()
def class_accuracy(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    preds = torch.cat([classifier(images[i:i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return float((preds == labels).float().mean())


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one eager call of `fn` (torch.utils.flop_counter, with attention on CPU counted:
    runtime/flops.py)."""
    from ..runtime.flops import flop_counter

    with flop_counter() as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
