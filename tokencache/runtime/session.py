"""Session: one model instance's progress through generations, shared by every runtime (the
PyTorch CacheRuntime and the bundle runners) so that they step, reset and keep state alike."""
from __future__ import annotations

from collections import Counter
from typing import Callable

from ..policies import FRESH
from .clock import StepClock


class Session:
    """Step counter, per-call-position cache state, fresh-step history and call counts."""

    def __init__(self, num_steps: int):
        self.clock = StepClock(num_steps)
        self.states: dict[int, dict] = {}
        self.calls: Counter = Counter()
        self.fresh_steps: list[int] = []   # steps of this generation that ran fresh (Taylor history)
        self.last_call = -1

    def reset(self, keep_clock: bool = False) -> None:
        if not keep_clock:
            self.clock.reset()
        self.states.clear()
        self.fresh_steps.clear()

    def begin(self, timestep: float | None, variant_for: Callable[[int], str]) -> tuple[str, int, dict]:
        """Account for one call: returns (variant to run, step, this call position's state dict)."""
        if self.clock.tick(timestep):
            self.reset(keep_clock=True)
        step, position = self.clock.step, self.clock.position
        variant = variant_for(step)
        if variant == FRESH and position == 0:
            self.fresh_steps.append(step)
        return variant, step, self.states.setdefault(position, {})

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() if hasattr(t, "element_size") else t.nbytes
                   for s in self.states.values() for t in s.values())
