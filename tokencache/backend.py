"""The `tokencache` torch.compile backend (entry point group `torch_dynamo_backends`).

    captured graph -> classify inputs -> find regions -> policy check -> variants (passes)
                   -> CacheRuntime (compiles each variant lazily with the inner backend)

When the rewrite cannot apply, it warns once with the reason, records it for `report()` and runs
the captured graph uncached (`strict=True` raises TokenCacheError instead). Reasons include a
timestep passed as a Python number (one graph per value: no graph sees two steps) and gradients
enabled (tokencache is for inference: such a graph runs as captured, with autograd).
"""
from __future__ import annotations

import threading
import warnings
import weakref

import torch
import torch.fx as fx

from .compat import backend_failure_cause, cache_entry_count, current_dispatch_mode, original_module, recompile_limit
from .compiler.capture import describe as describe_capture
from .compiler.capture import frame_module
from .compiler.graph_inputs import classify_inputs
from .compiler.regions import Analysis, analyse
from .compiler.specialise import SpecialisingRuntime, concrete, symbolic_shapes
from .compiler.timestep import describe_missing, find_timestep, frame_arguments, scalar_timestep
from .config import CacheConfig
from .errors import TokenCacheError
from .passes.pipeline import build_variants
from .policies import get_policy
from .policies.none import NonePolicy
from .runtime.runtime import CacheRuntime, runtime_calls

__all__ = ["CompileHandle", "TokenCacheError", "build_runtime", "tokencache_backend"]


class CompileHandle:
    """What one `tokencache.compile()` result knows besides Dynamo's module: its configuration
    (report() shows the runtimes of that configuration; several compilations with the same options
    share one backend) and the calls Dynamo ran without reaching tokencache."""

    def __init__(self, config: CacheConfig, model):
        self.config = config
        self._module = weakref.ref(original_module(model))
        self.eager_calls = 0
        self.eager_reason: str | None = None
        self._lock = threading.Lock()

    def wrap(self, forward):
        """Dynamo's forward, plus: errors of tokencache's own come out unwrapped; a call that never
        reached a tokencache runtime is counted and explained once."""
        def tokencache_forward(*args, **kwargs):
            before = runtime_calls()
            try:
                out = forward(*args, **kwargs)
            except Exception as e:
                cause = backend_failure_cause(e)
                if isinstance(cause, (TokenCacheError, ValueError)):
                    raise cause from None
                raise
            if runtime_calls() == before:
                self._ran_eagerly()
            return out
        return tokencache_forward

    def _ran_eagerly(self) -> None:
        with self._lock:
            self.eager_calls += 1
            if self.eager_reason is not None:
                return
            self.eager_reason = eager_reason(self._module())
        warnings.warn(f"tokencache: this call ran uncached, without tokencache: {self.eager_reason}", stacklevel=3)


def eager_reason(module) -> str:
    """Why Dynamo ran a call of `module` eagerly, as far as can be told from outside."""
    limit = recompile_limit()
    entries = cache_entry_count(type(module).forward.__code__)
    name = f"{type(module).__name__}.forward"
    if entries >= limit:
        return (f"Dynamo reached its recompile limit ({limit} graphs) for {name} and runs it eagerly from now on "
                "(compilations with other options, input shapes or dtypes each take one; "
                "raise torch._dynamo.config.recompile_limit, or call torch._dynamo.reset())")
    if (mode := current_dispatch_mode()) is not None:
        return f"a TorchDispatchMode ({type(mode).__name__}) was active; Dynamo runs such calls eagerly"
    return (f"Dynamo ran {name} without compiling it (torch._dynamo.disable, a skipped frame, "
            "or an error suppressed by torch._dynamo.config.suppress_errors)")


def tokencache_backend(gm: fx.GraphModule, example_inputs, options=None):
    config = CacheConfig.from_options(options)
    inputs = classify_inputs(gm)
    # SymInt/SymFloat inputs (Dynamo's automatic dynamic shapes after a recompile): their values;
    # a graph whose tensor sizes are symbolic is made static per input shape (specialise.py)
    example_inputs = [concrete(x) for x in example_inputs]
    capture = describe_capture(gm)       # compile id, frame, why the graph ended (report()'s graph_breaks)
    if capture["entry"] is False:        # a submodule's frame or a resume function: whose forward?
        capture["module"] = frame_module(inputs, example_inputs)

    def build(graph, args, dynamic_reason=None):
        # a resume function or a submodule's frame follows the model's step clock (runtime/steplink.py)
        runtime = build_runtime(graph, args, config, inputs, dynamic_reason=dynamic_reason,
                                follows=capture["entry"] is False, owner=capture.get("module"))
        runtime.report_base["capture"] = capture
        return runtime
    if symbolic_shapes(gm):
        return SpecialisingRuntime(gm, build, lambda why: build(gm, example_inputs, why))
    return build(gm, example_inputs)


