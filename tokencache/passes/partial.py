"""partial (ToCa): each token-wise region recomputes only its K highest-scoring tokens.

    score -> topk(K) -> gather K input rows -> the region's token path on K rows
          -> scatter into the cached output -> the block continues with the full cache

K = round(ratio * N) is a Python int fixed per region, so every shape is static. For attention
regions only the query path is gathered: keys and values still see all N tokens, which makes the
K recomputed rows exact (a self-attention under attention="reuse" is handled by the reuse pass).
"""
from __future__ import annotations

import torch.fx as fx

from ..compiler.regions import Region
from ..compiler.token_axis import size_arg_positions
from ..config import CacheConfig
from . import token_ops
from .graph_edit import add_state_input, add_state_outputs, copy_module, finish, node_by_name, replace_uses_outside


def tokens_for(region: Region, ratio: float) -> int:
    return max(1, min(region.tokens, round(ratio * region.tokens)))


def partial(gm: fx.GraphModule, regions: list[Region], config: CacheConfig, selection: str = "score",
            ratios: dict[str, float] | None = None) -> fx.GraphModule:
    """`selection`: "score", "random" or "vnorm" (see token_ops); `ratios`: per-region ratio overrides."""
    gm = copy_module(gm)
    for region in regions:
        ratio = (ratios or {}).get(region.name, config.ratio)
        _rewrite(gm, region, config, selection, tokens_for(region, ratio))
    return finish(gm)


class Emitter:
    """Appends call_function nodes one after another, starting after `anchor`."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node):
        self.graph, self.anchor = graph, anchor

    def __call__(self, fn, *args) -> fx.Node:
        with self.graph.inserting_after(self.anchor):
            self.anchor = self.graph.call_function(fn, args)
        return self.anchor

    def copy(self, node: fx.Node, env: dict) -> fx.Node:
        with self.graph.inserting_after(self.anchor):
            self.anchor = self.graph.node_copy(node, lambda a: env.get(a, a))
        return self.anchor


def region_on_rows(gm: fx.GraphModule, region: Region, index: fx.Node, k: int, emit: Emitter):
    """Gather the region input's rows `index` (B, K) and run the region's token path on them.

    Returns (gathered input rows, output rows (B, K, C'), names of the nodes created)."""
    x, out = node_by_name(gm, region.input), node_by_name(gm, region.output)
    rows = emit(token_ops.gather_rows, x, index)
    env = {x: rows}
    for node in (n for n in gm.graph.nodes if n.name in region.token_axes and n is not x):
        copy = emit.copy(node, env)
        copy.meta.pop("example_value", None)
        _resize(copy, region.token_axes[node.name], region.tokens, k)
        env[node] = copy
    return rows, env[out], {n.name for n in env.values()}


def _rewrite(gm: fx.GraphModule, region: Region, config: CacheConfig, selection: str, k: int) -> None:
    cache = add_state_input(gm, f"cache:{region.name}")
    if selection == "random":
        rng = add_state_input(gm, f"rng:{region.name}")
    else:
        prior = add_state_input(gm, f"{'vnorm' if selection == 'vnorm' else 'ref'}:{region.name}")
        stale = add_state_input(gm, f"stale:{region.name}")
    x, out = node_by_name(gm, region.input), node_by_name(gm, region.output)
    last_member = [n for n in gm.graph.nodes if n.name in set(region.nodes)][-1]
    emit = Emitter(gm.graph, last_member)     # new nodes go after the region, in order
    pair = config.cfg_shared_tokens and region.batch >= 2 and region.batch % 2 == 0
    if selection == "random":
        new_rng = emit(token_ops.next_random, rng)
        score = emit(token_ops.random_scores, new_rng, region.batch)
    elif selection == "vnorm":
        score = emit(token_ops.prior_scores, prior, stale, config.interval, float(config.dynamics_weight),
                     float(config.staleness_weight), pair, config.spatial_grid, float(config.spatial_bonus))
    else:
        score = emit(token_ops.token_scores, x, prior, stale, config.interval, float(config.dynamics_weight),
                     float(config.staleness_weight), pair, config.spatial_grid, float(config.spatial_bonus))
    index = emit(token_ops.top_tokens, score, k)
    _, out_rows, created = region_on_rows(gm, region, index, k, emit)
    new_cache = emit(token_ops.scatter_rows, cache, index, out_rows)
    if selection == "random":
        state = {f"rng:{region.name}": new_rng}
    else:
        # `ref` stays the fresh step's input: dynamics = change since the last fresh step, and no
        # full-size copy of the snapshot per step
        state = {f"stale:{region.name}": emit(token_ops.age_staleness, stale, index)}
    replace_uses_outside(out, new_cache, set(region.nodes) | created)
    add_state_outputs(gm, {f"cache:{region.name}": new_cache, **state})


def _resize(node: fx.Node, axis: int, tokens: int, k: int) -> None:
    """Change a literal token count in a view/reshape size list from N to K."""
    where = size_arg_positions(node)
    if where is None:
        return
    style, start = where
    args = list(node.args)
    sizes = list(args[start]) if style == "tuple" else args[start:]
    if axis < len(sizes) and sizes[axis] == tokens:
        sizes[axis] = k
        if style == "tuple":
            args[start] = type(node.args[start])(sizes)
        else:
            args[start:] = sizes
        node.args = tuple(args)

