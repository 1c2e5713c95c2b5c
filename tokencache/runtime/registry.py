"""Which runtimes belong to which model, so `report(model)` and `new_generation(model)` find them.

The backend never sees the user's module, but the parameter placeholders' example inputs *are*
the module's live parameters: a runtime is registered under their ids and found again from
`model.parameters()`. Runtimes of one model also notice each other: when a different input
signature ran last (a new resolution or batch size got its own graph), the next call starts a new
generation instead of continuing stale caches.
"""
from __future__ import annotations

import weakref

import torch

_ENTRIES: list[tuple[weakref.ref, frozenset[int], int]] = []   # (runtime, param ids, model key)
_LAST_SIGNATURE: dict[int, tuple] = {}


def register(runtime, params: list[torch.Tensor]) -> int:
    ids = frozenset(id(p) for p in params)
    key = min(ids) if ids else id(runtime)
    _ENTRIES.append((weakref.ref(runtime), ids, key))
    return key


def runtimes_for(model) -> list:
    module = getattr(model, "_orig_mod", model)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected the torch.compile'd model or its module, got {type(model).__name__}")
    ids = {id(p) for p in module.parameters()} | {id(b) for b in module.buffers()}
    found = []
    for ref, params, _ in _ENTRIES:
        runtime = ref()
        if runtime is not None and params & ids:
            found.append(runtime)
    return found


def note_call(key: int, signature: tuple) -> bool:
    """Record the input signature of this call; True if another signature ran last."""
    changed = key in _LAST_SIGNATURE and _LAST_SIGNATURE[key] != signature
    _LAST_SIGNATURE[key] = signature
    return changed
