"""The `tokencache` torch.compile backend (entry point group `torch_dynamo_backends`).

    captured graph -> classify inputs -> find regions -> policy check -> variants (passes)
                   -> CacheRuntime (compiles each variant lazily with the inner backend)

When the rewrite cannot apply, it warns once with the reason, records it for `report()` and runs
the captured graph uncached (`strict=True` raises instead).
"""
from __future__ import annotations

import warnings

import torch.fx as fx

from ..config import CacheConfig
from ..passes.dead_chunks import drop_dead_chunks
from ..policies import get_policy
from ..policies.none import NonePolicy
from ..runtime.runtime import CacheRuntime
from .graph_inputs import classify_inputs, find_timestep, symbolic_inputs
from .regions import Analysis, analyse


class TokenCacheError(RuntimeError):
    """strict=True and the cache rewrite could not apply."""


class CompileHandle:
    """Links one `tokencache.compile()` result to the runtimes its backend built, so a module
    compiled twice with different options reports each compilation separately."""

    def __init__(self):
        self.runtimes: list[CacheRuntime] = []


def tokencache_backend(gm: fx.GraphModule, example_inputs, options=None, handle: CompileHandle | None = None):
    config = CacheConfig.from_options(options)
    inputs = classify_inputs(gm)
    runtime = build_runtime(gm, list(example_inputs), config, inputs)
    if handle is not None:
        handle.runtimes.append(runtime)
    return runtime


def build_runtime(gm, example_inputs, config: CacheConfig, inputs) -> CacheRuntime:
    policy = get_policy(config.policy)
    analysis, reason = None, None
    if symbolic_inputs(example_inputs):
        reason = "the graph was captured with dynamic shapes; compile with dynamic=False"
    else:
        try:
            analysis = analyse(gm)
        except Exception as e:      # an unforeseen graph shape must cost caching, never the model
            analysis = Analysis(blocks=[], regions=[], rejected=[])
            if config.policy != "none":
                reason = f"graph analysis failed ({type(e).__name__}: {e})"
        if config.policy != "none" and reason is None:
            reason = _unsupported(analysis) or policy.check(analysis, config)
    if reason is not None:
        message = f"tokencache: caching disabled for this graph: {reason}. Running it uncached."
        if config.strict:
            raise TokenCacheError(message)
        warnings.warn(message, stacklevel=2)
        policy = NonePolicy()
    if policy.name in ("toca", "duca") and (partly := [r for r in analysis.regions if not r.token_wise]):
        warnings.warn(f"tokencache: {len(partly)} region(s) are not token-local and are reused whole in token-wise "
                      "steps: " + "; ".join(f"{r.name}: {r.reason}" for r in partly[:3])
                      + (" ..." if len(partly) > 3 else ""), stacklevel=2)
    # A policy states what a variant computes; dropping the modulation chunks it leaves dead is
    # the same clean-up for every policy.
    variants = {name: drop_dead_chunks(v) for name, v in policy.variants(gm, analysis, config).items()}
    schedule = policy.schedule(config)
    timestep = find_timestep(inputs, example_inputs, config.timestep_input)
    computed = policy.computed_tokens(analysis, config)
    base = {
        "policy": policy.name,
        "config": config.to_dict(),
        "fallback_reason": reason,
        "timestep_input": timestep.name if timestep else None,
        "regions": [dict(r.summary(), computed_tokens=computed.get(r.name))
                    for r in (analysis.regions if analysis else [])],
        "rejected_modules": [{"module": m, "reason": why} for m, why in (analysis.rejected if analysis else [])],
    }
    return CacheRuntime(config, policy, variants, schedule, inputs, example_inputs, timestep, base)


def _unsupported(analysis) -> str | None:
    if not analysis.regions:
        return "no transformer blocks with cacheable attention/feed-forward modules were found"
    attention_rejects = [(m, why) for m, why in analysis.rejected if "attn" in m.rsplit(".", 1)[-1]]
    if attention_rejects:
        module, why = attention_rejects[0]
        return f"attention module {module} cannot be cached ({why})"
    return None
