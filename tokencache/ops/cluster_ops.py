"""Static-shape k-means and cluster-driven token selection/propagation (ClusCa).

k-means runs a fixed number of Lloyd iterations (no data-dependent early exit, so no host sync),
warm-started from the previous fresh step's centroids; at a generation's first fresh step the
centroid state is all zeros and evenly spaced tokens seed the clusters. Distances are squared L2
via one matmul (ClusCa uses L1; L2 keeps it a single GEMM and exports to ONNX as MatMul).
"""
from __future__ import annotations

import torch

from .token_ops import gather_rows, scatter_rows


def _one_hot(labels: torch.Tensor, clusters: int, dtype) -> torch.Tensor:
    return (labels.unsqueeze(-1) == torch.arange(clusters, device=labels.device)).to(dtype)


def kmeans(x: torch.Tensor, previous: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, N, C), previous centroids (B, K, C) -> (labels (B, N) int64, centroids (B, K, C))."""
    x = x.float()
    clusters = previous.shape[1]
    seeds = torch.linspace(0, x.shape[1] - 1, clusters, device=x.device).round().long()
    warm = previous.float().abs().sum(dim=(1, 2), keepdim=True) > 0
    centroids = torch.where(warm, previous.float(), x[:, seeds])
    x_sq = (x * x).sum(-1, keepdim=True)
    labels = None
    for _ in range(iterations + 1):
        dist = x_sq - 2 * x @ centroids.transpose(1, 2) + (centroids * centroids).sum(-1).unsqueeze(1)
        labels = dist.argmin(dim=-1)
        if _ == iterations:
            break                                  # labels of the final centroids
        onehot = _one_hot(labels, clusters, x.dtype)           # (B, N, K)
        counts = onehot.sum(1).unsqueeze(-1)                   # (B, K, 1)
        centroids = torch.where(counts > 0, onehot.transpose(1, 2) @ x / counts.clamp(min=1), centroids)
    return labels, centroids.to(previous.dtype)


def kmeans_labels(x, previous, iterations):
    return kmeans(x, previous, iterations)[0]


def kmeans_centroids(x, previous, iterations):
    return kmeans(x, previous, iterations)[1]


def cluster_representatives(labels: torch.Tensor, weights: torch.Tensor, clusters: int) -> torch.Tensor:
    """One token per cluster (B, K): the member with the highest weight (random weights = a random
    member); an empty cluster yields token 0."""
    member = labels.unsqueeze(1) == torch.arange(clusters, device=labels.device).view(1, -1, 1)   # (B, K, N)
    scores = torch.where(member, weights.unsqueeze(1), torch.full_like(weights.unsqueeze(1), -1.0))
    return scores.argmax(dim=-1)


def propagate(factor0: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor,
              gamma: float) -> torch.Tensor:
    """Write the representatives' new outputs, then pull every member towards its cluster's value:
    T_i <- gamma * v_c(i) + (1 - gamma) * T_i (representatives keep their value exactly)."""
    work = torch.promote_types(factor0.dtype, torch.float32)
    t = scatter_rows(factor0.to(work), index, rows.to(work))
    value_of_member = gather_rows(rows.to(work), labels)
    return (gamma * value_of_member + (1 - gamma) * t).to(factor0.dtype)


def replace_factor0(factors: torch.Tensor, factor0: torch.Tensor) -> torch.Tensor:
    return torch.cat([factor0.unsqueeze(0).to(factors.dtype), factors[1:]], dim=0)
