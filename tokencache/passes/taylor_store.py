"""taylor_store: a fresh graph that also keeps each region's Taylor factors up to date.

factor[0] <- the region's output now; factor[i+1] <- (factor[i]_new - factor[i]_old) / distance,
with the distances and the validity of each order passed in from the host (see token_ops).
"""
from __future__ import annotations

import torch.fx as fx

from ..compiler.regions import Region
from ..ops import token_ops
from .graph_edit import add_host_input, add_state_input, add_state_outputs, copy_module, finish, node_by_name


def factors_key(name: str) -> str:
    """State key of the factors of one cached output (Region.cached_outputs names)."""
    return f"taylor:{name}"


def taylor_store(gm: fx.GraphModule, regions: list[Region], order: int, dtype) -> fx.GraphModule:
    gm = copy_module(gm)
    outputs = [o for r in regions for o in r.cached_outputs()]
    olds = {name: add_state_input(gm, factors_key(name), init=((order + 1, *shape), dtype)) for name, _, shape in outputs}
    dist, valid = add_host_input(gm, "taylor_dist"), add_host_input(gm, "taylor_valid")
    items = {}
    for name, node, _ in outputs:
        out = node_by_name(gm, node)
        with gm.graph.inserting_after(out):
            items[factors_key(name)] = gm.graph.call_function(token_ops.taylor_update, (out, olds[name], dist, valid))
    add_state_outputs(gm, items)
    return finish(gm)
