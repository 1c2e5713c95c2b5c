"""dead_chunks: a linear whose output is chunked and only partly used computes only the used part.

adaLN-Zero blocks project the conditioning to six modulation vectors with one linear and chunk
the result. In a cached step some of them are dead: with the attention output reused, its shift
and scale are; in a FORA step only the two gates are live. Dead-code elimination cannot remove a
*part* of a linear, yet its weight is the largest read of a step that computes few tokens (a
matrix-vector product per block, bound by memory, not FLOPs). Here the linear is split into one
linear per run of consecutive live chunks, on a row slice of its weight (a view, no copy).
Exact: every output column is the same dot product as before.
"""
from __future__ import annotations

import operator

import torch.fx as fx
import torch.nn.functional as F

from ..compat import LINEAR_TARGETS
from ..compiler.token_axis import op_name, shape_of
from .graph_edit import copy_module, finish

_LINEARS = set(LINEAR_TARGETS)


def drop_dead_chunks(gm: fx.GraphModule) -> fx.GraphModule:
    gm = copy_module(gm)
    for chunk in [n for n in gm.graph.nodes if op_name(n) == "chunk"]:
        _split(gm, chunk)
    return finish(gm)


def _split(gm: fx.GraphModule, chunk: fx.Node) -> None:
    linear, pieces, dim = _chunk_args(chunk)
    if linear is None or not _is_plain_linear(linear) or len(linear.users) != 1:
        return
    shape = shape_of(linear)
    if shape is None or dim not in (-1, len(shape) - 1) or shape[-1] % pieces:
        return                                # only even chunks of the output features
    users = list(chunk.users)
    if not all(u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)
               for u in users):
        return
    live = sorted({u.args[1] % pieces for u in users})
    if len(live) == pieces:
        return
    size = shape[-1] // pieces
    x, weight, bias = (list(linear.args) + [linear.kwargs.get("bias")])[:3]
    for run in _runs(live):
        rows = slice(run[0] * size, (run[-1] + 1) * size)
        with gm.graph.inserting_before(chunk):
            w = gm.graph.call_function(operator.getitem, (weight, rows))
            b = gm.graph.call_function(operator.getitem, (bias, rows)) if bias is not None else None
            part = gm.graph.call_function(F.linear, (x, w, b))
            split = gm.graph.call_method("chunk", (part, len(run)), {"dim": -1}) if len(run) > 1 else None
        for user in [u for u in users if u.args[1] % pieces in run]:
            if split is None:
                user.replace_all_uses_with(part)
            else:
                user.args = (split, user.args[1] % pieces - run[0])


def _chunk_args(chunk: fx.Node):
    """(chunked node, number of pieces, dim) of `x.chunk(n, dim)` or `torch.chunk(x, n, dim)`."""
    args = list(chunk.args)
    if len(args) < 2 or not isinstance(args[0], fx.Node) or not isinstance(args[1], int):
        return None, 0, 0
    dim = args[2] if len(args) > 2 else chunk.kwargs.get("dim", 0)
    return args[0], args[1], dim


def _is_plain_linear(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in _LINEARS or len(node.args) < 2:
        return False
    weight = node.args[1]
    return isinstance(weight, fx.Node) and weight.op == "placeholder" and len(shape_of(weight) or ()) == 2


def _runs(indices: list[int]) -> list[list[int]]:
    """[2, 3, 5] -> [[2, 3], [5]]"""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
