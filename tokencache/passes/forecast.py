"""forecast (TaylorSeer): regions are not computed; their output is predicted from the stored
Taylor factors with host-computed coefficients, one graph for every distance to the last fresh step."""
from __future__ import annotations

import torch.fx as fx

from ..compiler.regions import Region
from ..compat import example_value
from ..ops import token_ops
from .graph_edit import add_host_input, add_state_input, copy_module, finish, node_by_name, replace_uses_outside
from .taylor_store import factors_key


def forecast(gm: fx.GraphModule, regions: list[Region]) -> fx.GraphModule:
    gm = copy_module(gm)
    outputs = [(r, name, node) for r in regions for name, node, _ in r.cached_outputs()]
    factors = {name: add_state_input(gm, factors_key(name)) for _, name, _ in outputs}
    coef = add_host_input(gm, "taylor_coef")
    for region, name, node in outputs:
        out = node_by_name(gm, node)
        dtype = example_value(out).dtype
        with gm.graph.inserting_after(out):
            predicted = gm.graph.call_function(token_ops.taylor_predict, (factors[name], coef, dtype))
        replace_uses_outside(out, predicted, set(region.nodes))
    return finish(gm)
