"""Tiny models the compiler tests run on, each with a uniform `call(model, x, t)` and a denoising loop."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokencache.models.reference_dit import ReferenceDiT


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    latent: tuple[int, int, int]               # (channels, height, width)
    call: Callable                             # (model, x, t, batch) -> prediction


def _labels(batch):
    return torch.arange(batch) % 10


def reference_case(**kw) -> Case:
    def build():
        torch.manual_seed(0)
        return ReferenceDiT(**kw).eval()
    image, channels = kw.get("image", 16), kw.get("channels", 4)
    return Case("reference", build, (channels, image, image),
                lambda m, x, t: m(x, t, _labels(x.shape[0]).to(x.device)))


def diffusers_dit_case() -> Case:
    from diffusers import DiTTransformer2DModel

    def build():
        torch.manual_seed(0)
        return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=2,
                                     sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1).eval()
    return Case("diffusers_dit", build, (4, 8, 8),
                lambda m, x, t: m(hidden_states=x, timestep=t, class_labels=_labels(x.shape[0]), return_dict=False)[0][:, :4])


def pixart_case() -> Case:
    from diffusers import PixArtTransformer2DModel

    def build():
        torch.manual_seed(0)
        return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                        num_layers=2, sample_size=8, patch_size=2, cross_attention_dim=32,
                                        caption_channels=24, norm_num_groups=1).eval()

    def call(m, x, t):
        g = torch.Generator().manual_seed(1)
        text = torch.randn(x.shape[0], 5, 24, generator=g)
        return m(x, encoder_hidden_states=text, timestep=t,
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
    return Case("pixart", build, (4, 8, 8), call)


ALL_CASES = {"reference": reference_case, "diffusers_dit": diffusers_dit_case, "pixart": pixart_case}


def noise(case: Case, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *case.latent, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(case: Case, model, x0: torch.Tensor, steps: int = 10, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Euler flow-matching loop, timesteps 1000 -> 0 as tensors (as diffusers pipelines pass them)."""
    x = x0.clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1, device=x0.device)
    for i in range(start, steps if stop is None else stop):
        t = (sigmas[i] * 1000).expand(x.shape[0]).contiguous()
        x = x + (sigmas[i + 1] - sigmas[i]) * case.call(model, x, t)
    return x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


class ConvFF(nn.Module):
    def __init__(self, dim, side):
        super().__init__()
        self.side = side
        self.inp = nn.Linear(dim, 2 * dim)
        self.conv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        h = self.inp(x).transpose(1, 2).reshape(B, 2 * C, self.side, self.side)
        h = F.silu(self.conv(h)).flatten(2).transpose(1, 2)
        return self.out(h)


class SanaStyle(nn.Module):
    def __init__(self, dim=32, side=4, depth=2):
        super().__init__()
        self.side = side
        self.embed = nn.Linear(4, dim)
        self.blocks = nn.ModuleList([ConvFFBlockWithAttn(dim, side) for _ in range(depth)])
        self.out = nn.Linear(dim, 4)

    def forward(self, x, timestep):
        B = x.shape[0]
        h = self.embed(x.flatten(2).transpose(1, 2)) + timestep[:, None, None] * 1e-3
        for b in self.blocks:
            h = b(h)
        return self.out(h).transpose(1, 2).reshape(B, 4, self.side, self.side)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x):
        B = x.shape[0]
        q, k, v = (f(x).view(B, -1, self.heads, x.shape[-1] // self.heads).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, -1, x.shape[-1])
        return self.to_out(o)


class ConvFFBlockWithAttn(nn.Module):
    def __init__(self, dim, side):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim)
        self.ff = ConvFF(dim, side)

    def forward(self, x):
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm2(x))


def sana_case() -> Case:
    def build():
        torch.manual_seed(0)
        return SanaStyle().eval()
    return Case("sana_style", build, (4, 4, 4), lambda m, x, t: m(x, t))


class NoBlocksModel(nn.Module):
    """An MLP with no transformer blocks: nothing for tokencache to cache."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x, timestep):
        return self.b(torch.relu(self.a(x))) * timestep[:, None]
