"""dato (DaTo): fresh steps run each self-attention on the tokens left after pruning the most
redundant ones (passes/prune.py); between fresh steps every cached region is reused (FORA-like).
Self-attention on a square token grid only: joint-attention models (SD3, Flux) fall back, saying so.

Exact with prune_ratio=0 and interval=1: every step fresh, attention over all tokens.
"""
from __future__ import annotations

import math

from ..ops.prune_ops import patch_count
from ..passes import fresh, reuse
from ..passes.prune import prune_attention
from .base import FRESH
from .fora import ForaPolicy


def _candidates(analysis, config):
    return [r for r in analysis.regions if r.kind == "self_attention" and r.stream == "image"
            and patch_count(r.tokens, config.prune_patch)]


class DatoPolicy(ForaPolicy):
    """FORA's schedule and reuse steps; only the fresh steps differ."""
    name = "dato"
    fresh_computes_less = True     # its fresh steps prune: the uncached FLOPs come from the captured graph

    def check(self, analysis, config):
        if not analysis.regions:
            return "no cacheable regions"
        if not _candidates(analysis, config):
            attention = [r for r in analysis.regions if r.kind == "self_attention"]
            if not attention:
                return ("dato prunes tokens before self-attention and no self-attention module was found "
                        "(policy='fora' reuses whole modules)")
            tokens = attention[0].tokens
            side = math.isqrt(tokens)
            fits = [p for p in range(1, side + 1) if side % p == 0] if side * side == tokens else []
            hint = (f"prune_patch={' or '.join(map(str, fits))} fits its {side}x{side} grid" if fits
                    else "its tokens are not a square grid")
            return (f"dato needs the tokens on a square grid that patches of {config.prune_patch}x"
                    f"{config.prune_patch} divide; {attention[0].name} has {tokens} tokens: {hint} "
                    "(or policy='fora')")
        return None

    def variants(self, gm, analysis, config):
        # a candidate whose path cannot be resized stays whole in fresh steps; reused between them
        return {FRESH: prune_attention(fresh(gm, analysis.regions, []), _candidates(analysis, config), config),
                "reuse": reuse(gm, analysis.regions)}
