"""Which runtime entries belong to which model, so `report(model)` and `new_generation(model)`
find them.

The backend never sees the user's module, but the parameter placeholders' inputs *are* the
module's live parameters: a runtime's ModelEntry is registered under them and found again from
`model.parameters()`. Everything here is a weak reference: the registry keeps no runtime, entry,
cache or parameter alive (a model's entry goes with the model, a runtime with Dynamo's cache).
"""
from __future__ import annotations

import weakref

import torch

from ..compat import original_module

_ENTRIES: list[tuple[weakref.ref, weakref.ref, list[weakref.ref]]] = []   # (runtime, entry, params)


def register(runtime, entry, params: list[torch.Tensor]) -> None:
    _ENTRIES[:] = [e for e in _ENTRIES if e[0]() is not None and e[1]() is not None
                   and all(r() is not None for r in e[2])]
    _ENTRIES.append((weakref.ref(runtime), weakref.ref(entry), [weakref.ref(p) for p in params]))


def clear() -> None:
    """Forget every entry (tests, between tests)."""
    _ENTRIES.clear()


def module_of(model) -> torch.nn.Module:
    """The nn.Module behind a torch.compile'd model (or the module itself)."""
    module = original_module(model)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected the torch.compile'd model or its module, got {type(model).__name__}")
    return module


def runtimes_of(compiled) -> list[tuple[object, object]]:
    """(runtime, entry) pairs of this compiled model (an entry: the model's state and counts for one
    graph, runtime/session.py): those of its own configuration when it came from
    tokencache.compile, else those of the configuration that ran last for the module."""
    found = sessions_for(compiled)
    handle = getattr(compiled, "__dict__", {}).get("_tokencache_handle")   # set by tokencache.compile
    if handle is not None:
        return [(r, s) for r, s in found if r.config == handle.config]
    if not found:
        return []
    latest = max(found, key=lambda rs: rs[1].last_call)[0].config
    return [(r, s) for r, s in found if r.config == latest]


def sessions_for(model) -> list[tuple[object, object]]:
    """(runtime, ModelEntry) pairs that ran this model, oldest first."""
    module = module_of(model)
    ids = {id(p) for p in module.parameters()} | {id(b) for b in module.buffers()}
    found = []
    for runtime_ref, entry_ref, params in list(_ENTRIES):
        runtime, entry, live = runtime_ref(), entry_ref(), [r() for r in params]
        # compare identities through live weakrefs: a freed model's ids may be reused
        if runtime is not None and entry is not None and live and all(p is not None and id(p) in ids for p in live):
            found.append((runtime, entry))
    return found
