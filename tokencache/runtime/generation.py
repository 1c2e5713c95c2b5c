"""Explicit generations: `with tokencache.generation(model, steps=N):` marks one generation.

Inside the block every call of the model belongs to that one generation: no timestep heuristics
decide where it starts or ends (clock.py rules 1-4 for steps within it still apply, without the
warm-up exception, and a timestep moving back up restarts the schedule instead of starting a new
generation). `steps` sets the generation's step count (the schedule's length); it may be a
callable, asked at the generation's first model call (the pipeline wrapper reads the scheduler's
timesteps then). State lives in the handle: it is dropped when the block ends, and two handles
never share caches, so concurrent generations (threads, or asyncio tasks each in its own block)
on one compiled model are isolated.

Without a block, each thread has its own implicit state per model (runtime.py).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import torch

from ..compat import original_module

_ACTIVE: contextvars.ContextVar[tuple] = contextvars.ContextVar("tokencache_generation", default=())


class Generation:
    """One explicit generation of one model (or of every tokencache model, `model=None`)."""

    def __init__(self, model=None, steps: int | Callable[[], int | None] | None = None):
        if steps is not None and not callable(steps) and (not isinstance(steps, int) or isinstance(steps, bool)
                                                          or steps < 1):
            raise ValueError(f"tokencache.generation: steps must be an integer >= 1, got {steps!r}")
        self._ids = None
        if model is not None and not isinstance(original_module(model), torch.nn.Module):
            self._ids = {id(model)}              # a bundle runner
        elif model is not None:
            from .registry import module_of
            module = module_of(model)
            self._ids = {id(p) for p in module.parameters()} | {id(b) for b in module.buffers()}
        self._steps = steps
        self._resolved: int | None = None
        self.sessions: dict = {}             # (id(runtime), model key) -> Session
        self.signatures: dict = {}
        self._token = None

    def covers(self, anchor) -> bool:
        return self._ids is None or anchor is None or id(anchor) in self._ids

    def steps(self, default: int) -> int:
        """This generation's step count: `steps`, or its callable's answer, else `default`."""
        if self._resolved is None:
            value = self._steps() if callable(self._steps) else self._steps
            self._resolved = int(value) if value else default
        return self._resolved

    def __enter__(self) -> "Generation":
        self._token = _ACTIVE.set(_ACTIVE.get() + (self,))
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)
        self.sessions.clear()                # caches of this generation are freed here

    @contextlib.contextmanager
    def resumed(self):
        """Make this generation current again for a few calls, keeping its state: a server that
        interleaves many generations (one per request sequence) enters each for its calls, and
        ends it with `with handle: pass`, or drops the handle."""
        token = _ACTIVE.set(_ACTIVE.get() + (self,))
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


def active_generation(anchor) -> Generation | None:
    """The innermost active generation block that covers the model owning `anchor` (a parameter)."""
    for handle in reversed(_ACTIVE.get()):
        if handle.covers(anchor):
            return handle
    return None
