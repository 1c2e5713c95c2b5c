"""One step clock per model across graph breaks.

A model that Dynamo cannot trace in one piece reaches tokencache as several graphs, each with its
own runtime: the graph before a break and the resume function after it, or, when Dynamo skips a
frame, each block's own forward (compiler/capture.py). Every graph that holds blocks is cached, so
every graph must agree on the generation, the step and the call position of each model call.

The rule:
 1. A graph with the timestep among its inputs counts steps itself (clock.py). Every such graph of
    a model sees the same timestep sequence, so they count alike.
 2. A graph without it (a resume function after the timestep was consumed, a block's own frame)
    *follows*: each call takes the generation, step, call position and step count of the
    timestep-carrying graph of the same model that ran last, if that one ran since this graph's
    previous call. Its schedule is the same policy schedule, so it runs the variant the model's
    step names, with its own caches (per call position, as for any graph).
 3. A follower that starts following a new generation of its leader (or a restart, or comes back
    to following) drops its caches first, so it runs fresh before any cached step; a follower
    called again before its leader ticks (a module called twice per step) counts its own steps
    (rule 5 of clock.py) and runs fresh, never reading features of another call.
 4. A graph that runs before any timestep-carrying graph of its model call (a break before the
    timestep is used) would follow the previous call's step: no diffusers model holds blocks
    there; such graphs are plain (uncached) in practice.
 5. A timestep-carrying graph that did not see the start of its model's current generation
    (Dynamo recompiled the model's frame for an input of other strides, and the recompiled graph
    runs from the second step of each generation on) joins that generation: it continues from a
    copy of the clock that started it, so it and the followers stay on the model's step (it
    runs fresh at its first step of a generation: its caches are its own).

"The same model" is the model whose `torch.compile` wrapper (OptimizedModule) is the outermost
one on the Python stack when the graph runs: a VAE or text encoder compiled on its own never
follows the transformer's clock. Links are per thread / asyncio task (a ContextVar) and hold the
model and leader only weakly.
"""
from __future__ import annotations

import contextvars
import copy
import weakref
from dataclasses import dataclass

from ..compat import calling_model
from .clock import StepClock, Tick

_LINKS: contextvars.ContextVar[dict] = contextvars.ContextVar("tokencache_step_links", default={})
_MODELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # session -> weakref(model) | None
_STARTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model -> call sequence of its latest generation start
_NO_MODEL = object()


@dataclass(frozen=True)
class Link:
    """What the timestep-carrying graph of a model decided for its latest call."""
    leader: weakref.ref     # its Session
    token: int              # changes at each generation start or restart of the model
    step: int
    position: int
    num_steps: int
    explicit: bool
    seq: int                # the call's sequence number (runtime.py's global call counter)
    new_generation: bool


def clear() -> None:
    """Forget every model's links and generation starts (tests, between tests)."""
    _MODELS.clear()
    _STARTS.clear()
    _LINKS.set({})


def model_of(session):
    """The model a session's calls come from (looked up once per session)."""
    ref = _MODELS.get(session, _NO_MODEL)
    if ref is _NO_MODEL:
        model = calling_model()
        ref = _MODELS[session] = weakref.ref(model) if model is not None else None
    return ref() if ref is not None else None


def model_of_known(session):
    """The model of a session, if it has been looked up (no stack walk)."""
    ref = _MODELS.get(session)
    return ref() if ref is not None and ref is not _NO_MODEL else None


def _key(model) -> int:
    return id(model) if model is not None else 0


def publish(session, call, sequence: int, config=None) -> None:
    """A timestep-carrying graph's call: record its tick for the followers of its model. When a
    generation of the model has ended, check once what caching saved (model_report.py)."""
    model = model_of(session)
    links = _LINKS.get()
    previous = links.get(_key(model))
    tick: Tick = call.tick
    # the model's generation: a new token whenever a timestep graph starts a generation or restarts
    token = sequence if (tick.start or previous is None) else previous.token
    if (tick.new_generation or tick.start) and model is not None:
        if tick.new_generation and model in _STARTS and config is not None:
            from .model_report import check_generation
            check_generation(model, config)
        _STARTS[model] = sequence
    link = Link(weakref.ref(session), token, call.step, call.position, session.clock.num_steps,
                session.clock.explicit, sequence, tick.new_generation)
    _TOKENS[session] = token
    _LINKS.set({**{k: v for k, v in links.items() if v.leader() is not None}, _key(model): link})


def latest(model) -> Link | None:
    link = _LINKS.get().get(_key(model))
    return link if link is not None and link.leader() is not None else None


def generation_start(model) -> int | None:
    """Call sequence number at which the model's latest generation started (None: unknown)."""
    return _STARTS.get(model) if model is not None else None


class LinkedClock(StepClock):
    """A follower's clock (rule 2): the leader's tick when it ran since this graph's last call,
    else its own count (clock.py rule 5, one step per call), which it keeps in any case."""

    def __init__(self, base: StepClock, model):
        super().__init__(base.num_steps, base.explicit)
        self._model = weakref.ref(model) if model is not None else None
        self._own_steps, self._own_explicit = base.num_steps, base.explicit
        self._seen = -1
        self._key = None
        self._following = False

    def reset(self) -> None:
        super().reset()
        self._following, self._key = False, None

    def tick(self, t, same_input=None) -> Tick:
        self.num_steps, self.explicit = self._own_steps, self._own_explicit
        own = super().tick(t, same_input)
        link = latest(self._model() if self._model is not None else None)
        if link is None or link.seq <= self._seen:
            if self._following:                 # rule 3: back on its own count, with fresh caches
                self._following = False
                return Tick(own.step, own.position, start=True, new_generation=True)
            return own
        self._seen = link.seq
        key = link.token
        start = not self._following or key != self._key
        self._following, self._key = True, key
        self.num_steps, self.explicit = link.num_steps, link.explicit
        return Tick(link.step, link.position, start=start, new_generation=start)

    @property
    def following(self) -> bool:
        return self._following


_ATTACHED: "weakref.WeakSet" = weakref.WeakSet()
_TOKENS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()    # leader session -> model generation it ran in


def attach(session, leads: bool) -> None:
    """Make a graph's session part of its model's clock, before each of its calls: a graph without
    a timestep gets a LinkedClock (once); a timestep graph that another timestep graph of its
    model ran after continues from a copy of that graph's clock (rule 5)."""
    model = model_of(session)
    if not leads:
        if session not in _ATTACHED:
            _ATTACHED.add(session)
            session.clock = LinkedClock(session.clock, model)
        return
    link = latest(model)
    leader = link.leader() if link is not None else None
    if (leader is not None and leader is not session and link.seq > session.last_call
            and leader.clock.explicit == session.clock.explicit):
        # another graph of the model counted the steps since this one's last call: continue from
        # its clock, so that this call is the step after the model's latest one
        num_steps = session.clock.num_steps
        session.clock = copy.copy(leader.clock)
        session.clock.num_steps = num_steps
        if _TOKENS.get(session) != link.token:
            session.positions.clear()   # caches of an earlier generation: its first step here runs fresh
