"""Route CPU float32 linear layers to oneDNN, with a following GELU fused into the GEMM.

Why: ATen runs CPU float32 matmuls through MKL, which on AMD CPUs takes its AVX2 code path;
oneDNN uses AVX-512 there. On the 2-core AMD EPYC (Zen 5) of BENCHMARKS.md a [512,384]x[384,1536]
GEMM takes 2.7 ms with MKL and 1.25 ms with oneDNN, on the same unpacked weights, at the same
precision (fp32 accumulation; relative differences ~1e-6 from the summation order).

Inductor's own oneDNN linear lowering only accepts frozen (constant, pre-packed) weights, and our
variants take the parameters as inputs (one compiled graph serves every instance of the model). So
the rewrite calls a small library op, `tokencache::linear`, that inductor leaves as an opaque
kernel call and that forwards to `torch.ops.mkldnn._linear_pointwise` on the live weights.

Inputs of 2 to 4 rows (the adaLN modulations and timestep MLP of one or two images under CFG) make
matrix-vector products that only stream their weights, and oneDNN reorders the weights first. The
op runs those as the transposed product W @ x^T (an ATen GEMM with 1536 rows and 2 columns, which
streams W) and returns it row-major: twelve [2,384]x[384,1536] products with cold weights take
0.72 ms so, 1.09 ms through oneDNN, 2.4 ms as x @ W^T in MKL. It has to happen inside the op:
written into the graph, the transposed result reaches the LayerNorm/modulation kernels that read it
with a stride inductor does not vectorise (the DiT-S step got 4 ms slower); an inductor-generated
multiply-and-sum was fast alone but inductor fused it into those same kernels.

With cpu_matmul="onednn_packed" the rewrite calls `tokencache::linear_packed` instead, which runs
the GEMMs on packed copies of the weights kept by runtime/packed_weights.py (no reorder per call,
a second copy of each GEMM weight in memory).
"""
from __future__ import annotations

import functools

import torch
import torch.fx as fx
import torch.nn.functional as F

from .. import compat
from ..runtime.packed_weights import PACKED
from .graph_edit import copy_module

SMALL_ROWS = (2, 4)     # measured: W @ x^T beats oneDNN at 2 and 4 rows, ties at 8, loses at 1


def _linear(x, weight, bias, post_op, algorithm, packed: bool):
    if x.dim() == 1:
        return _linear(x.unsqueeze(0), weight, bias, post_op, algorithm, packed).squeeze(0)
    rows = x.numel() // x.shape[-1]
    if SMALL_ROWS[0] <= rows <= SMALL_ROWS[1]:
        flat_t = x.reshape(rows, x.shape[-1]).t()
        out = torch.mm(weight, flat_t) if bias is None else torch.addmm(bias.unsqueeze(1), weight, flat_t)
        out = out.t().contiguous().reshape(*x.shape[:-1], weight.shape[0])
        return F.gelu(out, approximate=algorithm or "none") if post_op == "gelu" else out
    weight = PACKED.get(weight, rows) if packed else weight.contiguous()
    return compat.onednn_linear(x.contiguous(), weight, bias, post_op, algorithm)


def _linear_meta(x, weight, bias, post_op, algorithm):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


_LIBRARY = torch.library.Library("tokencache", "DEF")
for _name, _packed in (("linear", False), ("linear_packed", True)):
    _LIBRARY.define(f"{_name}(Tensor x, Tensor weight, Tensor? bias, str post_op, str algorithm) -> Tensor")
    _LIBRARY.impl(_name, functools.partial(_linear, packed=_packed), "CPU")
    _LIBRARY.impl(_name, _linear_meta, "Meta")

LINEAR = (F.linear, torch.ops.aten.linear.default)
GELU = (F.gelu, torch.ops.aten.gelu.default)


def onednn_available() -> bool:
    return compat.onednn_linear_available()


def onednn_linear(gm: fx.GraphModule, packed: bool = False) -> fx.GraphModule:
    """Every `linear` becomes `tokencache::linear` (`linear_packed` with `packed`); a `gelu` that
    is a linear's only user is fused into it (oneDNN post-op, erf or tanh form as the graph asks)."""
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
        if len(users) == 1 and users[0].op == "call_function" and users[0].target in GELU:
            gelu = users[0]
            approximate = gelu.args[1] if len(gelu.args) > 1 else gelu.kwargs.get("approximate", "none")
            post_op, algorithm, last = "gelu", approximate, gelu
        with graph.inserting_after(last):
            fused = graph.call_function(target, (x, weight, bias, post_op, algorithm))
        fused.meta = dict(last.meta)
        last.replace_all_uses_with(fused)
        if last is not node:
            graph.erase_node(last)
        graph.erase_node(node)
    gm.recompile()
    return gm
