"""taylor_store: a fresh graph that also keeps each region's Taylor factors up to date.

factor[0] <- the region's output now; factor[i+1] <- (factor[i]_new - factor[i]_old) / distance,
with the distances and the validity of each order passed in from the host (see token_ops).
"""
from __future__ import annotations

import torch.fx as fx

from ..compiler.regions import Region
from . import token_ops
from .graph_edit import add_host_input, add_state_input, add_state_outputs, copy_module, finish, node_by_name


def factors_key(region: Region) -> str:
    return f"taylor:{region.name}"


def factors_shape(region: Region, order: int) -> tuple[int, ...]:
    return (order + 1, region.batch, region.tokens, region.out_features)


def taylor_store(gm: fx.GraphModule, regions: list[Region], order: int, dtype) -> fx.GraphModule:
    gm = copy_module(gm)
    olds = {r.name: add_state_input(gm, factors_key(r), init=(factors_shape(r, order), dtype)) for r in regions}
    dist, valid = add_host_input(gm, "taylor_dist"), add_host_input(gm, "taylor_valid")
    items = {}
    for region in regions:
        out = node_by_name(gm, region.output)
        with gm.graph.inserting_after(out):
            items[factors_key(region)] = gm.graph.call_function(token_ops.taylor_update, (out, olds[region.name], dist, valid))
    add_state_outputs(gm, items)
    return finish(gm)
