"""Euler sampling of the embedded flow-matching DiT with classifier-free guidance.

The transformer passed in may be the plain model or a compiled one: it is only called, with
timesteps as tensors that descend 1000 -> 0 (as diffusers pipelines pass them).
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from .fashion_dit import NULL_LABEL, NUM_CLASSES

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 2.0


def check_labels(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long)
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.numel():
        raise ValueError(f"class label {int(bad[0])} is out of range; allowed: 0..{NUM_CLASSES - 1}")
    return labels


def make_noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample(transformer, noise: torch.Tensor, labels, steps: int = DEFAULT_STEPS,
           guidance: float = DEFAULT_GUIDANCE, cfg_mode: str = "batch", progress: bool = False) -> torch.Tensor:
    """Generate images (model space, (n, 1, 32, 32)) from `noise` for class `labels`.

    cfg_mode "batch": one call per step on [cond; uncond]; "two_calls": a call for each half."""
    if cfg_mode not in ("batch", "two_calls"):
        raise ValueError(f"cfg_mode must be 'batch' or 'two_calls', got {cfg_mode!r}")
    labels = check_labels(labels)
    if labels.shape[0] != noise.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {noise.shape[0]} noise images")
    null = torch.full_like(labels, NULL_LABEL)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    x = noise.clone()
    n = x.shape[0]
    for i in tqdm(range(steps), disable=not progress, desc="sampling", leave=False):
        t = (sigmas[i] * 1000).expand(n)
        if cfg_mode == "batch":
            v = transformer(hidden_states=torch.cat([x, x]), timestep=torch.cat([t, t]),
                            class_labels=torch.cat([labels, null]), return_dict=False)[0]
            v_cond, v_uncond = v.chunk(2)
        else:
            v_cond = transformer(hidden_states=x, timestep=t.contiguous(), class_labels=labels, return_dict=False)[0]
            v_uncond = transformer(hidden_states=x, timestep=t.contiguous(), class_labels=null, return_dict=False)[0]
        v = v_uncond + guidance * (v_cond - v_uncond)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x
