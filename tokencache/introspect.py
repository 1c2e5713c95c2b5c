"""Look inside what tokencache built for a compiled model: for tests, debugging and tools.

    graph = tokencache.introspect.graphs(compiled)[0]   # one per graph Dynamo handed over
    graph.variants["fresh"]                               # the variant graphs, as the passes built them
    graph.state()                                         # this thread's cache state: key -> tensor
    outputs, state = graph.run_variant("fresh")           # one variant, uncompiled, on the captured inputs
    tokencache.introspect.packed_weight_packs()           # how often weights were packed (onednn_packed)

`report()` is the summary users read; this is the level below it, kept small so that tests need
not reach into the runtime's internals (which can then change without touching them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx


@dataclass(frozen=True)
class GraphView:
    """One graph tokencache compiled for a model (a model split by graph breaks has several)."""
    _runtime: object
    _entry: object

    @property
    def variants(self) -> dict[str, fx.GraphModule]:
        """Variant name -> its graph, as the policy and the pipeline's "variant" stage built it."""
        return self._runtime.variants

    @property
    def compiled(self) -> dict:
        """Variant name -> what the inner backend made of it (only variants that ran)."""
        return self._runtime.compiled

    @property
    def schedule(self) -> list[str]:
        return self._runtime.schedule

    @property
    def example_inputs(self) -> list:
        """The graph's inputs as captured (parameters are the live ones)."""
        return self._runtime.example_inputs

    @property
    def timestep_index(self) -> int | None:
        """Position of the timestep among the graph's inputs (None: no timestep input)."""
        timestep = self._runtime.timestep
        return timestep.index if timestep is not None else None

    def state(self, call: int = 0) -> dict[str, torch.Tensor]:
        """This thread's cache state (key -> tensor) for the `call`-th call of a step (0; 1 for the
        second of two calls per step under classifier-free guidance). The live dict, not a copy."""
        return self._entry.states.get(call, {})

    def run_variant(self, name: str, inputs: list | None = None, state: dict | None = None, step: int = 0,
                    fresh_steps: list[int] = (0,)) -> tuple[list, dict[str, torch.Tensor]]:
        """Run variant `name` uncompiled: on `inputs` (default: the captured ones) and `state` (state
        key -> tensor; missing keys start at zeros where the variant allows it), as if at `step` of a
        generation whose fresh steps so far were `fresh_steps`. Returns (model outputs, new state)."""
        runtime = self._runtime
        args = runtime.assemble(name, list(runtime.example_inputs if inputs is None else inputs),
                                dict(state or {}), step, list(fresh_steps))
        wiring = runtime.variants[name].meta["tokencache"]
        out = list(runtime.variants[name](*args))
        return out[:wiring["num_outputs"]], dict(zip(wiring["state_out"], out[wiring["num_outputs"]:]))


def graphs(compiled) -> list[GraphView]:
    """The graphs tokencache compiled for this model, oldest first (empty before its first call)."""
    from .runtime.registry import runtimes_of
    return [GraphView(runtime, entry) for runtime, entry in runtimes_of(compiled)]


def packed_weight_packs() -> int:
    """How many times a weight was packed for cpu_matmul="onednn_packed" in this process."""
    from .runtime.packed_weights import PACKED
    return PACKED.packs


def reset_state() -> None:
    """Forget every model tokencache has seen in this process: the registry that maps models to
    their runtimes, the backend shared per configuration, the step links between a model's graphs,
    the packed weight copies. For tests, between tests, together with torch._dynamo.reset(), so no
    test sees what an earlier one compiled."""
    from . import _BACKENDS
    from .runtime import registry, steplink
    from .runtime.packed_weights import PACKED

    _BACKENDS.clear()
    registry.clear()
    steplink.clear()
    PACKED.clear()


__all__ = ["GraphView", "graphs", "packed_weight_packs", "reset_state"]
