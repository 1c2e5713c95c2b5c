"""The tensor functions of DaTo's pruned self-attention (passes/prune.py), static-shape.

On a square token grid cut into g x g patches, every patch has one *destination*: its token with
the highest dynamics (channel-mean |output change| between the last two fresh steps) plus 0.1 x a
seeded normal draw (as the reference does; at the first fresh steps, with no dynamics yet, the
draw alone decides). Every other token is a *source*. The R sources most cosine-similar to their
best destination are pruned: attention runs on the M = N - R kept tokens (queries, keys and values),
and a pruned token's output is its destination's. R is fixed by the config: no dynamic shapes.
With `pair_halves` the plan is made on the first half of the batch and used for both ([cond;
uncond] under classifier-free guidance prune the same tokens).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .token_ops import _LCG_M, _rows, gather_rows, next_random

NOISE = 0.1


def patch_count(tokens: int, patch: int) -> int | None:
    """Patches of a square grid of `tokens`, or None if it is not one (or `patch` does not divide it)."""
    side = math.isqrt(tokens)
    return (side // patch) ** 2 if side * side == tokens and side % patch == 0 else None


def pruned_count(tokens: int, patch: int, prune: float) -> int:
    """R: how many of the N - P sources are pruned."""
    return round(prune * (tokens - patch_count(tokens, patch)))


def gaussian(state: torch.Tensor) -> torch.Tensor:
    """A standard normal draw per token (Box-Muller) from the int64 generator state (N,)."""
    u1 = (state.to(torch.float32) + 1.0) / (_LCG_M + 1.0)
    u2 = next_random(state).to(torch.float32) / _LCG_M
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


def plan(x: torch.Tensor, dynamics: torch.Tensor, noise: torch.Tensor, patch: int, pruned: int,
         pair_halves: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept (B, M) ascending, pruned positions (B, R), their destinations (B, R)) for the region
    input x (B, N, C), dynamics (B, N) and a noise draw (N,)."""
    batch, tokens, _ = x.shape
    if pair_halves:
        x, dynamics = x[:batch // 2], dynamics[:batch // 2]
    b = x.shape[0]
    side = math.isqrt(tokens)
    cells = side // patch
    score = NOISE * dynamics.float() + NOISE * noise
    local = score.reshape(b, cells, patch, cells, patch).permute(0, 1, 3, 2, 4).reshape(b, cells * cells, patch * patch)
    local = local.argmax(dim=-1)                                          # (b, P) position inside its patch
    cell = torch.arange(cells * cells, device=x.device)
    row = (cell // cells) * patch + local // patch
    col = (cell % cells) * patch + local % patch
    dst = row * side + col                                                # (b, P)
    # orderings by top-k with the token index as the tie-break (TopK exports to ONNX and TensorRT;
    # a stable sort does not), so every backend picks the same tokens
    index = torch.arange(tokens, device=x.device)
    is_dst = torch.zeros(b, tokens, device=x.device, dtype=torch.long).scatter(1, dst, 1)
    sources = tokens - dst.shape[1]
    src = torch.topk(is_dst * tokens + index, sources, dim=1, largest=False, sorted=True).indices   # (b, S) ascending
    unit = F.normalize(x.float(), dim=-1)
    similarity = gather_rows(unit, src) @ gather_rows(unit, dst).transpose(1, 2)  # (b, S, P)
    best, match = similarity.max(dim=-1)
    tie_break = torch.arange(sources, device=x.device, dtype=best.dtype) * (1e-6 / sources)
    order = torch.topk(best - tie_break, sources, dim=1, largest=True, sorted=True).indices
    gone, stay = order[:, :pruned], order[:, pruned:]
    pruned_at = torch.gather(src, 1, gone)
    pruned_to = torch.gather(dst, 1, torch.gather(match, 1, gone))
    kept = torch.cat([dst, torch.gather(src, 1, stay)], dim=1)
    kept = torch.topk(kept, kept.shape[1], dim=1, largest=False, sorted=True).values   # ascending
    if pair_halves:
        kept, pruned_at, pruned_to = (torch.cat([t, t], dim=0) for t in (kept, pruned_at, pruned_to))
    return kept, pruned_at, pruned_to


def recover(kept: torch.Tensor, rows: torch.Tensor, pruned_at: torch.Tensor, pruned_to: torch.Tensor,
            tokens: int) -> torch.Tensor:
    """(B, N, C): the kept rows at their positions, each pruned token a copy of its destination's."""
    full = rows.new_zeros(rows.shape[0], tokens, rows.shape[-1]).index_put(_rows(kept), rows)
    return full.index_put(_rows(pruned_at), full[_rows(pruned_to)])


def dynamics(out: torch.Tensor, previous: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Channel-mean |change| of the region output since the last fresh step (B, N); zero at the
    first fresh step (`seen` 0), where there is no last one."""
    return (out.float() - previous.float()).abs().mean(dim=-1) * seen
