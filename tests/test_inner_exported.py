"""inner="onnxruntime" / inner="tensorrt": variants exported to ONNX with frozen weights and run
outside PyTorch, inside the PyTorch sampling loop. onnxruntime runs everywhere; the TensorRT
engine tests need TensorRT and a GPU and skip with the reason otherwise."""
import pytest
import torch
import torch._dynamo

import tokencache
from tokencache import introspect
from tokencache.exporters.tensorrt import TensorRTUnavailable, tensorrt_missing
from tiny_models import generate, noise, reference_case, rel_err

CASE = reference_case(image=16, hidden=64, depth=2, heads=4)
STEPS = 8
POLICIES = [dict(policy="toca", ratio=0.25, interval=3), dict(policy="fora", interval=3),
            dict(policy="taylorseer", interval=3, order=2)]
IDS = ["toca", "fora", "taylorseer"]


@pytest.mark.slow
@pytest.mark.parametrize("options", POLICIES, ids=IDS)
def test_onnxruntime_inner_matches_eager(options):
    """Same runtime, same schedule and state; only the variants run in onnxruntime. The cached
    generation equals the eager-inner one (fp32, 1e-4), and a second generation neither
    recompiles nor re-exports."""
    model, x0 = CASE.build(), noise(CASE)
    expected = generate(CASE, tokencache.compile(model, num_steps=STEPS, inner="eager", **options), x0, STEPS)
    compiled = tokencache.compile(model, num_steps=STEPS, inner="onnxruntime", **options)
    first = generate(CASE, compiled, x0, STEPS)
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = generate(CASE, compiled, x0, STEPS)
    assert rel_err(first, expected) <= 1e-4
    torch.testing.assert_close(second, first, rtol=1e-6, atol=1e-6)
    (graph,) = introspect.graphs(compiled)
    assert all(len(fn.executors) == 1 for fn in graph.compiled.values())
    report = tokencache.report(compiled)
    assert report["recompiles"] == 0 and all(v["compiles"] == 1 for v in report["variants"].values())


@pytest.mark.slow
def test_onnxruntime_inner_exports_each_model_instance_separately():
    """Weights are frozen into the ONNX files, but two instances of one architecture share the
    captured graph: each must run with its own weights."""
    a = CASE.build()
    torch.manual_seed(1)
    b = type(a)(image=16, hidden=64, depth=2, heads=4).eval()
    x0 = noise(CASE)
    options = dict(policy="toca", ratio=0.25, interval=3, num_steps=STEPS)
    ca, cb = (tokencache.compile(m, inner="onnxruntime", **options) for m in (a, b))
    got_a, got_b = generate(CASE, ca, x0, STEPS), generate(CASE, cb, x0, STEPS)
    want_a = generate(CASE, tokencache.compile(a, inner="eager", **options), x0, STEPS)
    want_b = generate(CASE, tokencache.compile(b, inner="eager", **options), x0, STEPS)
    assert rel_err(got_a, want_a) <= 1e-4 and rel_err(got_b, want_b) <= 1e-4
    assert rel_err(got_a, got_b) > 1e-2          # really two different models


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and a GPU are present here")
def test_tensorrt_inner_without_tensorrt_says_why():
    model, x0 = CASE.build(), noise(CASE)
    compiled = tokencache.compile(model, num_steps=STEPS, inner="tensorrt", policy="fora")
    with torch.no_grad(), pytest.raises(TensorRTUnavailable, match="inner='tensorrt' cannot run here: TensorRT"):
        CASE.call(compiled, x0, torch.full((2,), 999.0))     # with grad enabled the graph runs as captured


@pytest.mark.skipif(tensorrt_missing() is not None, reason=f"needs TensorRT and a GPU: {tensorrt_missing()}")
@pytest.mark.slow
@pytest.mark.parametrize("options", POLICIES[:2], ids=IDS[:2])
def test_tensorrt_inner_matches_eager(options):
    """fp32 engines (TF32 off): the cached generation on TensorRT equals the eager one."""
    model, x0 = CASE.build().cuda(), noise(CASE).cuda()
    expected = generate(CASE, tokencache.compile(model, num_steps=STEPS, inner="eager", **options), x0, STEPS)
    got = generate(CASE, tokencache.compile(model, num_steps=STEPS, inner="tensorrt", **options), x0, STEPS)
    assert rel_err(got, expected) <= 1e-3
