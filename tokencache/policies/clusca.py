"""clusca (ClusCa): TaylorSeer forecasting plus, in cached steps, one computed token per k-means
cluster in every feed-forward region, propagated to its cluster with weight gamma. k-means runs at
fresh steps on the tokens leaving block `cluster_layer` (warm-started, fixed iterations)."""
from __future__ import annotations

from ..passes.cluster_partial import cluster_partial
from ..passes.cluster_store import cluster_store
from ..passes.taylor_store import taylor_store
from .base import FRESH, interval_schedule
from .taylorseer import host_taylor_inputs


def split(analysis, config):
    """(regions only forecast, token-wise feed-forwards that compute one token per cluster): the
    clusters label the tokens leaving the cluster block, so only regions over those same tokens
    (not a joint model's text stream, nor Flux's double blocks when its single blocks are
    clustered) can use them."""
    block = ClusCaPolicy().cluster_block(analysis, config)
    tokens = analysis.block_tokens.get(block)
    clustered = [r for r in analysis.regions if r.kind == "feed_forward" and r.token_wise
                 and r.stream == "image" and r.tokens == tokens]
    return [r for r in analysis.regions if r not in clustered], clustered


class ClusCaPolicy:
    name = "clusca"

    def cluster_block(self, analysis, config) -> str | None:
        if not -len(analysis.blocks) <= config.cluster_layer < len(analysis.blocks):
            return None
        return analysis.blocks[config.cluster_layer]

    def check(self, analysis, config):
        _, clustered = split(analysis, config)
        if not clustered:
            return "ClusCa needs token-local feed-forward regions; none found"
        block = self.cluster_block(analysis, config)
        if block is None:
            return f"cluster_layer={config.cluster_layer} is out of range for {len(analysis.blocks)} blocks"
        if block not in analysis.block_outputs:
            return f"block {block} has no single output tensor to cluster"
        too_few = [r.name for r in clustered if r.tokens < config.clusters]
        if too_few:
            return f"clusters={config.clusters} exceeds the token count of {too_few[0]}"
        return None

    def variants(self, gm, analysis, config):
        forecast_only, clustered = split(analysis, config)
        block = self.cluster_block(analysis, config)
        fresh = cluster_store(taylor_store(gm, analysis.regions, config.order, config.torch_cache_dtype),
                              analysis.block_outputs[block], config.clusters, config.kmeans_iters, config.seed)
        return {FRESH: fresh, "clusters": cluster_partial(gm, forecast_only, clustered, config.clusters, config.gamma)}

    def schedule(self, config):
        return interval_schedule(config, "clusters")

    def computed_tokens(self, analysis, config):
        _, clustered = split(analysis, config)
        return {r.name: (config.clusters if r in clustered else 0) for r in analysis.regions}

    def host_inputs(self, variant, step, fresh_steps, config):
        return host_taylor_inputs("fresh" if variant == FRESH else "forecast", step, fresh_steps, config.order)
