"""tokencache: token-wise feature caching for diffusion transformers, as a torch.compile backend.

    compiled = torch.compile(transformer, backend="tokencache", options={"policy": "toca"})
    compiled = tokencache.compile(transformer, policy="toca")          # the same
    tokencache.report(compiled)          # regions, variants, schedule, FLOPs, cache bytes
    tokencache.new_generation(compiled)  # reset step counter and caches explicitly
"""
from __future__ import annotations

import torch

from .config import CacheConfig

__version__ = "0.1.0"


def compile(model: torch.nn.Module, **options):
    """torch.compile(model, backend="tokencache", options=options, dynamic=False).

    Options are validated here (ValueError naming the key) before anything is traced."""
    from .compiler.backend import tokencache_backend

    config = CacheConfig.from_options(options)
    return torch.compile(model, backend=tokencache_backend, options=config.to_dict(), dynamic=False)


def report(compiled) -> dict:
    """JSON-serialisable report of what tokencache did to a compiled model (see DESIGN.md)."""
    from .runtime.registry import sessions_for

    found = sessions_for(compiled)
    if not found:
        raise ValueError("this model has not been run through the tokencache backend yet "
                         "(reports exist after the first call)")
    # The same module may have been compiled several times with different options: report the
    # configuration that ran last, over all its graphs (one per input shape, or per graph break).
    latest = max(found, key=lambda rs: rs[1].last_call)[0].config
    graphs = [runtime.report(session) for runtime, session in found if runtime.config == latest]
    main = max(graphs, key=lambda g: len(g["regions"]))
    return {**main, "recompiles": len(graphs) - 1, "graphs": graphs if len(graphs) > 1 else None}


def new_generation(compiled) -> None:
    """Start a new generation: reset the step counter and drop cached features."""
    from .runtime.registry import sessions_for

    for _, session in sessions_for(compiled):
        session.reset()


__all__ = ["CacheConfig", "compile", "new_generation", "report", "__version__"]
