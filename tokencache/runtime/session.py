"""Session: one model's progress through a generation, for one graph, in one thread or one explicit
generation. The PyTorch runtime and the bundle runners both step through a Session, so they
step, reset and keep state alike (clock.py has the step rules; this file the variant rules).

Which variant a call runs:
 - the one the schedule names for its step, the schedule being the policy's for the generation's
   step count (`tokencache.generation(steps=N)`, the pipeline's step count, else `num_steps`);
 - steps past that count run the fresh variant (exact; the speed-up is lost for them), with one
   warning per generation naming the count and how to give the right one;
 - a call position with no caches yet in this generation runs the fresh variant too: a second
   call position first seen at a cached step (the corrector of a second-order sampler, which
   first appears at step 1) computes its caches instead of reading state no step produced.
Each call position keeps its own caches and its own list of fresh steps (the Taylor policies'
history), so positions never read each other's features.
"""
from __future__ import annotations

import threading
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from .clock import StepClock, Tick


class Schedules:
    """The policy's step -> variant list for any step count (cached). Names the compiled variants
    lack (ToCa's step buckets differ with the step count) run the fresh variant."""

    def __init__(self, policy, config, variants):
        self.policy, self.config, self.variants = policy, config, set(variants)
        self._cache: dict[int, list[str]] = {}

    def __call__(self, steps: int) -> list[str]:
        if steps not in self._cache:
            names = self.policy.schedule(self.config.with_steps(steps))
            self._cache[steps] = [n if n in self.variants else names[0] for n in names]
        return self._cache[steps]


@dataclass
class Position:
    """Caches of one call position within a step, and the steps at which it ran fresh."""
    state: dict = field(default_factory=dict)
    fresh_steps: list = field(default_factory=list)


@dataclass
class Call:
    variant: str
    step: int
    position: int
    state: dict
    fresh_steps: list
    tick: Tick


class Session:
    def __init__(self, schedules: Callable[[int], list[str]], num_steps: int, explicit: bool = False):
        self.schedules = schedules
        self.clock = StepClock(num_steps, explicit)
        self.positions: dict[int, Position] = {}
        self.calls: Counter = Counter()
        self.last_call = -1
        self._first_latent: torch.Tensor | None = None
        self._warned_past = False

    @property
    def states(self) -> dict[int, dict]:
        """Call position -> its cache state."""
        return {p: pos.state for p, pos in self.positions.items()}

    @property
    def fresh_steps(self) -> list[int]:
        return self.positions[0].fresh_steps if 0 in self.positions else []

    def reset(self) -> None:
        """The next call starts a new generation."""
        self.clock.reset()
        self.positions.clear()
        self._first_latent = None

    def begin(self, timestep: float | None, latent=None) -> Call:
        """Account for one call: its variant, step, and its call position's state and fresh steps.
        `latent`: this call's latent input (a tensor or array), for the warm-up rule (clock.py 1)."""
        tick = self.clock.tick(timestep, lambda: self._same_latent(latent))
        if tick.start:
            self.positions.clear()
            self._warned_past = False
        if tick.new_generation and not self.clock.explicit and latent is not None:
            self._first_latent = torch.as_tensor(latent).detach().clone()
        position = self.positions.setdefault(tick.position, Position())
        schedule = self.schedules(self.clock.num_steps)
        fresh = schedule[0]
        if tick.step < len(schedule):
            variant = schedule[tick.step]
        else:
            variant = fresh
            self._warn_past(len(schedule))
        if not position.fresh_steps:
            variant = fresh
        if variant == fresh:
            position.fresh_steps.append(tick.step)
        self.calls[variant] += 1
        return Call(variant, tick.step, tick.position, position.state, position.fresh_steps, tick)

    def _same_latent(self, latent) -> bool:
        if latent is None or self._first_latent is None:
            return True
        latent = torch.as_tensor(latent)
        return latent.shape == self._first_latent.shape and torch.equal(latent.to(self._first_latent.device),
                                                                         self._first_latent)

    def _warn_past(self, steps: int) -> None:
        if self._warned_past:
            return
        self._warned_past = True
        warnings.warn(f"tokencache: this generation runs past its {steps} steps; the extra steps run fresh "
                      f"(uncached) and it stays one generation. Give the sampler's step count: num_steps=, "
                      f"`with tokencache.generation(model, steps=N)`, or tokencache.compile_pipeline(pipe)",
                      stacklevel=4)

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() if hasattr(t, "element_size") else t.nbytes
                   for s in self.states.values() for t in s.values())


class ModelEntry:
    """One model instance's use of one graph: its implicit Session per thread (explicit generations
    keep theirs in their handle), and counts over all of its sessions for report(). It holds the
    model's tensors only through weak references: it goes when the model goes."""

    def __init__(self, params: list):
        self.params = [weakref.ref(p) for p in params]
        self.key = min(id(p) for p in params) if params else 0
        self.calls: Counter = Counter()
        self.generations = 0
        self.restarts = 0
        self.last_call = -1
        self.threads: dict[int, Session] = {}           # thread ident -> implicit session
        self.sessions: "weakref.WeakSet[Session]" = weakref.WeakSet()
        self._latest: weakref.ref | None = None
        self._lock = threading.RLock()

    def live_params(self) -> list | None:
        params = [r() for r in self.params]
        return None if any(p is None for p in params) else params

    def thread_session(self, make: Callable[[], Session]) -> Session:
        ident = threading.get_ident()
        session = self.threads.get(ident)
        if session is None:
            with self._lock:
                alive = {t.ident for t in threading.enumerate()}
                for gone in [i for i in list(self.threads) if i not in alive]:   # caches of finished threads
                    self.threads.pop(gone, None)
                session = self.threads[ident] = self.track(make())
        return session

    def track(self, session: Session) -> Session:
        with self._lock:
            self.sessions.add(session)
        return session

    def note(self, session: Session, call: Call, sequence: int) -> None:
        self.calls[call.variant] += 1
        self.generations += call.tick.new_generation - call.tick.merged
        self.restarts += call.tick.restart
        self.last_call = session.last_call = sequence
        self._latest = weakref.ref(session)

    @property
    def session(self) -> Session | None:
        """This thread's implicit session, else the one that ran last (e.g. an explicit one)."""
        session = self.threads.get(threading.get_ident())
        latest = self._latest() if self._latest is not None else None
        if session is None or (latest is not None and latest.last_call > session.last_call):
            return latest if latest is not None else session
        return session

    @property
    def states(self) -> dict[int, dict]:
        session = self.session
        return session.states if session is not None else {}

    @property
    def step(self) -> int:
        session = self.session
        return session.clock.step if session is not None else -1

    def reset_thread(self) -> None:
        session = self.threads.get(threading.get_ident())
        if session is not None:
            session.reset()

    def cache_bytes(self) -> int:
        with self._lock:
            sessions = list(self.sessions)
        return sum(s.cache_bytes() for s in sessions)
