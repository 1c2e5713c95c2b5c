"""fresh: the full graph, plus every cached region's output (and score state) as state outputs."""
from __future__ import annotations

import torch.fx as fx

from ..compiler.regions import Region
from . import token_ops
from .graph_edit import add_state_outputs, copy_module, finish, node_by_name


def fresh(gm: fx.GraphModule, cached: list[Region], scored: list[Region]) -> fx.GraphModule:
    """`cached`: regions whose output is stored; `scored`: regions that will run token-wise and so
    also need their input snapshot (`ref`) and a zeroed staleness counter (`stale`)."""
    gm = copy_module(gm)
    items = {}
    for region in cached:
        items[f"cache:{region.name}"] = node_by_name(gm, region.output)
    for region in scored:
        x = node_by_name(gm, region.input)
        items[f"ref:{region.name}"] = x
        with gm.graph.inserting_after(x):
            items[f"stale:{region.name}"] = gm.graph.call_function(token_ops.fresh_staleness, (x,))
    add_state_outputs(gm, items)
    return finish(gm)
