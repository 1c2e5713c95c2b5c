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


_WARM_START = """
import sys, torch
sys.path.insert(0, {tests!r})
import tokencache
from torch._dynamo.utils import counters
from tiny_models import generate, noise, reference_case
case = reference_case(image=8, patch=2, hidden=32, depth=1, heads=2)
compiled = tokencache.compile(case.build(), policy="fora", interval=2, num_steps=3)
generate(case, compiled, noise(case), steps=3)
print(dict(counters["inductor"]))
"""


def test_a_second_process_takes_the_variants_from_inductors_cache(tmp_path):
    """The variants are compiled at their first call, outside Dynamo's compile context; inductor's
    FX graph cache needs a ShapeEnv there, or it bypasses the cache and every process compiles every
    variant from scratch (compat.compile_fx). Two processes on one cache directory: the first
    misses, the second hits for each variant (fresh, reuse) and still compiles static shapes."""
    import ast
    import os
    import subprocess
    import sys
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    script = _WARM_START.format(tests=os.path.dirname(os.path.abspath(__file__)))
    runs = [ast.literal_eval(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                            check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert runs[0].get("fxgraph_cache_miss") == 2 and not runs[0].get("fxgraph_cache_bypass")
    assert runs[1].get("fxgraph_cache_hit") == 2 and not runs[1].get("fxgraph_cache_miss")
    code = "".join(p.read_text() for p in (tmp_path / "inductor").rglob("*.py"))
    assert "def call(" in code and "_size = " not in code          # no symbolic input sizes
