"""Which runtime sessions belong to which model, so `report(model)` and `new_generation(model)`
find them.

The backend never sees the user's module, but the parameter placeholders' inputs *are* the
module's live parameters: a session is registered under their ids and found again from
`model.parameters()`. Sessions of one model also notice each other: when a different input
signature ran last (a new resolution or batch size got its own graph), the next call starts a new
generation instead of continuing stale caches.
"""
from __future__ import annotations

import weakref

import torch

_ENTRIES: list[tuple[weakref.ref, object, list[weakref.ref]]] = []   # (runtime, session, params)
_MODEL_OF: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # session -> model key
_LAST_SIGNATURE: dict[int, tuple] = {}


def register(runtime, session, params: list[torch.Tensor]) -> None:
    _ENTRIES[:] = [e for e in _ENTRIES if e[0]() is not None and all(r() is not None for r in e[2])]
    _ENTRIES.append((weakref.ref(runtime), session, [weakref.ref(p) for p in params]))
    _MODEL_OF[session] = min(id(p) for p in params) if params else id(session)


def module_of(model) -> torch.nn.Module:
    """The nn.Module behind a torch.compile'd model (or the module itself)."""
    module = getattr(model, "_orig_mod", model)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected the torch.compile'd model or its module, got {type(model).__name__}")
    return module


def sessions_for(model) -> list[tuple[object, object]]:
    """(runtime, session) pairs that ran this model, oldest first."""
    module = module_of(model)
    ids = {id(p) for p in module.parameters()} | {id(b) for b in module.buffers()}
    found = []
    for ref, session, params in _ENTRIES:
        runtime, live = ref(), [r() for r in params]
        # compare identities through live weakrefs: a freed model's ids may be reused
        if runtime is not None and live and all(p is not None and id(p) in ids for p in live):
            found.append((runtime, session))
    return found


def note_call(session, signature: tuple) -> bool:
    """Record the input signature of this call; True if the same model last ran another one."""
    key = _MODEL_OF[session]
    changed = key in _LAST_SIGNATURE and _LAST_SIGNATURE[key] != signature
    _LAST_SIGNATURE[key] = signature
    return changed
