"""CacheRuntime: the callable Dynamo gets back. All mutable state of tokencache lives here.

Per call: tell the step (Session: clock.py's step rules, session.py's variant rules), pick the
variant, feed it the user's inputs, the parameters and the cache state of this call position (a
separate state per call within a step, so CFG as two calls works), keep the state it returns,
return the outputs.

Dynamo passes parameters as graph inputs, so one captured graph (and its compiled variants) also
serves every other instance of the same architecture. Step counters and caches therefore live per
model instance (a ModelEntry, told apart by the identity of the parameter tensors in the call),
and within it per thread, or per explicit generation (`tokencache.generation`, generation.py):
concurrent generations in different threads or generation blocks never share caches. The runtime
holds the model's tensors only weakly (ModelEntry) and of the example inputs only their shapes,
dtypes and small values, so deleting a model frees its weights and caches.

Inference only: a graph Dynamo captured with gradients enabled (and inputs that require them)
runs as captured, uncached, with autograd (the backend warns once).
"""
from __future__ import annotations

import contextlib
import itertools
import threading
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..compat import fake_tensor_mode
from ..compiler.graph_inputs import GraphInput
from ..backends.inner import compile_variant, cpu_matmul_for
from ..config import CacheConfig
from . import registry, steplink
from .flops import count_graph_flops
from .generation import active_generation
from .host_scalar import HOST_SCALARS
from .packed_weights import PACKED
from .session import ModelEntry, Schedules, Session


_CALLS = itertools.count()   # global call sequence: which session of a model ran last
_THREAD = threading.local()  # per thread: runtime calls made (eager-run detection), input signatures
SMALL_EXAMPLE = 4096         # user inputs up to this many elements (and every non-float one) are kept as copies


def runtime_calls() -> int:
    """How many tokencache runtime calls this thread has made (tokencache.compile notices a call
    that Dynamo ran without reaching the backend)."""
    return getattr(_THREAD, "calls", 0)


@dataclass(frozen=True)
class ExampleSpec:
    """What the runtime keeps of one example input: shape and dtype; the value only for small or
    non-float user inputs (timesteps, labels, ids, masks). Parameters come from the live model."""
    shape: tuple
    dtype: torch.dtype
    device: torch.device
    value: torch.Tensor | None

    @staticmethod
    def of(x, keep: bool):
        if not isinstance(x, torch.Tensor):
            return x
        small = x.numel() <= SMALL_EXAMPLE or not (x.is_floating_point() or x.is_complex())
        value = x.detach().clone() if keep and small else None
        return ExampleSpec(tuple(x.shape), x.dtype, x.device, value)

    def make(self, seed: int) -> torch.Tensor:
        if self.value is not None:
            return self.value
        noise = torch.randn(self.shape, generator=torch.Generator().manual_seed(seed))
        return noise.to(device=self.device, dtype=self.dtype)

    def empty(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)


LATENT_NAMES = ("hidden_states", "sample", "x", "latents", "latent", "img", "z", "noisy_latents")


def find_latent(inputs: list[GraphInput], example_inputs, timestep: GraphInput | None) -> int | None:
    """The user input holding the latent (compared at a generation's first step: clock.py rule 1):
    a usual name, else the first floating-point user input with at least 3 dimensions."""
    users = [gi for gi in inputs if gi.kind == "user" and gi is not timestep
             and isinstance(example_inputs[gi.index], torch.Tensor) and example_inputs[gi.index].is_floating_point()]
    for gi in users:
        if gi.name in LATENT_NAMES:
            return gi.index
    return next((gi.index for gi in users if example_inputs[gi.index].dim() >= 3), None)


