"""StepClock: which generation, step and call position a model call is.

One set of rules, used by the PyTorch runtime and the bundle runners alike (through Session). The
README's "Generations and steps" section states them for users; the numbers below are quoted there.

A generation is either *implicit* (the clock infers its bounds from the timesteps it sees) or
*explicit* (`tokencache.generation(...)`, or a pipeline wrapped by `tokencache.compile_pipeline`:
a new Session, hence a new clock, per generation, with its step count when known).

 1. Same timestep as the previous call: another call of the same step, at the next call position
    (0, 1, 2, ...). That covers classifier-free guidance as two or three calls per step, and the
    second evaluation of a second-order sampler (Heun, KDPM2-ancestral, DPM2) at a repeated
    timestep. Each position keeps its own caches (Session).
    Implicit generations only, at their first step: if the latent input differs from that of the
    generation's first call, this call starts a new generation instead. No sampler evaluates its
    first timestep twice on different latents, so this is a warm-up call (or a one-step run)
    followed by the real generation at the same timestep, whose features must not be reused.
 2. A timestep that moves in the generation's direction: the next step, position 0.
 3. A timestep that moves against the direction starts over: in implicit mode a new generation; in
    an explicit generation a *restart* (restart samplers jump back up): the schedule starts again
    at step 0 and caches are dropped, but it stays one generation.
 4. Direction. Implicit mode expects timesteps to count down (diffusers, k-diffusion and flow
    matching samplers all do), so a warm-up or one-step run at a lower timestep never takes the
    next generation's first call for its own next step. A model whose timestep counts up (t = 0
    -> 1) shows as two moves up in a row, the first of which started a generation of one step: the
    clock then flips its expected direction, continues that generation (dropping its caches, so
    the call runs fresh and nothing wrong is reused), and folds the one-step generation before it
    into it when that one had a single step too. An explicit generation takes its direction from
    its first move.
 5. No timestep (none found, or not a tensor): every call is one step; an implicit generation
    ends after `num_steps` calls, the only signal left (the runtime warns once about this).
 6. Steps past the generation's step count stay in that generation (Session decides what they run:
    the fresh variant, with one warning per generation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

DOWN, UP = -1, 1


@dataclass(frozen=True)
class Tick:
    """What one call is. `start`: drop every call position's caches before this call (a new
    generation, a restart or a direction flip); `new_generation`: count one generation;
    `merged`: the previous generation was folded into this one (count one fewer)."""
    step: int
    position: int
    start: bool = False
    new_generation: bool = False
    restart: bool = False
    merged: bool = False


class StepClock:
    def __init__(self, num_steps: int, explicit: bool = False):
        self.num_steps = num_steps            # steps of this (explicit) generation, or the default
        self.explicit = explicit
        self.direction = 0 if explicit else DOWN
        self.generations = 0
        self.restarts = 0
        self.step = -1
        self.position = 0
        self._last: float | None = None
        self._started_against = False        # this generation began with a move against the direction
        self._previous_steps = 0             # steps of the previous implicit generation

    def reset(self) -> None:
        """The next call starts a new generation (tokencache.new_generation)."""
        self.step, self.position, self._last = -1, 0, None

    def tick(self, t: float | None, same_input: Callable[[], bool] | None = None) -> Tick:
        """Account for one call with timestep value `t` (None: no timestep). `same_input()` says
        whether this call's latent equals the generation's first call's (rule 1); it is only asked
        at an implicit generation's first step, on a repeated timestep."""
        if self.step < 0:
            return self._new(t, against=False)
        if t is None or self._last is None:
            if t is None and not self.explicit and self.step + 1 >= self.num_steps:
                return self._new(t, against=False)                                   # rule 5
            return self._advance(t)
        if t == self._last:                                                          # rule 1
            if self.step == 0 and not self.explicit and same_input is not None and not same_input():
                return self._new(t, against=False)
            self.position += 1
            return Tick(self.step, self.position)
        move = UP if t > self._last else DOWN
        if self.direction == 0:
            self.direction = move
        if move == self.direction:                                                   # rule 2
            return self._advance(t)
        if self.explicit:                                                            # rule 3
            self.restarts += 1
            self.step, self.position, self._last = 0, 0, t
            return Tick(0, 0, start=True, restart=True)
        if self._started_against and self.step == 0:                                 # rule 4
            self.direction = move
            merged = self._previous_steps == 1
            if merged:
                self.generations -= 1
                self.step += 1
            self._started_against = False
            self.step += 1
            self.position, self._last = 0, t
            return Tick(self.step, 0, start=True, merged=merged)
        return self._new(t, against=True)

    def _advance(self, t) -> Tick:
        self.step += 1
        self.position, self._last = 0, t
        return Tick(self.step, 0)

    def _new(self, t, against: bool) -> Tick:
        self._previous_steps = self.step + 1
        self._started_against = against
        self.generations += 1
        self.step, self.position, self._last = 0, 0, t
        return Tick(0, 0, start=True, new_generation=True)
