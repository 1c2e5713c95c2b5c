"""The diffusers family matrix (issue 19): tiny random-weight builds of real diffusers transformer
classes (tokencache/models/zoo.py), offline, each through a short denoising loop under
torch.compile(backend="tokencache", inner="eager"). Checks per class:

    none_exact        policy="none" reproduces the uncompiled model (relative error <= 1e-4)
    kn_exact          toca with ratio=1.0, attention="tokens" (K = N) reproduces it
    interval1_exact   toca with interval=1 (every step fresh) reproduces it
    toca_saves        toca saves >= 40 % of a generation's FLOPs with >= 1 token-wise region
    fora_saves        fora saves >= 40 % of a generation's FLOPs
    no_recompiles     two generations under error_on_recompile, the second equal to the first (the
                      first may recompile where plain torch.compile does, RECOMPILES_UNCACHED)

The exactness checks also hold when tokencache falls back (the model then runs uncached); whether
caching is active is what the *_saves checks test. A (class, check) pair that fails on today's
compiler is listed in XFAIL with the reason observed; the xfail is strict, so when a fix makes it
pass the test fails until its entry is removed.

Almost all the time goes into Dynamo tracing each configuration (a few seconds per class and
setting; the steps themselves take milliseconds), so checks share runs: toca_saves and
no_recompiles use one run. The default set is the two runs per class that carry most (K = N
exactness, toca with two generations) on the classes issue 19 names; the other checks, and the
extended set of classes, are marked slow (`-m "not slow"` leaves them out).
"""
from __future__ import annotations

import pytest
import torch

import tokencache
from tokencache.models import zoo

STEPS = 6          # interval 3: fresh, cached, cached, fresh, cached, cached
TOL = 1e-4
MIN_SAVING = 0.40

FAST = ["SD3", "Flux", "Flux2", "QwenImage", "HunyuanVideo", "CogVideoX", "Wan", "LTX", "Mochi", "AuraFlow",
        "Chroma", "DiT", "PixArt"]
SLOW = ["SD3.5", "Sana", "Lumina2", "Allegro", "Latte", "HunyuanDiT", "CogView4", "PRX", "Cosmos", "SkyReelsV2",
        "HunyuanVideo15", "ZImage", "LTX2", "OmniGen"]
CHECKS = ["none_exact", "kn_exact", "interval1_exact", "toca_saves", "fora_saves", "no_recompiles"]
SLOW_CHECKS = {"none_exact", "interval1_exact", "fora_saves"}      # one Dynamo trace each

# (zoo entry, check) -> the failure observed on the compiler this file was written against. Remove an
# entry when its check passes (strict xfail reports it).
# Observed on 2026-12-07 (torch 2.13.0, diffusers 0.42.1).
XFAIL: dict[tuple[str, str], str] = {
}

# Classes that plain torch.compile already recompiles within one generation (a frame after a graph
# break called with two shapes: Mochi's RMSNorm on the image then the text tokens). Their first
# generation may recompile; the later ones may not. test_recompiles_uncached_are_the_models checks
# that each entry still recompiles without tokencache.
RECOMPILES_UNCACHED = {"Mochi"}

# The compiled runs each check needs; a run is shared by the checks of one class.
RUNS = {
    "none": dict(policy="none"),
    "kn": dict(policy="toca", ratio=1.0, attention="tokens", interval=3),
    "interval1": dict(policy="toca", interval=1),
    "toca": dict(policy="toca"),
    "fora": dict(policy="fora"),
}


class Run:
    """What one compiled configuration produced: outputs of one or two generations, the report, or
    the exception (kept, so that each check fails with the cause rather than a secondary error)."""

    def __init__(self, outputs=(), error=None, report=None, report_error=None):
        self.outputs, self.error = list(outputs), error
        self.report, self.report_error = report, report_error

    def failure(self, need_report: bool) -> str | None:
        for what, err in (("crash", self.error), ("report() raised", self.report_error if need_report else None)):
            if err is not None:
                return f"{what}: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
        return None

    def fallback(self) -> str:
        return self.report["fallback_reason"] if self.report else "(no report)"


_cache: dict[str, object] = {"name": None}


def _class_state(name: str) -> dict:
    """Model, reference output and finished runs of the class being tested; the parametrisation
    keeps a class's checks together, so one class is held at a time."""
    if _cache["name"] != name:
        entry = zoo.ENTRIES[name]
        model = entry.build()
        _cache.update(name=name, entry=entry, model=model, ref=zoo.denoise(model, entry, STEPS), runs={})
    return _cache


