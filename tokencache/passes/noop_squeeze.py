"""noop_squeeze: drop squeezes of axes whose size is not 1 (no-ops in PyTorch). Diffusers emits
`squeeze(1)` on (B, N, C) tensors; the dynamo ONNX exporter turns it into an invalid Squeeze."""
from __future__ import annotations

import torch.fx as fx

from ..compiler.token_axis import op_name, shape_of
from .graph_edit import copy_module, finish


def drop_noop_squeezes(gm: fx.GraphModule) -> fx.GraphModule:
    gm = copy_module(gm)
    for node in list(gm.graph.nodes):
        if op_name(node) != "squeeze" or len(node.args) != 2 or not isinstance(node.args[1], int):
            continue
        source = node.args[0]
        shape = shape_of(source)
        if shape is not None and shape[node.args[1]] != 1:
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
    return finish(gm)