def build_runtime(gm, example_inputs, config: CacheConfig, inputs, dynamic_reason: str | None = None,
                  follows: bool = False, owner: str | None = None) -> CacheRuntime:
    policy = get_policy(config.policy)
    analysis, reason = None, None
    if dynamic_reason is not None:
        reason = dynamic_reason if config.policy != "none" else None
    else:
        try:
            analysis = analyse(gm, owner)
        except Exception as e:      # an unforeseen graph shape must cost caching, never the model
            analysis = Analysis(blocks=[], regions=[], rejected=[])
            if config.policy != "none":
                reason = f"graph analysis failed ({type(e).__name__}: {e})"
        if config.policy != "none" and reason is None:
            reason = _unsupported(analysis) or policy.check(analysis, config)
    timestep = find_timestep(inputs, example_inputs, config.timestep_input)
    autograd = torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs)
    if autograd and config.policy != "none" and reason is None:
        reason = ("called with gradients enabled (tokencache is for inference): this graph runs as captured, "
                  "uncached, with autograd; sample under torch.no_grad() or torch.inference_mode() to cache")
    elif config.policy != "none" and timestep is None and (scalar := scalar_timestep(config.timestep_input)):
        reason = (f"the timestep argument {scalar!r} is a Python number: Dynamo compiles one graph per value "
                  "(and runs the model eagerly after torch._dynamo.config.recompile_limit of them), so no graph "
                  f"sees two steps; pass it as a tensor, e.g. {scalar}=torch.tensor([t])")
    elif timestep is None and config.timestep_input != "auto" and (args := frame_arguments()) is not None \
            and config.timestep_input.split(".")[0] not in args:
        raise ValueError(f"tokencache option 'timestep_input' names {config.timestep_input!r}, which is not an "
                         f"argument of the compiled function (arguments: {', '.join(args)})")
    # a piece of a model split by graph breaks that holds no block (embeddings, the final norm) has
    # nothing to cache: recorded for report(), neither warned about nor an error under strict=True
    piece = follows and analysis is not None and not analysis.blocks
    if reason is not None:
        if config.strict and not piece:
            raise TokenCacheError(f"tokencache: cannot cache this graph (strict=True): {reason}")
        if not piece:
            warnings.warn(f"tokencache: caching disabled for this graph: {reason}. Running it uncached.", stacklevel=2)
        policy = NonePolicy()
    elif timestep is None and config.policy != "none" and not follows:
        warnings.warn(describe_missing(inputs, example_inputs, config.timestep_input), stacklevel=2)
    if config.policy != "none" and reason is None and (attention := _uncached_attention(analysis)):
        warnings.warn(f"tokencache: {len(attention)} attention module(s) cannot be cached and run in every step "
                      "(the rest of their blocks is cached): " + "; ".join(f"{m} ({why})" for m, why in attention[:3])
                      + (" ..." if len(attention) > 3 else ""), stacklevel=2)
    if policy.name in ("toca", "duca") and (partly := [r for r in analysis.regions if not r.token_wise]):
        warnings.warn(f"tokencache: {len(partly)} region(s) are not token-local and are reused whole in token-wise "
                      "steps: " + "; ".join(f"{r.name}: {r.reason}" for r in partly[:3])
                      + (" ..." if len(partly) > 3 else ""), stacklevel=2)
    # A policy states what a variant computes; the pipeline's "variant" stage (dropping the
    # modulation chunks it leaves dead) is the same clean-up for every policy.
    variants = build_variants(policy, gm, analysis, config)
    schedule = policy.schedule(config)
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
    return CacheRuntime(config, policy, variants, schedule, inputs, example_inputs, timestep, base,
                        autograd_graph=gm if autograd else None,
                        captured=gm if getattr(policy, "fresh_computes_less", False) else None)


def _unsupported(analysis) -> str | None:
    if not analysis.regions:
        return "no transformer blocks with cacheable attention/feed-forward modules were found"
    return None


def _uncached_attention(analysis) -> list[tuple[str, str]]:
    """Attention modules the analysis could not make regions of (two attention ops in one module,
    two values leaving it): they run in every step while the block's other modules are cached."""
    return [(m, why) for m, why in analysis.rejected if "attn" in m.rsplit(".", 1)[-1]]