def _run(name: str, which: str) -> Run:
    state = _class_state(name)
    if which not in state["runs"]:
        torch._dynamo.reset()
        entry, model = state["entry"], state["model"]
        compiled = torch.compile(model, backend="tokencache", dynamic=False,
                                 options=dict(RUNS[which], num_steps=STEPS, inner="eager"))
        run = Run()
        try:                          # failures are recorded: each check of this run reports them
            # the toca run also serves the recompile check: two generations (three when the
            # timestep counts up, see _assert_no_recompiles)
            for gen in range((3 if entry.t_map is zoo.FLIP else 2) if which == "toca" else 1):
                strict = which == "toca" and (gen > 0 or name not in RECOMPILES_UNCACHED)
                with torch._dynamo.config.patch(error_on_recompile=strict):
                    run.outputs.append(zoo.denoise(compiled, entry, STEPS))
        except Exception as e:
            run.error = e
        try:
            run.report = tokencache.report(compiled)
        except Exception as e:
            run.report_error = e
        state["runs"][which] = run
    return state["runs"][which]


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def _assert_exact(name: str, which: str):
    run = _run(name, which)
    assert run.failure(need_report=False) is None, run.failure(need_report=False)
    err = _rel(run.outputs[0], _class_state(name)["ref"])
    assert err <= TOL, f"relative error {err:.1e} > {TOL:g} (fallback: {run.fallback()})"


def _assert_saves(name: str, which: str):
    run = _run(name, which)
    assert run.failure(need_report=True) is None, run.failure(need_report=True)
    rep = run.report
    assert rep["fallback_reason"] is None, f"fallback: {rep['fallback_reason']}"
    fraction = rep["flops_per_generation"] / rep["flops_uncached_generation"]
    assert fraction <= 1 - MIN_SAVING, f"FLOP fraction {fraction:.2f}: saves less than {MIN_SAVING:.0%}"
    if which == "toca":
        assert any(r["token_wise"] for r in rep["regions"]), (
            "no token-wise region: " + "; ".join(sorted({f"{r['kind']}: {r['reason']}" for r in rep["regions"]})))


def _assert_no_recompiles(name: str):
    """error_on_recompile is the test (report()["recompiles"] also counts the graphs of graph
    breaks); the last generation must equal the one before it (no state leaks between them). A
    model whose timestep counts up (t = 0 -> 1: Lumina 2, Z-Image) shows its direction only at
    the first generation's second call (clock rule 4, runtime/clock.py), and that generation's
    first steps then run fresh: its second and third generations are compared."""
    run = _run(name, "toca")
    assert run.failure(need_report=False) is None, run.failure(need_report=False)
    err = _rel(run.outputs[-1], run.outputs[-2])
    assert err <= TOL, f"the second generation differs from the first (relative error {err:.1e})"


CHECK_FUNCTIONS = {
    "none_exact": lambda n: _assert_exact(n, "none"),
    "kn_exact": lambda n: _assert_exact(n, "kn"),
    "interval1_exact": lambda n: _assert_exact(n, "interval1"),
    "toca_saves": lambda n: _assert_saves(n, "toca"),
    "fora_saves": lambda n: _assert_saves(n, "fora"),
    "no_recompiles": _assert_no_recompiles,
}


def _params():
    for name in FAST + SLOW:
        for check in CHECKS:
            marks = [pytest.mark.slow] if name in SLOW or check in SLOW_CHECKS else []
            if (name, check) in XFAIL:
                marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[(name, check)]))
            yield pytest.param(name, check, marks=marks, id=f"{name}-{check}")


@pytest.mark.parametrize("name", sorted(RECOMPILES_UNCACHED))
def test_recompiles_uncached_are_the_models(name):
    """Plain torch.compile (no tokencache) recompiles these classes in one generation too."""
    torch._dynamo.reset()
    entry = zoo.ENTRIES[name]
    plain = torch.compile(entry.build(), backend="eager", dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(Exception, match="Recompil"):
        zoo.denoise(plain, entry, STEPS)


@pytest.mark.parametrize("name,check", list(_params()))
def test_family(name, check):
    CHECK_FUNCTIONS[check](name)


def test_xfail_entries_name_real_cases():
    """A typo in XFAIL would silently stop tracking a failure."""
    for name, check in XFAIL:
        assert name in FAST + SLOW and check in CHECKS, (name, check)
