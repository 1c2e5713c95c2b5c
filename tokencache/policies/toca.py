"""toca: between fresh steps each region recomputes its K = round(ratio*N) highest-scoring tokens.

Self-attention is reused whole under attention="reuse" (ToCa's published choice) and computed for
the selected queries against all keys under attention="tokens". Cross-attention and feed-forward
regions are always token-wise: they treat tokens independently, so K rows are exact.
"""
from __future__ import annotations

from ..passes import fresh, partial, reuse, tokens_for
from .base import FRESH, interval_schedule


def split_regions(analysis, config):
    """(regions reused whole in partial steps, regions computed token-wise)."""
    whole = [r for r in analysis.regions if r.kind == "self_attention" and config.attention == "reuse"]
    tokenwise = [r for r in analysis.regions if r not in whole]
    return whole, tokenwise


class TocaPolicy:
    name = "toca"

    def check(self, analysis, config):
        if not analysis.regions:
            return "no cacheable regions"
        _, tokenwise = split_regions(analysis, config)
        bad = [f"{r.name}: {r.reason}" for r in tokenwise if not r.token_wise]
        if bad:
            return "token-wise caching needs token-local regions; " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        return None

    def variants(self, gm, analysis, config):
        whole, tokenwise = split_regions(analysis, config)
        return {FRESH: fresh(gm, analysis.regions, tokenwise),
                "partial": partial(reuse(gm, whole), tokenwise, config)}

    def schedule(self, config):
        return interval_schedule(config, "partial")

    def computed_tokens(self, analysis, config):
        whole, tokenwise = split_regions(analysis, config)
        return {**{r.name: 0 for r in whole}, **{r.name: tokens_for(r, config.ratio) for r in tokenwise}}

    def host_inputs(self, variant, step, fresh_steps, config):
        return {}
