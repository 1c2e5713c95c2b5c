"""The default inner="inductor" path in the fast lane: one tiny model, compiled for real."""
import torch

import tokencache
from tiny_models import generate, noise, reference_case, rel_err


def test_inductor_default_path_on_a_tiny_model():
    """toca at K = N through inductor (the default inner backend, its CPU passes included: oneDNN
    linears, in-place cache updates) gives the uncompiled images, and compiles each variant once."""
    case = reference_case(image=8, patch=2, hidden=32, depth=1, heads=2)
    model = case.build()
    x0 = noise(case)
    compiled = tokencache.compile(model, policy="toca", ratio=1.0, attention="tokens", interval=2, num_steps=3)
    assert rel_err(generate(case, compiled, x0, steps=3), generate(case, model, x0, steps=3)) <= 1e-4
    report = tokencache.report(compiled)
    assert report["fallback_reason"] is None and report["config"]["inner"] == "inductor"
    assert {name: v["compiles"] for name, v in report["variants"].items()} == {"fresh": 1, "partial": 1}
