"""reuse (FORA): cached regions are not computed; their stored outputs re-enter the residual
stream through the block's *current* gates (recomputed from this step's conditioning)."""
from __future__ import annotations

import torch.fx as fx

from ..compiler.regions import Region
from .graph_edit import add_state_input, copy_module, finish, node_by_name, replace_uses_outside


def reuse(gm: fx.GraphModule, regions: list[Region]) -> fx.GraphModule:
    gm = copy_module(gm)
    for region in regions:
        for name, node, _ in region.cached_outputs():      # a joint attention hands back two
            cache = add_state_input(gm, f"cache:{name}")
            replace_uses_outside(node_by_name(gm, node), cache, set(region.nodes))
    return finish(gm)   # dead-code elimination drops the region and what only fed it (its norm)
