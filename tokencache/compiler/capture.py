"""Where a graph came from: Dynamo's compile id, the frame it traced, and why it ended.

A model that Dynamo cannot trace in one piece reaches the backend as several graphs (graph
breaks: `.item()`, data-dependent control flow, unsupported calls; or a frame Dynamo skips, whose
callees are then compiled as their own frames). `describe()` records, at compile time, what
report() needs to list the breaks with Dynamo's own reasons and to tell a recompile (the same
frame compiled again for other shapes, guards or module instances) from another piece of the
model: the compile id `frame/recompile`, the frame's function, and the reason its graph ended
(`graph_break` False: the frame returned normally), and whether the frame is the model's own
forward (`entry`) or a later piece of it.
"""
from __future__ import annotations

import threading

import torch.fx as fx

from ..compat import dynamo_compile_id, dynamo_counter, graph_end_reason, traced_code

_COUNTERS = ("graph_break", "unimplemented")   # where Dynamo counts its break explanations
_SEEN: dict[str, dict] = {name: {} for name in _COUNTERS}   # those counters at the previous backend call
_LOCK = threading.Lock()


def _new_break_messages() -> list[str]:
    """Graph-break explanations Dynamo counted since the previous backend call (its counter keys
    carry the full text: "Data-dependent branching\\n  Explanation: ..."; a break Dynamo handles
    by restarting the frame, such as `.item()` in a loop, counts as "unimplemented")."""
    found = []
    with _LOCK:
        for name in _COUNTERS:
            now = dynamo_counter(name)
            before = _SEEN[name]
            _SEEN[name] = now
            found += [k for k, v in now.items() if v > before.get(k, 0) and k not in found]
    return found


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text and text.strip() else ""


def _is_entry(code) -> bool | None:
    """Whether the frame being compiled is the forward() of the model torch.compile wraps (the
    model's first graph); False for a resume function after a graph break or a submodule's own
    frame (their graphs follow the model's step clock, runtime/steplink.py); None if unknown."""
    from ..compat import calling_model

    model = calling_model()
    forward = getattr(type(model), "forward", None) if model is not None else None
    if code is None or forward is None:
        return None
    return getattr(forward, "__code__", None) is code


def frame_module(inputs, example_inputs) -> str | None:
    """The path, in the compiled model, of the module whose forward this graph was traced from
    (graph_inputs.frame_owner); None if unknown."""
    from ..compat import calling_model
    from .graph_inputs import frame_owner

    return frame_owner(inputs, example_inputs, calling_model())


def describe(gm: fx.GraphModule) -> dict:
    """JSON-serialisable facts about the capture of `gm` (empty values where Dynamo says nothing)."""
    compile_id = dynamo_compile_id(gm)
    frame_id = getattr(compile_id, "frame_id", None)
    recompile = getattr(compile_id, "frame_compile_id", None)
    code = traced_code()
    reason = graph_end_reason(gm)
    messages = _new_break_messages()
    info = {
        "entry": _is_entry(code),
        "compile_id": str(compile_id) if compile_id is not None else None,
        "frame_id": frame_id,
        "recompile": recompile,
        "frame": f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno})" if code else None,
        "graph_break": None,
    }
    if reason is not None and getattr(reason, "graph_break", False):
        stack = list(getattr(reason, "user_stack", None) or [])
        where = stack[-1] if stack else None
        text = reason.reason or ""
        # Dynamo's counter text explains the break better than the terse compile reason
        detail = next((m for m in messages if _first_line(m) and _first_line(m) in text), None) \
            or (messages[-1] if messages and len(_first_line(text).split()) < 4 else text)
        info["graph_break"] = {
            "reason": _first_line(detail) or _first_line(text),
            "detail": detail.strip()[:600],
            "at": f"{where.filename.rsplit('/', 1)[-1]}:{where.lineno} in {where.name}" if where else None,
        }
    return info
