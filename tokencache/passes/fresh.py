"""fresh: the full graph, plus every cached region's output (and score state) as state outputs."""
from __future__ import annotations

import torch.fx as fx

from ..compiler.regions import Region
from ..ops import token_ops
from .graph_edit import add_state_outputs, copy_module, finish, node_by_name


def fresh(gm: fx.GraphModule, cached: list[Region], scored: list[Region], selection: str = "score",
          seed: int = 0, keep: dict[str, str] | None = None, values: dict[str, str] | None = None) -> fx.GraphModule:
    """`cached`: regions whose output is stored. `scored`: regions that will run token-wise; with
    selection "score" they also need their input snapshot (`ref`) and a zeroed staleness counter
    (`stale`), with "random" a seeded generator state (`rng`), with "vnorm" the value-norm prior of
    their block's self-attention (`values`: block -> the attention's value node) and `stale`.
    `keep`: other nodes to store (state key -> node name), e.g. the last block's output."""
    gm = copy_module(gm)
    items = {}
    for region in cached:
        for name, node, _ in region.cached_outputs():
            items[f"cache:{name}"] = node_by_name(gm, node)
    for index, region in enumerate(scored):
        x = node_by_name(gm, region.input)
        with gm.graph.inserting_after(x):
            if selection == "random":
                items[f"rng:{region.name}"] = gm.graph.call_function(token_ops.seed_generator, (x, seed * 1000 + index))
            elif selection == "vnorm":
                items[f"stale:{region.name}"] = gm.graph.call_function(token_ops.fresh_staleness, (x,))
            else:
                items[f"ref:{region.name}"] = gm.graph.call_function(token_ops.snapshot, (x,))
                items[f"stale:{region.name}"] = gm.graph.call_function(token_ops.fresh_staleness, (x,))
    if selection == "vnorm":
        for region in scored:
            value = node_by_name(gm, values[region.block])
            with gm.graph.inserting_after(value):
                items[f"vnorm:{region.name}"] = gm.graph.call_function(token_ops.value_norm_prior, (value,))
    for key, name in (keep or {}).items():
        items[key] = node_by_name(gm, name)
    add_state_outputs(gm, items)
    return finish(gm)
