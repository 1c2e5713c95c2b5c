"""Which input carries the diffusion timestep, and what to say when none does.

The runtime tells steps, CFG calls and new generations apart by the timestep's value
(runtime/clock.py). `timestep_input="auto"` looks for the usual names (timestep, timesteps, t,
sigma, sigmas), then for the one floating-point user input with at most one dimension (a
timestep named otherwise, e.g. `noise_level`). A Python number as the timestep is not a graph
input at all: Dynamo bakes it in and compiles one graph per value, so no graph can see two steps;
the backend then runs the graph uncached and says why (scalar_timestep).
"""
from __future__ import annotations

import inspect
import re

import torch

from ..compat import frame_guards, original_module, traced_code
from .graph_inputs import GraphInput

AUTO_NAMES = ("timestep", "timesteps", "t", "sigma", "sigmas")
_LOCAL = re.compile(r"^L\['([^']+)'\]$")


def check_timestep_input(model, wanted: str) -> None:
    """ValueError when `timestep_input` names no argument of the model's forward()."""
    if wanted == "auto":
        return
    module = original_module(model)
    forward = getattr(module, "forward", None)
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return
    root = wanted.split(".")[0]
    if root in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    names = [n for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    raise ValueError(f"tokencache option 'timestep_input' names {wanted!r}, which is not an argument of "
                     f"{type(module).__name__}.forward(); its arguments: {', '.join(names)}")


def find_timestep(inputs: list[GraphInput], example_inputs, wanted: str) -> GraphInput | None:
    """The user input carrying the timestep: by name (`wanted`, or the usual names for "auto"), else
    for "auto" the only floating-point user tensor with at most one dimension."""
    users = [gi for gi in inputs if gi.kind == "user" and isinstance(example_inputs[gi.index], torch.Tensor)
             and example_inputs[gi.index].numel() >= 1]
    for name in (AUTO_NAMES if wanted == "auto" else (wanted,)):
        for gi in users:
            if _argument_name(gi.name) == name:
                return gi
    if wanted == "auto":
        small = [gi for gi in users if example_inputs[gi.index].dim() <= 1 and example_inputs[gi.index].is_floating_point()]
        if len(small) == 1:
            return small[0]
    return None


def _argument_name(name: str) -> str:
    """The forward() argument a graph input came from: a decorated forward (diffusers wraps many in
    `def wrapper(self, *args, **kwargs)`) hands its arguments on as `kwargs.<name>`."""
    return name[len("kwargs."):] if name.startswith("kwargs.") else name


def constant_locals() -> dict[str, str]:
    """Arguments of the frame being compiled that Dynamo specialised as Python constants (guard
    name -> guard kind); empty outside a Dynamo compilation."""
    found = {}
    for name, kind in frame_guards():
        match = _LOCAL.match(name)
        if match and kind in ("CONSTANT_MATCH", "EQUALS_MATCH"):
            found[match.group(1)] = kind
    return found


def frame_arguments() -> list[str] | None:
    """Argument names of the frame being compiled (None if unknown)."""
    code = traced_code()
    if code is None:
        return None
    if code.co_name.startswith("torch_dynamo_resume_in"):      # after a graph break: live locals only
        return None
    return list(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])


def scalar_timestep(wanted: str) -> str | None:
    """The timestep argument's name when the frame being compiled got it as a Python number."""
    constants = constant_locals()
    names = AUTO_NAMES if wanted == "auto" else (wanted.split(".")[0],)
    return next((n for n in names if n in constants), None)


def describe_missing(inputs: list[GraphInput], example_inputs, wanted: str) -> str:
    users = [gi.name for gi in inputs if gi.kind == "user"]
    asked = "looked for " + (", ".join(AUTO_NAMES) if wanted == "auto" else repr(wanted))
    return (f"tokencache found no timestep input ({asked}; the graph's inputs are {', '.join(users) or 'none'}): "
            "every call counts as one step and a generation as num_steps calls, so classifier-free guidance as "
            "separate calls, or generations of another length, get mixed up. Pass timestep_input='<argument "
            "name>' (a tensor), or run each generation inside `with tokencache.generation(model, steps=N):`")
