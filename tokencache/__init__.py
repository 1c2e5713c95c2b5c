"""tokencache: token-wise feature caching for diffusion transformers, as a torch.compile backend.

    compiled = torch.compile(transformer, backend="tokencache", options={"policy": "toca"})
    compiled = tokencache.compile(transformer, policy="toca")          # the same
    tokencache.report(compiled)          # regions, variants, schedule, FLOPs, cache bytes
    tokencache.new_generation(compiled)  # reset step counter and caches explicitly
    tokencache.drop_packed_weights(compiled)  # free the packed weight copies of cpu_matmul="onednn_packed"
    with tokencache.generation(compiled, steps=20): ...   # one explicit generation (state per block)
    pipe = tokencache.compile_pipeline(pipe, policy="toca")  # each pipeline call is one generation
"""
from __future__ import annotations

import functools

import torch

from .config import CacheConfig
from .errors import TokenCacheError
from .pipeline import compile_pipeline
from .runtime.generation import Generation as generation
from .version import __version__

_BACKENDS: dict = {}     # CacheConfig -> its one backend callable (Dynamo counts backends per function)


def compile(model: torch.nn.Module, **options):
    """torch.compile(model, backend="tokencache", options=options, dynamic=False).

    Options are validated here (ValueError naming the key) before anything is traced. Every call
    with the same options shares one backend, so compiling any number of instances of one model
    class stays within Dynamo's recompile limit (8 graphs per function; a backend per call would
    count each). Errors tokencache raises while compiling (strict=True, a timestep_input not among
    the captured inputs) come out as themselves, not wrapped in Dynamo's BackendCompilerFailed; a
    call that Dynamo runs without reaching tokencache (its recompile limit, a dispatch mode) warns
    once and shows in report()["eager_calls"]."""
    from .backend import CompileHandle, tokencache_backend
    from .compiler.timestep import check_timestep_input

    config = CacheConfig.from_options(options)
    check_timestep_input(model, config.timestep_input)
    backend = _BACKENDS.get(config)
    if backend is None:
        backend = _BACKENDS[config] = functools.partial(tokencache_backend, options=config)
    compiled = torch.compile(model, backend=backend, dynamic=False)
    handle = CompileHandle(config, model)
    # OptimizedModule forwards attribute writes to the wrapped module; these belong to the wrapper.
    object.__setattr__(compiled, "_tokencache_handle", handle)
    compiled.forward = handle.wrap(compiled.forward)
    return compiled


def _sessions(compiled) -> list:
    from .runtime.registry import runtimes_of
    return runtimes_of(compiled)


def report(compiled) -> dict:
    """JSON-serialisable report of what tokencache did to a compiled model: the policy and config,
    why it fell back (`fallback_reason`, None when caching), the regions found and why others were
    rejected, the variants and the step schedule, FLOPs per generation cached and uncached, every
    graph Dynamo handed over (`graphs`, `graph_breaks`, `recompiles`) and what ran uncached
    (`uncached`). README "Any graph Dynamo hands over" describes the graph keys."""
    found = _sessions(compiled)
    handle = getattr(compiled, "__dict__", {}).get("_tokencache_handle")
    if not found:
        if handle is not None and handle.eager_calls:
            raise ValueError(f"tokencache never ran this model: {handle.eager_reason}")
        raise ValueError("this model has not been run through the tokencache backend yet: reports exist after "
                         "the first call (if it was called: Dynamo stops compiling a function after "
                         "torch._dynamo.config.recompile_limit compilations and then runs it eagerly)")
    # every graph of this model (graph breaks, block frames, other input shapes), added up
    from .runtime.model_report import combine, warn_low_savings
    from .runtime.packed_weights import PACKED
    from .runtime.registry import module_of

    combined = combine(found)
    warn_low_savings(module_of(compiled), combined)
    return {**combined, "packed_weight_bytes": PACKED.nbytes(module_of(compiled).parameters()),
            "eager_calls": handle.eager_calls if handle is not None else None,
            "eager_reason": handle.eager_reason if handle is not None else None}


def new_generation(compiled) -> None:
    """Start a new generation: this thread's next call of the model starts at step 0 with no cached
    features (other threads and explicit `generation` blocks keep their own state)."""
    for _, entry in _sessions(compiled):
        entry.reset_thread()


def drop_packed_weights(compiled) -> None:
    """Free the packed weight copies of cpu_matmul="onednn_packed" (auto's choice for float32 CPU
    models) for this model; the next call packs again. Changed weights are noticed without it (by
    their version counters, and writes through `.data` when the next generation starts); it is
    needed after a write through `.data` that only permutes values within rows of a weight, or
    within a generation (runtime/packed_weights.py)."""
    from .runtime.packed_weights import PACKED
    from .runtime.registry import module_of

    PACKED.drop(module_of(compiled).parameters())


def export(compiled, out_dir, **kwargs):
    """Write the compiled model's graph variants as an ONNX bundle (see tokencache.exporters)."""
    from .exporters import export as _export
    return _export(compiled, out_dir, **kwargs)


__all__ = ["CacheConfig", "TokenCacheError", "compile", "compile_pipeline", "drop_packed_weights", "export",
           "generation", "new_generation", "report", "__version__"]
