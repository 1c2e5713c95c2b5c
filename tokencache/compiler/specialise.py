"""Graphs Dynamo captured with symbolic shapes, made static again.

Without `dynamic=False`, Dynamo compiles a frame with static shapes first and, when a later call
changes a size (or an int argument, or a stride), recompiles it with *automatic dynamic shapes*:
the backend then gets SymInt example inputs and FakeTensors of sizes like (2, s0, 64). A backend
cannot ask Dynamo for a static recompile: the `dynamic` flag is applied by torch.compile around
each call (`backend_ctx_ctor`, the hook a backend could use to patch Dynamo's config, is dropped
when torch.compile is given `options`), and after the first recompile Dynamo's frame state marks
the size dynamic for good. So tokencache specialises the graph itself:

 - SymInt/SymFloat inputs that no tensor shape depends on (a stride, an int used in arithmetic):
   the graph is static where it matters; the scalars are passed through at every call and caching
   applies as usual (`symbolic_shapes` is False).
 - Symbolic tensor shapes: `SpecialisingRuntime` builds, per distinct set of input shapes and int
   inputs seen at call time, a static copy of the graph (`specialise`: fake-tensor propagation
   with the concrete sizes, every integer the graph computes from them folded into a literal) and
   a regular runtime for it. Each shape gets its own cached variants, as a recompile with
   `dynamic=False` would. If specialising fails, the graph runs uncached with a reason that says
   to pass `dynamic=False`.
"""
from __future__ import annotations

import threading

import torch
import torch.fx as fx
from torch.fx.node import map_arg

from ..compat import copy_placeholder_source, fake_tensor_mode, keeps_in_dead_code_elimination

_SCALARS = (torch.SymInt, torch.SymFloat, torch.SymBool)


def concrete(value):
    """A SymInt/SymFloat example input as the Python number it stands for."""
    if isinstance(value, _SCALARS):
        hint = value.node.hint
        return hint if hint is not None else value.node.pytype(value.node.expr)
    return value


def _symbolic(value) -> bool:
    if isinstance(value, _SCALARS):
        return not value.node.is_constant() if hasattr(value.node, "is_constant") else True
    return False


def symbolic_shapes(gm: fx.GraphModule) -> bool:
    """Whether any tensor of the graph has a symbolic size (not merely symbolic scalars or strides)."""
    for node in gm.graph.nodes:
        value = node.meta.get("example_value")
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, torch.Tensor) and any(_symbolic(d) for d in v.shape):
                return True
    return False


def shape_key(args) -> tuple:
    """What a static specialisation depends on: tensor shapes and integer inputs."""
    return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a if isinstance(a, (int, bool)) else None
                 for a in args)


class _Propagate(fx.Interpreter):
    """Runs the graph on fake tensors of concrete sizes, recording every node's value."""

    def __init__(self, gm, values: dict):
        super().__init__(gm)
        self.values = values

    def run_node(self, node):
        result = super().run_node(node)
        self.values[node] = result
        return result


def _foldable(value):
    """The literal to put in place of a node computing `value`, or None."""
    if isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, (torch.Size, tuple, list)) and value and all(type(v) is int for v in value):
        return tuple(value)
    return None


def specialise(gm: fx.GraphModule, args: list) -> fx.GraphModule:
    """A static copy of `gm` for these concrete inputs: tensor sizes concrete in every node's
    `example_value`, integer computations on sizes folded into literals (so passes see literal
    reshape sizes), placeholders (and their Dynamo sources) unchanged. Scalars that come from
    float inputs stay computed at run time."""
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, mapping)
    graph.output(out)
    static = fx.GraphModule(gm, graph)
    for old, new in mapping.items():
        if old.op == "placeholder":
            copy_placeholder_source(old, new)
    values: dict[fx.Node, object] = {}
    mode = fake_tensor_mode()
    fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode, torch.no_grad():
        _Propagate(static, values).run(*fake)
    placeholders = [n for n in static.graph.nodes if n.op == "placeholder"]
    # scalars derived from float inputs vary per call: never fold them
    floating = {p for p, a in zip(placeholders, args) if isinstance(a, float)}
    for node in static.graph.nodes:
        if node.op != "placeholder" and any(a in floating for a in node.all_input_nodes):
            floating.add(node)
    for node in list(static.graph.nodes):
        if node.op == "output":
            continue
        value = values.get(node)
        node.meta["example_value"] = value
        if node in floating:
            continue
        literal = _foldable(value)
        if literal is None:
            continue
        for user in list(node.users):
            if user.op == "output":
                continue
            user.args = map_arg(user.args, lambda a: literal if a is node else a)
            user.kwargs = map_arg(user.kwargs, lambda a: literal if a is node else a)
    static.graph.eliminate_dead_code(is_impure_node=keeps_in_dead_code_elimination)   # sizes now literals
    static.graph.lint()
    static.recompile()
    if symbolic_shapes(static):
        raise RuntimeError("sizes are still symbolic after specialisation")
    return static


class SpecialisingRuntime:
    """The callable Dynamo gets for a graph with symbolic tensor shapes: one static runtime per
    input shape (`build(static_gm, args)` makes it), built at the first call with that shape."""

    def __init__(self, gm: fx.GraphModule, build, fallback):
        self.gm = gm
        self.build = build              # (static gm, concrete args) -> runtime
        self.fallback = fallback        # (reason) -> runtime running the symbolic graph uncached
        self.runtimes: dict[tuple, object] = {}
        self.failed: object | None = None
        self._lock = threading.Lock()

    def runtime_for(self, args):
        key = shape_key(args)
        runtime = self.runtimes.get(key)
        if runtime is None:
            with self._lock:
                runtime = self.runtimes.get(key)
                if runtime is None:
                    runtime = self.runtimes[key] = self._make(list(args))
        return runtime

    def _make(self, args):
        if self.failed is not None:
            return self.failed
        try:
            static = specialise(self.gm, args)
        except Exception as e:     # never the model: run the captured graph as it is
            self.failed = self.fallback(f"the graph was captured with dynamic shapes and could not be made static "
                                        f"({type(e).__name__}: {e}); compile with dynamic=False")
            return self.failed
        return self.build(static, args)

    def __call__(self, *args):
        return self.runtime_for(args)(*args)
