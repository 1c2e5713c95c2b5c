"""The pass pipeline: every rewrite a variant goes through, in order, by name.

    stage "variant"  backend.py, once per variant, right after the policy built it
        (policy)        policies/<name>.py: fresh, partial, reuse, forecast, cluster_*, skip,
                        taylor_store, cleanup; which of them build which variant is the policy
        dead_chunks     a linear whose chunked output is partly dead computes only the live part
    stage "compile"  backends/inner.py, before inductor compiles a variant (inductor, cudagraphs)
        onednn_linear   CPU float32 linears -> tokencache::linear ops, a following GELU fused
                        (cpu_matmul "onednn" / "onednn_packed")
        inplace_cache   token-wise steps scatter their new rows into the cache in place (CPU only:
                        not yet measured on CUDA)
    stage "export"   exporters/onnx.py, before a variant becomes an ONNX file
        noop_squeeze    squeezes of axes whose size is not 1 dropped (invalid ONNX otherwise)

Every entry has one signature, run(gm, ctx) -> gm, and leaves its input graph alone (passes copy
with graph_edit.copy_module). `switches(disabled={...})` (tokencache/switches.py) turns entries off
by name, for ablations. With TOKENCACHE_CHECK_PASSES=1 (the tests) each result is linted and its
state wiring checked (passes/checks.py), so a broken graph names the pass that broke it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.fx as fx

from ..switches import current as current_switches
from .checks import check_graph, checks_enabled
from .dead_chunks import drop_dead_chunks
from .inplace_cache import inplace_cache
from .noop_squeeze import drop_noop_squeezes
from .onednn_linear import onednn_linear

STAGES = ("variant", "compile", "export")


@dataclass(frozen=True)
class PassContext:
    stage: str
    cpu_matmul: str | None = None   # compile: the CPU linear kernels (inner.cpu_matmul_for); None: not inductor on a CPU


@dataclass(frozen=True)
class Pass:
    name: str
    stage: str
    run: Callable[[fx.GraphModule, PassContext], fx.GraphModule]
    applies: Callable[[PassContext], bool] = lambda ctx: True


PIPELINE: tuple[Pass, ...] = (
    Pass("dead_chunks", "variant", lambda gm, ctx: drop_dead_chunks(gm)),
    Pass("onednn_linear", "compile",
         lambda gm, ctx: onednn_linear(gm, packed=ctx.cpu_matmul == "onednn_packed",
                                       fuse_gelu=current_switches().fuse_gelu),
         applies=lambda ctx: ctx.cpu_matmul in ("onednn", "onednn_packed")),
    Pass("inplace_cache", "compile", lambda gm, ctx: inplace_cache(gm), applies=lambda ctx: ctx.cpu_matmul is not None),
    Pass("noop_squeeze", "export", lambda gm, ctx: drop_noop_squeezes(gm)),
)
PASS_NAMES = tuple(p.name for p in PIPELINE)


def passes_for(ctx: PassContext) -> list[Pass]:
    """The passes that run on a graph in this context, in order (enabled and applicable)."""
    disabled = current_switches().disabled
    if not disabled <= set(PASS_NAMES):
        raise ValueError(f"unknown pipeline pass(es) {sorted(disabled - set(PASS_NAMES))} switched off; "
                         f"the pipeline runs {', '.join(PASS_NAMES)}")
    return [p for p in PIPELINE if p.stage == ctx.stage and p.name not in disabled and p.applies(ctx)]


def run_stage(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    if ctx.stage not in STAGES:
        raise ValueError(f"unknown pipeline stage {ctx.stage!r}; stages: {', '.join(STAGES)}")
    check = checks_enabled()
    for p in passes_for(ctx):
        gm = p.run(gm, ctx)
        if check:
            check_graph(gm, after=f"pass {p.name!r}")
    return gm


def build_variants(policy, gm: fx.GraphModule, analysis, config) -> dict[str, fx.GraphModule]:
    """The policy's variants of the captured graph, each through the "variant" stage."""
    variants = {}
    for name, variant in policy.variants(gm, analysis, config).items():
        if checks_enabled():
            check_graph(variant, after=f"policy {policy.name!r} (variant {name!r})")
        variants[name] = run_stage(variant, PassContext("variant"))
    return variants
