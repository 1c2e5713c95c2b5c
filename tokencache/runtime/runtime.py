"""CacheRuntime: the callable Dynamo gets back. All mutable state of tokencache lives here.

Per call: tell the step (StepClock), pick the variant the precomputed schedule names, feed it the
user's inputs, the parameters and the cache state of this call position (a separate state per
call within a step, so CFG as two calls works), keep the state it returns, return the outputs.

Dynamo passes parameters as graph inputs, so one captured graph (and its compiled variants) also
serves every other instance of the same architecture. Step counter and caches therefore live in a
Session per model instance, told apart by the identity of the parameter tensors in the call.
"""
from __future__ import annotations

import warnings
import weakref
import itertools
from collections import Counter

import torch
import torch.fx as fx

from ..compiler.graph_inputs import GraphInput
from ..compiler.inner import compile_variant
from ..config import CacheConfig
from ..policies import FRESH
from . import registry
from .clock import StepClock


_CALLS = itertools.count()   # global call sequence: which session of a model ran last


class CacheRuntime:
    def __init__(self, config: CacheConfig, variants: dict[str, fx.GraphModule], schedule: list[str],
                 inputs: list[GraphInput], example_inputs: list, timestep: GraphInput | None,
                 report_base: dict):
        self.config = config
        self.variants = variants
        self.schedule = schedule
        self.inputs = inputs
        self.example_inputs = list(example_inputs)
        self.timestep = timestep
        self.report_base = report_base
        self.compiled: dict[str, object] = {}
        self.compiles: Counter = Counter()
        self.sessions: dict[int, tuple[weakref.ref, Session]] = {}
        self.user_positions = [gi.index for gi in inputs if gi.kind == "user"]
        self.param_positions = [gi.index for gi in inputs if gi.kind == "param"
                                and isinstance(example_inputs[gi.index], torch.Tensor)]
        self._warned_long = False

    # -- per call ---------------------------------------------------------------------------
    def session_for(self, args) -> "Session":
        anchor = args[self.param_positions[0]] if self.param_positions else self
        entry = self.sessions.get(id(anchor))
        if entry is not None and entry[0]() is anchor:
            return entry[1]
        # ids are reused after a model is freed: a session is only found through a live weakref.
        session = Session(self.config.num_steps)
        self.sessions[id(anchor)] = (weakref.ref(anchor), session)
        registry.register(self, session, [args[i] for i in self.param_positions])
        return session

    def __call__(self, *args):
        session = self.session_for(args)
        if registry.note_call(session, self.user_signature(args)):
            session.reset()                   # another input signature ran last: a new generation
        if session.clock.tick(self._timestep_value(args)):
            session.states.clear()
        variant = self._variant_for(session.clock.step)
        state = session.states.setdefault(session.clock.position, {})
        wiring = self.variants[variant].meta["tokencache"]
        missing = [k for k in wiring["state_in"] if k not in state]
        if missing:   # cannot happen with a schedule that starts fresh; guard against misuse
            variant, wiring = FRESH, self.variants[FRESH].meta["tokencache"]
        full_args = [*args, *(state[k] for k in wiring["state_in"])]
        with torch.no_grad():
            fn = self._compiled(variant, full_args)
            outs = fn(*full_args)
        n = wiring["num_outputs"]
        state.update(zip(wiring["state_out"], outs[n:]))
        session.calls[variant] += 1
        session.last_call = next(_CALLS)
        return tuple(outs[:n])

    def _timestep_value(self, args) -> float | None:
        if self.timestep is None:
            return None
        t = args[self.timestep.index]
        return float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)

    def _variant_for(self, step: int) -> str:
        if step < len(self.schedule):
            return self.schedule[step]
        if not self._warned_long:
            warnings.warn(f"tokencache: generation runs past num_steps={self.config.num_steps}; "
                          "the extra steps run fresh (set num_steps to the sampler's step count)", stacklevel=3)
            self._warned_long = True
        return self.schedule[0]

    def _compiled(self, variant: str, full_args: list):
        if variant not in self.compiled:
            self.compiled[variant] = compile_variant(self.variants[variant], full_args, self.config.inner)
            self.compiles[variant] += 1
        return self.compiled[variant]

    # -- control and introspection ----------------------------------------------------------
    def user_signature(self, args) -> tuple:
        return tuple(tuple(args[i].shape) if isinstance(args[i], torch.Tensor) else args[i]
                     for i in self.user_positions)

    def variant_flops(self) -> dict[str, int]:
        """FLOPs of one call of each variant, counted by running its graph eagerly once."""
        from torch.utils.flop_counter import FlopCounterMode

        state: dict[str, torch.Tensor] = {}
        flops = {}
        order = list(dict.fromkeys(self.schedule))
        with torch.no_grad():
            for name in order:
                gm = self.variants[name]
                wiring = gm.meta["tokencache"]
                with FlopCounterMode(display=False) as counter:
                    outs = gm(*self.example_inputs, *(state[k] for k in wiring["state_in"]))
                state.update(zip(wiring["state_out"], outs[wiring["num_outputs"]:]))
                flops[name] = int(counter.get_total_flops())
        return flops

    def report(self, session: "Session") -> dict:
        flops = self.variant_flops()
        steps = self.schedule
        return {
            **self.report_base,
            "variants": {name: {"compiles": self.compiles[name], "calls": session.calls[name],
                                "flops": flops.get(name),
                                "state_in": list(gm.meta["tokencache"]["state_in"]),
                                "state_out": list(gm.meta["tokencache"]["state_out"])}
                         for name, gm in self.variants.items()},
            "schedule": list(steps),
            "flops_per_generation": sum(flops[v] for v in steps),
            "flops_uncached_generation": flops[steps[0]] * len(steps),
            "cache_bytes": session.cache_bytes(),
            "generations": session.clock.generations,
            "step": session.clock.step,
        }


class Session:
    """One model instance's step counter, per-call-position cache state and call counts."""

    def __init__(self, num_steps: int):
        self.clock = StepClock(num_steps)
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.calls: Counter = Counter()
        self.last_call = -1

    def reset(self) -> None:
        self.clock.reset()
        self.states.clear()

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.states.values() for t in s.values()
                   if isinstance(t, torch.Tensor))
