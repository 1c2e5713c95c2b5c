"""Checks a pass's result in tests and debug mode: the graph lints and its state wiring
(`gm.meta["tokencache"]`, graph_edit.py) matches its placeholders and outputs. Run after every pass
(graph_edit.finish and the pipeline), so a broken graph is reported by the pass that broke it
rather than at export or at run time. On with TOKENCACHE_CHECK_PASSES=1 (tests/conftest.py sets it).
"""
from __future__ import annotations

import os

import torch.fx as fx


class PassCheckError(AssertionError):
    """A pass returned a graph that is malformed or whose wiring does not match it."""


def checks_enabled() -> bool:
    return os.environ.get("TOKENCACHE_CHECK_PASSES", "") not in ("", "0")


def check_graph(gm: fx.GraphModule, after: str) -> None:
    """Raise PassCheckError naming `after` (the pass) when the graph or its wiring is broken."""
    try:
        gm.graph.lint()
    except Exception as e:
        raise PassCheckError(f"after {after}: the graph does not lint: {e}") from e
    problem = wiring_problem(gm)
    if problem:
        raise PassCheckError(f"after {after}: {problem}")


def wiring_problem(gm: fx.GraphModule) -> str | None:
    """What is wrong with the graph's state wiring; None when it matches."""
    info = gm.meta.get("tokencache")
    if info is None:
        return 'gm.meta["tokencache"] is missing (make the copy with graph_edit.copy_module)'
    state_in, state_out, host_in = info["state_in"], info["state_out"], info["host_in"]
    for name, keys in (("state_in", state_in), ("state_out", state_out), ("host_in", host_in)):
        if len(set(keys)) != len(keys):
            return f"{name} lists a key twice: {keys}"
    if not set(info["state_init"]) <= set(state_in):
        return f"state_init names state that is no input: {sorted(set(info['state_init']) - set(state_in))}"
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    extra = len(state_in) + len(host_in)
    if extra > len(placeholders):
        return f"{extra} state and host inputs declared, {len(placeholders)} placeholders"
    tail = placeholders[len(placeholders) - extra:]
    if not all(n.startswith("state_") for n in tail[:len(state_in)]) \
            or not all(n.startswith("host_") for n in tail[len(state_in):]):
        return (f"the last placeholders should be {len(state_in)} state_* then {len(host_in)} host_* inputs, "
                f"found {tail}")
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    value = output.args[0]
    outputs = len(value) if isinstance(value, (list, tuple)) else 1
    if outputs != info["num_outputs"] + len(state_out):
        return (f"{outputs} graph outputs, but {info['num_outputs']} model outputs + {len(state_out)} state "
                "outputs declared")
    return None
