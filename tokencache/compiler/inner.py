"""Inner backends: how one graph variant becomes a callable. Each variant is compiled once."""
from __future__ import annotations

import torch
import torch.fx as fx


def compile_variant(gm: fx.GraphModule, example_args: list, inner: str):
    """`example_args`: real tensors in the variant's placeholder order."""
    if inner == "eager":
        return gm
    if inner == "inductor":
        # compile_fx directly, not a nested torch.compile: nested compiles count against
        # Dynamo's recompile limit and would show up as recompiles of the user's model.
        from torch._inductor.compile_fx import compile_fx

        from ..passes.graph_edit import copy_module
        with torch.no_grad():
            return compile_fx(copy_module(gm), example_args)
    raise ValueError(f"unknown inner backend {inner!r}; allowed: 'eager', 'inductor'")
