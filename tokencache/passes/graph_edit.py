"""Small graph-editing helpers shared by the passes.

Every variant graph keeps the captured graph's placeholders (user inputs and parameters, in
order) and appends *state* placeholders; it returns the captured outputs followed by state
outputs. Which state goes in and out is recorded in `gm.meta["tokencache"]`, so passes stay
pure GraphModule -> GraphModule functions and the runtime reads the wiring off the result.
"""
from __future__ import annotations

import re
import sys

import torch.fx as fx

from ..compat import keeps_in_dead_code_elimination, mark_sourceless
from .checks import check_graph, checks_enabled


def copy_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A structural copy that keeps node names and (shallow-copied) meta, without deep-copying
    parameters or fake tensors."""
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    new = fx.GraphModule(gm, graph)
    for node in new.graph.nodes:
        if node.op == "placeholder":
            mark_sourceless(node, only_if_missing=True)   # compile_fx reads a source on every placeholder
    info = gm.meta.get("tokencache", {})
    new.meta["tokencache"] = {"num_outputs": info.get("num_outputs", len(outputs_of(gm))),
                              "state_in": list(info.get("state_in", [])),
                              "state_out": list(info.get("state_out", [])),
                              "host_in": list(info.get("host_in", [])),
                              "state_init": dict(info.get("state_init", {}))}
    return new


def wiring(gm: fx.GraphModule) -> dict:
    return gm.meta["tokencache"]


def state_name(key: str) -> str:
    """A valid node name for a state key such as 'cache:transformer_blocks.3.ff'."""
    return "state_" + re.sub(r"\W", "_", key)


def node_by_name(gm: fx.GraphModule, name: str) -> fx.Node:
    for n in gm.graph.nodes:
        if n.name == name:
            return n
    raise KeyError(f"node {name!r} not in graph")


def add_state_input(gm: fx.GraphModule, key: str, init: tuple | None = None) -> fx.Node:
    """`init` = (shape, dtype): the runtime may start this state at zeros (cold start)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    hosts = len(gm.meta["tokencache"]["host_in"])
    last = placeholders[-1 - hosts]            # state placeholders stay in front of host inputs
    with gm.graph.inserting_after(last):
        node = gm.graph.placeholder(state_name(key))
    mark_sourceless(node)
    gm.meta["tokencache"]["state_in"].append(key)
    if init is not None:
        gm.meta["tokencache"]["state_init"][key] = init
    return node


def add_host_input(gm: fx.GraphModule, name: str) -> fx.Node:
    """A per-step value the runtime computes on the host (a step distance, coefficients);
    host inputs come after all state inputs."""
    last = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    with gm.graph.inserting_after(last):
        node = gm.graph.placeholder(f"host_{name}")
    mark_sourceless(node)
    gm.meta["tokencache"]["host_in"].append(name)
    return node


def output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in reversed(gm.graph.nodes) if n.op == "output")


def outputs_of(gm: fx.GraphModule) -> list:
    value = output_node(gm).args[0]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def add_state_outputs(gm: fx.GraphModule, items: dict[str, fx.Node]) -> None:
    out = output_node(gm)
    values = outputs_of(gm) + list(items.values())
    out.args = (tuple(values),)
    gm.meta["tokencache"]["state_out"].extend(items)


def replace_uses_outside(node: fx.Node, new: fx.Node, inside: set[str]) -> None:
    """Point every user of `node` that is not in `inside` (and not `new` itself) at `new`."""
    for user in list(node.users):
        if user.name not in inside and user is not new:
            user.replace_input_with(node, new)


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    """Every pass ends here: dead code removed, the graph linted (and, in tests and debug mode,
    its wiring checked: passes/checks.py), the module's code regenerated."""
    gm.graph.eliminate_dead_code(is_impure_node=keeps_in_dead_code_elimination)
    gm.graph.lint()
    if checks_enabled():
        check_graph(gm, after=f"pass {sys._getframe(1).f_code.co_name}()")
    gm.recompile()
    return gm
