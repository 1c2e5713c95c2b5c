"""tokencache: token-wise feature caching for diffusion transformers, as a torch.compile backend.

    compiled = torch.compile(transformer, backend="tokencache", options={"policy": "toca"})
    compiled = tokencache.compile(transformer, policy="toca")          # the same
    tokencache.report(compiled)          # regions, variants, schedule, FLOPs, cache bytes
    tokencache.new_generation(compiled)  # reset step counter and caches explicitly
    tokencache.drop_packed_weights(compiled)  # free the packed weight copies of cpu_matmul="onednn_packed"
"""
from __future__ import annotations

import functools

import torch

from .config import CacheConfig

__version__ = "0.1.0"


def compile(model: torch.nn.Module, **options):
    """torch.compile(model, backend="tokencache", options=options, dynamic=False).

    Options are validated here (ValueError naming the key) before anything is traced."""
    from .compiler.backend import CompileHandle, tokencache_backend

    config = CacheConfig.from_options(options)
    handle = CompileHandle()
    compiled = torch.compile(model, backend=functools.partial(tokencache_backend, handle=handle),
                             options=config.to_dict(), dynamic=False)
    # OptimizedModule forwards attribute writes to the wrapped module; this one belongs to the wrapper.
    object.__setattr__(compiled, "_tokencache_handle", handle)
    return compiled


def _sessions(compiled) -> list:
    """(runtime, session) pairs of this compiled model: those of its own compilation when it came
    from tokencache.compile, else those of the configuration that ran last for the module."""
    from .runtime.registry import sessions_for

    found = sessions_for(compiled)
    handle = getattr(compiled, "__dict__", {}).get("_tokencache_handle")
    if handle is not None:
        return [(r, s) for r, s in found if any(r is h for h in handle.runtimes)]
    if not found:
        return []
    latest = max(found, key=lambda rs: rs[1].last_call)[0].config
    return [(r, s) for r, s in found if r.config == latest]


def report(compiled) -> dict:
    """JSON-serialisable report of what tokencache did to a compiled model (see DESIGN.md)."""
    found = _sessions(compiled)
    if not found:
        raise ValueError("this model has not been run through the tokencache backend yet: reports exist after "
                         "the first call (if it was called: Dynamo stops compiling a function after "
                         "torch._dynamo.config.recompile_limit compilations and then runs it eagerly)")
    # one graph per input shape (or per graph break), each with this model's session
    from .runtime.packed_weights import PACKED
    from .runtime.registry import module_of

    graphs = [runtime.report(session) for runtime, session in found]
    main = max(graphs, key=lambda g: len(g["regions"]))
    return {**main, "recompiles": len(graphs) - 1, "graphs": graphs if len(graphs) > 1 else None,
            "packed_weight_bytes": PACKED.nbytes(module_of(compiled).parameters())}


def new_generation(compiled) -> None:
    """Start a new generation: reset the step counter and drop cached features."""
    for _, session in _sessions(compiled):
        session.reset()


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


__all__ = ["CacheConfig", "compile", "drop_packed_weights", "export", "new_generation", "report", "__version__"]
