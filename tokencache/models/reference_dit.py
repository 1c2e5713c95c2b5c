"""A hand-written DiT in the DiT-XL/2 style (adaLN-Zero blocks), for tests and speed benchmarks.

It is deliberately written the way research code writes it (fused qkv projection, `B, N, C =
x.shape` and literal-size reshapes), unlike diffusers, so the compiler is exercised on both styles.
Random weights; `zero_init=False` keeps the adaLN gates non-zero so that caching has an effect.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        sa, ca, ga, sm, cm, gm = self.adaLN(c).chunk(6, dim=-1)
        x = x + ga.unsqueeze(1) * self.attn(modulate(self.norm1(x), sa, ca))
        x = x + gm.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sm, cm))
        return x


class ReferenceDiT(nn.Module):
    """Class-conditional DiT: (x: B,C,H,W; timestep: B; class_labels: B) -> B,C,H,W."""

    def __init__(self, image: int = 16, patch: int = 2, channels: int = 4, hidden: int = 64,
                 depth: int = 2, heads: int = 4, classes: int = 10):
        super().__init__()
        self.patch, self.channels, self.image = patch, channels, image
        self.embed = nn.Conv2d(channels, hidden, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, hidden) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.y_embed = nn.Embedding(classes + 1, hidden)
        self.blocks = nn.ModuleList([Block(hidden, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.out = nn.Linear(hidden, patch * patch * channels)

    def timestep_embedding(self, t):
        half = 128
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.pos.dtype)

    def forward(self, hidden_states, timestep, class_labels):
        B = hidden_states.shape[0]
        x = self.embed(hidden_states).flatten(2).transpose(1, 2) + self.pos
        c = self.t_mlp(self.timestep_embedding(timestep)) + self.y_embed(class_labels)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        x = self.out(modulate(self.norm(x), shift, scale))
        g, p = self.image // self.patch, self.patch
        x = x.reshape(B, g, g, p, p, self.channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, self.channels, self.image, self.image)
