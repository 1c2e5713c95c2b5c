"""StepClock: which denoising step and which call within the step this call is.

Diffusion samplers move the timestep monotonically through a generation (diffusers counts
down). So: the same timestep as the previous call = another call of the same step (classifier-free
guidance as two calls), a step against the established direction = a new generation, and so
does any new step once `num_steps` steps have run. Without a timestep input every call is a step.
"""
from __future__ import annotations


class StepClock:
    def __init__(self, num_steps: int):
        self.num_steps = num_steps
        self.generations = 0
        self.reset()

    def reset(self) -> None:
        self.step = -1
        self.position = 0
        self._last: float | None = None
        self._direction = 0

    def tick(self, t: float | None) -> bool:
        """Advance for one call with timestep value `t`; True when a new generation starts."""
        if t is not None and self._last is not None and t == self._last:
            self.position += 1
            return False
        new = self.step < 0 or self.step + 1 >= self.num_steps
        if t is not None and self._last is not None:
            move = 1 if t > self._last else -1
            if self._direction == 0:
                self._direction = move
            elif move != self._direction:
                new = True
        if new:
            self.reset()
            self.generations += 1
        self.step += 1
        self.position = 0
        self._last = t
        return new