class CacheRuntime:
    def __init__(self, config: CacheConfig, policy, variants: dict[str, fx.GraphModule], schedule: list[str],
                 inputs: list[GraphInput], example_inputs: list, timestep: GraphInput | None,
                 report_base: dict, autograd_graph: fx.GraphModule | None = None,
                 captured: fx.GraphModule | None = None):
        self.config = config
        self.policy = policy
        self.variants = variants
        self.schedule = schedule
        self.schedules = Schedules(policy, config, variants)
        self.inputs = inputs
        self.timestep = timestep
        self.report_base = report_base
        self.compiled: dict[str, object] = {}
        self.compiles: Counter = Counter()
        self.matmul: dict[str, str | None] = {}     # variant -> CPU linear kernels it was compiled with
        self.models: dict[int, ModelEntry] = {}     # id of the model's first parameter -> its entry
        self.user_positions = [gi.index for gi in inputs if gi.kind == "user"]
        self.param_positions = [gi.index for gi in inputs if gi.kind == "param"
                                and isinstance(example_inputs[gi.index], torch.Tensor)]
        # parameters and buffers first, then lifted constants (RoPE tables): a constant is not in
        # model.parameters(), so it never anchors or registers the model a call belongs to
        self.param_positions.sort(key=lambda i: inputs[i].constant)
        self.owned_params = sum(not inputs[i].constant for i in self.param_positions)
        params = set(self.param_positions)
        # shapes, dtypes and small values only: never the parameters or the caller's big tensors
        self.examples = [ExampleSpec.of(x, keep=i not in params) for i, x in enumerate(example_inputs)]
        self.latent_index = find_latent(inputs, example_inputs, timestep)
        self.autograd_graph = autograd_graph           # captured with grad enabled: run as is
        # the graph as captured, for the uncached FLOP count: a fresh variant may compute less (dato)
        self.captured = captured
        self.graph_pool = None
        self._compile_lock = threading.Lock()
        # a CUDA graph replays fixed buffers: one call at a time; other inner backends are re-entrant
        self._run_lock = threading.Lock() if config.inner == "cudagraphs" else contextlib.nullcontext()

    # -- per call ---------------------------------------------------------------------------
    def entry_for(self, args) -> ModelEntry:
        """The ModelEntry of the model instance whose parameters are in `args`."""
        anchor = args[self.param_positions[0]] if self.param_positions else None
        key = id(anchor) if anchor is not None else 0
        entry = self.models.get(key)
        # ids are reused after a model is freed: an entry counts only while its weakref is live
        if entry is not None and (anchor is None or entry.params[0]() is anchor):
            return entry
        params = [args[i] for i in self.param_positions]
        entry = self.models[key] = ModelEntry(params)
        if anchor is not None:
            models = self.models
            entry.params[0] = weakref.ref(anchor, lambda ref, key=key: models.get(key) is not None
                                          and models[key].params[0] is ref and models.pop(key))
        registry.register(self, entry, params[:self.owned_params])
        return entry

    def session_for(self, args) -> tuple[ModelEntry, Session]:
        """This call's entry and session: the active generation block's, else this thread's."""
        entry = self.entry_for(args)
        anchor = args[self.param_positions[0]] if self.param_positions else None
        handle = active_generation(anchor)
        if handle is not None:
            key = (id(self), entry.key)
            session = handle.sessions.get(key)
            if session is None:
                session = handle.sessions[key] = entry.track(
                    Session(self.schedules, handle.steps(self.config.num_steps), explicit=True))
            return entry, session
        session = entry.thread_session(lambda: Session(self.schedules, self.config.num_steps))
        signatures = _THREAD.__dict__.setdefault("signatures", {})
        signature = self.user_signature(args)
        if signatures.get(entry.key, signature) != signature:
            session.reset()                   # another input signature of this model ran last: a new generation
        signatures[entry.key] = signature
        return entry, session

    def __call__(self, *args):
        _THREAD.calls = runtime_calls() + 1
        if self.autograd_graph is not None:
            self.entry_for(args).calls[self.schedule[0]] += 1
            return self.autograd_graph(*args)
        entry, session = self.session_for(args)
        steplink.attach(session, leads=self.timestep is not None)   # one clock per model across graph breaks
        call = session.begin(self._timestep_value(args),
                             args[self.latent_index] if self.latent_index is not None else None)
        entry.note(session, call, next(_CALLS))
        if self.timestep is not None:
            steplink.publish(session, call, session.last_call, self.config)
        if call.tick.new_generation and "onednn_packed" in self.matmul.values():
            # a generation starts: notice weights written through .data since they were packed
            PACKED.verify(args[i] for i in self.param_positions)
        # a variant this graph dropped after it failed (_fall_back) runs as the fresh one
        variant = call.variant if call.variant in self.variants else self.schedule[0]
        full_args = self.assemble(variant, args, call.state, call.step, call.fresh_steps)
        try:
            with torch.no_grad(), self._run_lock:
                outs = self._compiled(variant, full_args)(*full_args)
        except Exception as error:
            # tokencache's own errors (TensorRT unavailable, strict mode) and the machine's (memory,
            # a missing package) are not a wrong rewrite: they reach the caller
            if variant == self.schedule[0] or type(error).__module__.startswith("tokencache") \
                    or isinstance(error, (ImportError, MemoryError)):
                raise
            self._fall_back(variant, error)
            variant = self.schedule[0]
            full_args = self.assemble(variant, args, call.state, call.step, call.fresh_steps)
            with torch.no_grad(), self._run_lock:
                outs = self._compiled(variant, full_args)(*full_args)
        wiring = self.variants[variant].meta["tokencache"]
        n = wiring["num_outputs"]
        call.state.update(zip(wiring["state_out"], outs[n:]))
        return tuple(outs[:n])

    def _fall_back(self, variant: str, error: Exception) -> None:
        """A cached variant failed to compile or run: a rewrite applied that should not have (never
        the model's fault, the fresh variant ran the same graph). The model must not pay for it:
        this graph runs its fresh variant at every step from now on (uncached, exact), with the
        reason in a warning and in report()["fallback_reason"]; strict=True raises TokenCacheError."""
        from ..errors import TokenCacheError

        first = (str(error).strip().splitlines() or [""])[0][:300]
        reason = f"its {variant!r} variant failed ({type(error).__name__}: {first}); this graph runs uncached"
        if self.config.strict:
            raise TokenCacheError(f"tokencache: {reason}") from error
        fresh = self.schedule[0]
        self.variants = {fresh: self.variants[fresh]}
        self.schedule = [fresh] * len(self.schedule)
        self.schedules = Schedules(self.policy, self.config, self.variants)
        self.report_base["fallback_reason"] = reason
        warnings.warn(f"tokencache: {reason}. Please report this with the model.", stacklevel=3)

    def assemble(self, variant: str, args, state: dict, step: int, fresh_steps: list[int]) -> list:
        """Graph inputs, then state inputs (zeros where a policy allows a cold start, e.g. Taylor
        factors of orders not yet seen), then host-computed inputs (step distances, coefficients)."""
        wiring = self.variants[variant].meta["tokencache"]
        # the first tensor input: user inputs may be ints (after a graph break Dynamo passes them)
        device = next((args[i].device for i in self.user_positions if isinstance(args[i], torch.Tensor)), None)
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
        # from a host copy of the sampler's schedule where `t` is a view of it: no sync per call
        return None if self.timestep is None else HOST_SCALARS.value(args[self.timestep.index])

    def _compiled(self, variant: str, full_args: list):
        if variant not in self.compiled:
            with self._compile_lock:                # two threads reaching a new variant compile it once
                if variant not in self.compiled:
                    self._compile(variant, full_args)
        return self.compiled[variant]

    def _compile(self, variant: str, full_args: list) -> None:
        if self.graph_pool is None and self.config.inner == "cudagraphs" and torch.cuda.is_available():
            self.graph_pool = torch.cuda.graph_pool_handle()   # one pool: variants never run concurrently
        weight_bytes = sum(full_args[i].nbytes for i in self.param_positions)
        self.matmul[variant] = cpu_matmul_for(full_args, self.config.inner, self.config.cpu_matmul, weight_bytes)
        self.compiled[variant] = compile_variant(self.variants[variant], full_args, self.config.inner,
                                                 self.param_positions, self.graph_pool, self.matmul[variant])
        self.compiles[variant] += 1

    # -- control and introspection ----------------------------------------------------------
    def user_signature(self, args) -> tuple:
        return tuple(tuple(args[i].shape) if isinstance(args[i], torch.Tensor) else args[i]
                     for i in self.user_positions)

    @property
    def example_inputs(self) -> list:
        """Example graph inputs rebuilt on demand (export, checks): the parameters of the model that
        ran this graph last (alive), the kept small user inputs, seeded noise of the recorded shape
        and dtype for the big ones. Nothing of the first call is held for this."""
        entries = sorted(self.models.values(), key=lambda e: e.last_call, reverse=True)
        params = next((p for p in (e.live_params() for e in entries) if p is not None), None)
        if params is None and self.param_positions:
            raise RuntimeError("tokencache: the model this graph was compiled for has been freed")
        by_position = dict(zip(self.param_positions, params or []))
        return [by_position[i] if i in by_position else spec.make(i) if isinstance(spec, ExampleSpec) else spec
                for i, spec in enumerate(self.examples)]

    def fake_examples(self) -> list:
        """The captured inputs as empty tensors of their shapes, dtypes and devices (call it inside
        compat.fake_tensor_mode: no memory), small values as they were: for FLOP counting."""
        return [spec.empty() if isinstance(spec, ExampleSpec) else spec for spec in self.examples]

    def variant_flops(self) -> dict[str, int]:
        """FLOPs of one call of each variant, counted on fake tensors of the captured shapes,
        dtypes and devices (no memory, no compute, whatever dtype or device the model has moved to
        since), in schedule order so that every variant sees state of the right shapes."""
        state: dict[str, torch.Tensor] = {}
        flops: dict[str, int] = {}
        fresh_steps: list[int] = []
        with torch.no_grad(), fake_tensor_mode():
            example = self.fake_examples()
            for step, name in enumerate(self.schedule):
                if name in flops:
                    continue
                if name == self.schedule[0]:
                    fresh_steps.append(step)
                args = self.assemble(name, example, state, step, fresh_steps)
                gm = self.variants[name]
                outs, flops[name] = count_graph_flops(gm, args)
                state.update(zip(gm.meta["tokencache"]["state_out"], outs[gm.meta["tokencache"]["num_outputs"]:]))
        return flops

    def uncached_flops(self, flops: dict[str, int]) -> int:
        """FLOPs of one uncached call: the captured graph's, else the first variant's."""
        if self.captured is None:
            return flops[self.schedule[0]]
        with torch.no_grad(), fake_tensor_mode():
            return count_graph_flops(self.captured, self.fake_examples())[1]

    def report(self, entry: ModelEntry) -> dict:
        flops = self.variant_flops()
        steps = self.schedule
        return {
            **self.report_base,
            "variants": {name: {"compiles": self.compiles[name], "calls": entry.calls[name],
                                "flops": flops.get(name), "cpu_matmul": self.matmul.get(name),
                                "state_in": list(gm.meta["tokencache"]["state_in"]),
                                "state_out": list(gm.meta["tokencache"]["state_out"])}
                         for name, gm in self.variants.items()},
            "schedule": list(steps),
            "flops_per_generation": sum(flops[v] for v in steps),
            "flops_uncached_generation": self.uncached_flops(flops) * len(steps),
            "cache_bytes": entry.cache_bytes(),
            "generations": entry.generations,
            "restarts": entry.restarts,
            "step": entry.step,
        }
