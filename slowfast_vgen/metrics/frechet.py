"""Fréchet distance between Gaussian fits of features (FID / FVD maths), in plain torch.

``frechet_distance(x, y)`` takes two ``(N, D)`` feature matrices (k-diffusion's ``fid(x, y)``
shape): FVD is this distance over I3D features of real and generated clips.

    d^2 = |mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x^1/2 S_y S_x^1/2)^1/2)

The last trace equals ``tr((S_x S_y)^1/2)`` (the two matrices are similar), but the symmetric
form keeps every step on a symmetric positive semi-definite matrix, so both square roots are
computed by eigendecomposition (``torch.linalg.eigh``): ``A^1/2 = V diag(sqrt(max(l, 0))) V^T``.
Negative eigenvalues are round-off and are clipped to 0. Everything runs in float64; no scipy.
"""

from __future__ import annotations

import torch


def gaussian_fit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (``N - 1`` denominator) of ``(N, D)`` features, float64."""
    if features.ndim != 2:
        raise ValueError(f"expected features of shape (N, D), got {tuple(features.shape)}")
    if features.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs at least 2 samples, got {features.shape[0]}")
    f = features.detach().to(torch.float64)
    mu = f.mean(dim=0)
    centered = f - mu
    sigma = centered.T @ centered / (f.shape[0] - 1)  # (D, D)
    return mu, sigma


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix by eigendecomposition (negative eigenvalues -> 0)."""
    sym = (matrix + matrix.T) / 2
    eigvals, eigvecs = torch.linalg.eigh(sym)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance_from_stats(mu_x: torch.Tensor, sigma_x: torch.Tensor, mu_y: torch.Tensor, sigma_y: torch.Tensor) -> float:
    """Fréchet distance between ``N(mu_x, sigma_x)`` and ``N(mu_y, sigma_y)`` (squared form, as FID/FVD report)."""
    mu_x, mu_y = mu_x.to(torch.float64), mu_y.to(torch.float64)
    sigma_x, sigma_y = sigma_x.to(torch.float64), sigma_y.to(torch.float64)
    if mu_x.shape != mu_y.shape or sigma_x.shape != sigma_y.shape:
        raise ValueError(f"feature dimensions differ: {tuple(mu_x.shape)} vs {tuple(mu_y.shape)}")
    # 1. mean term
    mean_term = (mu_x - mu_y).pow(2).sum()
    # 2. tr((S_x^1/2 S_y S_x^1/2)^1/2) from the eigenvalues of a symmetric PSD matrix
    root_x = sqrtm_psd(sigma_x)
    middle = root_x @ sigma_y @ root_x
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    # 3. d^2; tiny negative values are round-off for equal distributions
    distance = mean_term + torch.trace(sigma_x) + torch.trace(sigma_y) - 2 * cross
    return max(float(distance), 0.0)


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two ``(N, D)`` feature sets (FID/FVD over features)."""
    return frechet_distance_from_stats(*gaussian_fit(x), *gaussian_fit(y))
