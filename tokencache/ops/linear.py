"""The `tokencache::linear` and `tokencache::linear_packed` ops that passes/onednn_linear.py
routes CPU float32 linear layers to: oneDNN's linear with an optional fused GELU, on the live
(or, for linear_packed, pre-packed: runtime/packed_weights.py) weights.

Inputs of 2 to 4 rows (the adaLN modulations and timestep MLP of one or two images under CFG) make
matrix-vector products that only stream their weights, and oneDNN reorders the weights first. The
op runs those as the transposed product W @ x^T (an ATen GEMM with 1536 rows and 2 columns, which
streams W) and returns it row-major: twelve [2,384]x[384,1536] products with cold weights take
0.72 ms so, 1.09 ms through oneDNN, 2.4 ms as x @ W^T in MKL. It has to happen inside the op:
written into the graph, the transposed result reaches the LayerNorm/modulation kernels that read it
with a stride inductor does not vectorise (the DiT-S step got 4 ms slower); an inductor-generated
multiply-and-sum was fast alone but inductor fused it into those same kernels.

`rows_of_weight` = [start, stop] multiplies by the weight's rows start..stop-1 only (and the bias, already
sliced, to match): the modulation chunks a cached step keeps (passes/dead_chunks.py). The op takes
the whole parameter so that its packed copy is found again at the next call: a row slice made in the
graph is a new tensor at every call (inductor re-creates the view), which missed the packed-weight
store and re-packed 8 weights per FORA step of the embedded DiT (5.1 ms a step then, 3.3 ms since).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import compat
from ..runtime.packed_weights import PACKED
from ..switches import current as current_switches

SMALL_ROWS = (2, 4)     # measured: W @ x^T beats oneDNN at 2 and 4 rows, ties at 8, loses at 1


def _linear(x, weight, bias, post_op, algorithm, rows_of_weight=(), *, packed: bool):
    if x.dim() == 1:
        return _linear(x.unsqueeze(0), weight, bias, post_op, algorithm, rows_of_weight, packed=packed).squeeze(0)
    part = tuple(rows_of_weight) or None
    rows = x.numel() // x.shape[-1]
    small = SMALL_ROWS[0] <= rows <= SMALL_ROWS[1] and current_switches().small_rows_transposed
    if part is not None and (small or not packed):    # only the packed store takes the range itself
        weight, part = weight[part[0]:part[1]], None
    if small:
        flat_t = x.reshape(rows, x.shape[-1]).t()
        out = torch.mm(weight, flat_t) if bias is None else torch.addmm(bias.unsqueeze(1), weight, flat_t)
        out = out.t().contiguous().reshape(*x.shape[:-1], weight.shape[0])
        return F.gelu(out, approximate=algorithm or "none") if post_op == "gelu" else out
    weight = PACKED.get(weight, rows, part) if packed else weight.contiguous()
    return compat.onednn_linear(x.contiguous(), weight, bias, post_op, algorithm)


def _linear_meta(x, weight, bias, post_op, algorithm, rows_of_weight=()):
    out = rows_of_weight[1] - rows_of_weight[0] if rows_of_weight else weight.shape[0]
    return x.new_empty((*x.shape[:-1], out))


_LIBRARY = torch.library.Library("tokencache", "DEF")
for _name, _packed in (("linear", False), ("linear_packed", True)):
    _LIBRARY.define(f"{_name}(Tensor x, Tensor weight, Tensor? bias, str post_op, str algorithm, "
                    "int[] rows_of_weight=[]) -> Tensor")
    _LIBRARY.impl(_name, functools.partial(_linear, packed=_packed), "CPU")
    _LIBRARY.impl(_name, _linear_meta, "Meta")


def onednn_available() -> bool:
    return compat.onednn_linear_available()
