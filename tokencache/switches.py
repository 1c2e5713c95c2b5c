"""Switches for ablations and debugging: turn one pass of the pipeline, or one choice inside a pass
or an op, off for the code that runs inside `with switches(...)` (this thread and context only).

Not a user option: the defaults are what tokencache does, and every switch only removes an
optimisation, so results stay exact. benchmarks/bench_ablation.py measures what each one is worth.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Switches:
    disabled: frozenset[str] = frozenset()  # pipeline passes not run, by name (passes/pipeline.py PASS_NAMES)
    fuse_gelu: bool = True                  # onednn_linear fuses a GELU that follows a linear into its GEMM
    small_rows_transposed: bool = True      # tokencache::linear runs 2-4-row inputs as W @ x^T (ops/linear.py)
    early_gather: bool = True               # partial gathers rows before the region input's row-local prelude


_CURRENT: contextvars.ContextVar[Switches] = contextvars.ContextVar("tokencache_switches", default=Switches())


def current() -> Switches:
    return _CURRENT.get()


@contextlib.contextmanager
def switches(**changes):
    """`with switches(disabled={"inplace_cache"}, fuse_gelu=False): ...` (an unknown switch raises
    TypeError; the pipeline raises ValueError for an unknown pass name when it runs)."""
    if "disabled" in changes:
        changes["disabled"] = frozenset(changes["disabled"])
    token = _CURRENT.set(dataclasses.replace(_CURRENT.get(), **changes))
    try:
        yield
    finally:
        _CURRENT.reset(token)
