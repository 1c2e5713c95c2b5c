"""prune (DaTo): a self-attention region runs on the tokens it keeps, in fresh steps.

    plan (destinations by dynamics + seeded noise, the most redundant sources pruned)
      -> gather the M kept input rows -> the region on M rows (queries, keys and values)
      -> recover: kept rows in place, each pruned token a copy of its destination

The region's whole token path, keys and values included, is resized to M rows
(token_axis.propagate with attention_over_rows), so the attention is over the kept tokens only.
State per region: the last fresh output (for the dynamics), the dynamics, whether a fresh step
ran before in this generation, and the noise generator. M is a Python int: static shapes.
"""
from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx as fx

from ..compiler.regions import Region
from ..compiler.token_axis import NotTokenLocal, PathInfo, propagate, shape_of
from ..config import CacheConfig
from ..compat import example_value
from ..ops import prune_ops, token_ops
from .graph_edit import add_state_input, add_state_outputs, copy_module, finish, node_by_name, replace_uses_outside
from .partial import Emitter, region_on_rows


def pruned_path(gm: fx.GraphModule, region: Region) -> Region:
    """`region` with its token path extended over keys and values; NotTokenLocal says why not."""
    info = PathInfo()
    nodes = [n for n in gm.graph.nodes if n.name in set(region.nodes)]
    axes = propagate(nodes, node_by_name(gm, region.input), 1, region.tokens, info=info, attention_over_rows=True)
    if axes.get(region.output) != 1:
        raise NotTokenLocal(f"{region.output}: the output does not keep the tokens on axis 1")
    return dataclasses.replace(region, token_axes=axes, path=info)


def prune_attention(gm: fx.GraphModule, regions: list[Region], config: CacheConfig) -> fx.GraphModule:
    """`regions`: self-attention regions on a square token grid (policies/dato.py picks them).
    One whose path cannot be resized (a mask over all tokens) is left whole."""
    gm = copy_module(gm)
    before = {n.name: n for n in gm.graph.nodes}
    resized = []
    for region in regions:
        try:
            resized.append(pruned_path(gm, region))
        except NotTokenLocal:
            continue
    for index, region in enumerate(resized):
        _rewrite(gm, region, config, index, before)
    return finish(gm)


def _rewrite(gm: fx.GraphModule, region: Region, config: CacheConfig, index: int, before: dict) -> None:
    batch, tokens = region.batch, region.tokens
    x, out = node_by_name(gm, region.input), node_by_name(gm, region.output)
    out_shape = shape_of(out)
    name = region.name
    dyn = add_state_input(gm, f"dyn:{name}", init=((batch, tokens), torch.float32))
    previous = add_state_input(gm, f"prev:{name}", init=(out_shape, example_value(out).dtype))
    seen = add_state_input(gm, f"seen:{name}", init=((1,), torch.float32))
    rng = add_state_input(gm, f"rng:{name}", init=((tokens,), torch.int64))
    last_member = [n for n in gm.graph.nodes if n.name in set(region.nodes)][-1]
    emit = Emitter(gm.graph, last_member)
    base = emit(token_ops.seed_generator, x, config.seed * 1000 + index)
    new_rng = emit(token_ops.next_random, emit(operator.add, rng, base))
    noise = emit(prune_ops.gaussian, new_rng)
    pruned = prune_ops.pruned_count(tokens, config.prune_patch, config.prune_ratio)
    pair = config.cfg_shared_tokens and batch >= 2 and batch % 2 == 0
    plan = emit(prune_ops.plan, x, dyn, noise, config.prune_patch, pruned, pair)
    kept, pruned_at, pruned_to = (emit(operator.getitem, plan, i) for i in range(3))
    rows = region_on_rows(gm, region, kept, tokens - pruned, emit, True, before)
    full = emit(prune_ops.recover, kept, rows.output, pruned_at, pruned_to, tokens)
    new_dyn = emit(prune_ops.dynamics, full, previous, seen)
    now_seen = emit(torch.ones_like, seen)
    replace_uses_outside(out, full, set(region.nodes) | rows.created | emit.created)
    add_state_outputs(gm, {f"dyn:{name}": new_dyn, f"prev:{name}": full, f"seen:{name}": now_seen,
                           f"rng:{name}": new_rng})
