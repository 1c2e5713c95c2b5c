"""Route CPU float32 linear layers to oneDNN, with a following GELU fused into the GEMM.

Why: ATen runs CPU float32 matmuls through MKL, which on AMD CPUs takes its AVX2 code path;
oneDNN uses AVX-512 there. On the 2-core AMD EPYC (Zen 5) of BENCHMARKS.md a [512,384]x[384,1536]
GEMM takes 2.7 ms with MKL and 1.25 ms with oneDNN, on the same unpacked weights, at the same
precision (fp32 accumulation; relative differences ~1e-6 from the summation order).

Inductor's own oneDNN linear lowering only accepts frozen (constant, pre-packed) weights, and our
variants take the parameters as inputs (one compiled graph serves every instance of the model). So
the rewrite calls a small library op, `tokencache::linear`, that inductor leaves as an opaque
kernel call and that forwards to oneDNN's linear on the live weights (the op: ops/linear.py).

With cpu_matmul="onednn_packed" the rewrite calls `tokencache::linear_packed` instead, which runs
the GEMMs on packed copies of the weights kept by runtime/packed_weights.py (no reorder per call,
a second copy of each GEMM weight in memory).

A weight that is a row slice of a parameter (the live modulation chunks of passes/dead_chunks.py)
is passed whole with the row range (the op's `rows_of_weight`), so its packed copy is found again
at every call (ops/linear.py says why).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..ops import linear as _registers_ops  # noqa: F401  (defines torch.ops.tokencache.linear*)
from .graph_edit import copy_module, finish

LINEAR = (F.linear, torch.ops.aten.linear.default)
GELU = (F.gelu, torch.ops.aten.gelu.default)


def onednn_linear(gm: fx.GraphModule, packed: bool = False, fuse_gelu: bool = True) -> fx.GraphModule:
    """Every `linear` becomes `tokencache::linear` (`linear_packed` with `packed`); a `gelu` that
    is a linear's only user is fused into it (oneDNN post-op, erf or tanh form as the graph asks)
    unless `fuse_gelu` is off (an ablation)."""
    target = torch.ops.tokencache.linear_packed.default if packed else torch.ops.tokencache.linear.default
    gm = copy_module(gm)
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in LINEAR:
            continue
        x, weight = node.args[:2]
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        post_op, algorithm, last = "none", "", node
        users = list(node.users)
        if fuse_gelu and len(users) == 1 and users[0].op == "call_function" and users[0].target in GELU:
            gelu = users[0]
            approximate = gelu.args[1] if len(gelu.args) > 1 else gelu.kwargs.get("approximate", "none")
            post_op, algorithm, last = "gelu", approximate, gelu
        weight, rows = _whole_weight(weight)
        with graph.inserting_after(last):
            fused = graph.call_function(target, (x, weight, bias, post_op, algorithm, rows))
        fused.meta = dict(last.meta)
        last.replace_all_uses_with(fused)
        if last is not node:
            graph.erase_node(last)
        graph.erase_node(node)
    return finish(gm)


def _whole_weight(weight) -> tuple[fx.Node, list[int]]:
    """(parameter, [start, stop]) for `parameter[start:stop]`, else (weight, [])."""
    if isinstance(weight, fx.Node) and weight.op == "call_function" and weight.target is operator.getitem \
            and isinstance(weight.args[0], fx.Node) and weight.args[0].op == "placeholder":
        rows = weight.args[1]
        if isinstance(rows, slice) and rows.step in (None, 1) and isinstance(rows.start, int) \
                and isinstance(rows.stop, int) and 0 <= rows.start < rows.stop:
            return weight.args[0], [rows.start, rows.stop]
    return weight, []
