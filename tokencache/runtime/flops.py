"""FLOPs of one call of a graph, counted on fake tensors (no memory, no compute).

torch's FlopCounterMode counts the aten ops a graph runs. It has no formula for the CPU kernel of
scaled_dot_product_attention (`_scaled_dot_product_flash_attention_for_cpu`, torch 2.13): the
attention's own matmuls counted 0 on CPU, so it gets the dense attention formula below (the work
the CUDA kernels are counted for). It cannot run flex_attention (the
higher-order op fails to dispatch under the counter: AnyFlowFAR, Kandinsky 6 SR), so a graph that
calls it runs node by node and each flex_attention counts as the dense attention it computes:
2·B·H·Lq·Lk·(D + Dv), block sparsity not subtracted.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx

from ..compat import example_value, is_flex_attention


class _TotalOnly:
    """Stands in for FlopCounterMode's module tracker: that one installs global module hooks, and
    while they exist every compiled call in other threads fails Dynamo's guards and recompiles
    (concurrently: Dynamo errors). Only totals are needed here."""
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """softmax(Q K^T) V: 2·B·H·Lq·Lk·(D + Dv) (FlopCounterMode passes shapes for tensors)."""
    *lead, lq, d = query_shape
    rows = 1
    for size in lead:
        rows *= size
    return 2 * rows * lq * key_shape[-2] * (d + value_shape[-1])


def flop_counter():
    """A FlopCounterMode for totals, with the CPU attention kernel counted."""
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    aten = torch.ops.aten
    missing = {}
    cpu_sdpa = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None and cpu_sdpa not in flop_registry:
        missing[cpu_sdpa] = _attention_flops
    counter = FlopCounterMode(display=False, custom_mapping=missing)
    counter.mod_tracker = _TotalOnly()
    return counter


def _flex_attention(node: fx.Node, args) -> tuple[object, int]:
    """Outputs shaped like flex_attention's (out, logsumexp[, max_scores]) and the dense FLOPs."""
    q, k, v = args[:3]
    *lead, lq, _ = q.shape
    dv = v.shape[-1]
    flops = _attention_flops(q.shape, k.shape, v.shape)
    example = example_value(node)
    count = len(example) if isinstance(example, (tuple, list)) else 2
    out = torch.empty(*lead, lq, dv, dtype=q.dtype, device=q.device)
    stats = [torch.empty(*lead, lq, dtype=torch.float32, device=q.device) for _ in range(count - 1)]
    return (out, *stats), flops


def count_graph_flops(gm: fx.GraphModule, args, per_node: Callable[[fx.Node, int], None] | None = None):
    """(outputs, total FLOPs) of `gm(*args)`; `per_node(node, flops)` is called for every node
    that computes (the graph then runs node by node)."""
    if per_node is None and not any(is_flex_attention(n.target) for n in gm.graph.nodes):
        counter = flop_counter()
        with counter:
            outputs = gm(*args)
        return outputs, int(counter.get_total_flops())
    total = 0

    class Count(fx.Interpreter):
        def run_node(self, node):
            nonlocal total
            if node.op == "call_function" and is_flex_attention(node.target):
                result, flops = _flex_attention(node, self.fetch_args_kwargs_from_env(node)[0])
            else:
                counter = flop_counter()
                with counter:
                    result = super().run_node(node)
                flops = int(counter.get_total_flops())
            total += flops
            if flops and per_node is not None:
                per_node(node, flops)
            return result

    outputs = Count(gm).run(*args)
    return outputs, total
