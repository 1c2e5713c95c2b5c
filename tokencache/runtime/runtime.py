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
from ..compiler.inner import compile_variant, cpu_matmul_for
from ..config import CacheConfig
from ..policies import FRESH
from . import registry
from .packed_weights import PACKED
from .session import Session


_CALLS = itertools.count()   # global call sequence: which session of a model ran last


class CacheRuntime:
    def __init__(self, config: CacheConfig, policy, variants: dict[str, fx.GraphModule], schedule: list[str],
                 inputs: list[GraphInput], example_inputs: list, timestep: GraphInput | None,
                 report_base: dict):
        self.config = config
        self.policy = policy
        self.variants = variants
        self.schedule = schedule
        self.inputs = inputs
        self.example_inputs = list(example_inputs)
        self.timestep = timestep
        self.report_base = report_base
        self.compiled: dict[str, object] = {}
        self.compiles: Counter = Counter()
        self.matmul: dict[str, str | None] = {}     # variant -> CPU linear kernels it was compiled with
        self.sessions: dict[int, tuple[weakref.ref, Session]] = {}
        self.user_positions = [gi.index for gi in inputs if gi.kind == "user"]
        self.param_positions = [gi.index for gi in inputs if gi.kind == "param"
                                and isinstance(example_inputs[gi.index], torch.Tensor)]
        self._warned_long = False
        self.graph_pool = None

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
        variant, step, state = session.begin(self._timestep_value(args), self._variant_for)
        if step == 0 and session.clock.position == 0 and "onednn_packed" in self.matmul.values():
            # a generation starts: notice weights written through .data since they were packed
            PACKED.verify(args[i] for i in self.param_positions)
        full_args = self.assemble(variant, args, state, step, session.fresh_steps)
        with torch.no_grad():
            outs = self._compiled(variant, full_args)(*full_args)
        wiring = self.variants[variant].meta["tokencache"]
        n = wiring["num_outputs"]
        state.update(zip(wiring["state_out"], outs[n:]))
        session.calls[variant] += 1
        session.last_call = next(_CALLS)
        return tuple(outs[:n])

    def assemble(self, variant: str, args, state: dict, step: int, fresh_steps: list[int]) -> list:
        """Graph inputs, then state inputs (zeros where a policy allows a cold start, e.g. Taylor
        factors of orders not yet seen), then host-computed inputs (step distances, coefficients)."""
        wiring = self.variants[variant].meta["tokencache"]
        device = args[self.user_positions[0]].device if self.user_positions else None
        for key in wiring["state_in"]:
            if key not in state:
                if key not in wiring.get("state_init", {}):
                    raise RuntimeError(f"tokencache: variant {variant!r} needs state {key!r} that no earlier step "
                                       "produced; the schedule must start with a fresh step")
                shape, dtype = wiring["state_init"][key]
                state[key] = torch.zeros(shape, dtype=dtype, device=device)
        host = self.policy.host_inputs(variant, step, fresh_steps, self.config) if wiring.get("host_in") else {}
        host = [host[name].to(device) for name in wiring.get("host_in", [])]
        return [*args, *(state[k] for k in wiring["state_in"]), *host]

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
            if self.graph_pool is None and self.config.inner == "cudagraphs" and torch.cuda.is_available():
                self.graph_pool = torch.cuda.graph_pool_handle()   # one pool: variants never run concurrently
            weight_bytes = sum(full_args[i].nbytes for i in self.param_positions)
            self.matmul[variant] = cpu_matmul_for(full_args, self.config.inner, self.config.cpu_matmul, weight_bytes)
            self.compiled[variant] = compile_variant(self.variants[variant], full_args, self.config.inner,
                                                     self.param_positions, self.graph_pool, self.matmul[variant])
            self.compiles[variant] += 1
        return self.compiled[variant]

    # -- control and introspection ----------------------------------------------------------
    def user_signature(self, args) -> tuple:
        return tuple(tuple(args[i].shape) if isinstance(args[i], torch.Tensor) else args[i]
                     for i in self.user_positions)

    def variant_flops(self) -> dict[str, int]:
        """FLOPs of one call of each variant, counted by running its graph eagerly once, in
        schedule order so that every variant sees state of the right shapes."""
        from torch.utils.flop_counter import FlopCounterMode

        state: dict[str, torch.Tensor] = {}
        flops: dict[str, int] = {}
        fresh_steps: list[int] = []
        with torch.no_grad():
            for step, name in enumerate(self.schedule):
                if name in flops:
                    continue
                if name == FRESH:
                    fresh_steps.append(step)
                args = self.assemble(name, self.example_inputs, state, step, fresh_steps)
                gm = self.variants[name]
                with FlopCounterMode(display=False) as counter:
                    outs = gm(*args)
                state.update(zip(gm.meta["tokencache"]["state_out"], outs[gm.meta["tokencache"]["num_outputs"]:]))
                flops[name] = int(counter.get_total_flops())
        return flops

    def report(self, session: "Session") -> dict:
        flops = self.variant_flops()
        steps = self.schedule
        return {
            **self.report_base,
            "variants": {name: {"compiles": self.compiles[name], "calls": session.calls[name],
                                "flops": flops.get(name), "cpu_matmul": self.matmul.get(name),
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
