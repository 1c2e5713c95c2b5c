"""The GPU paths: inductor on CUDA and inner="cudagraphs" (variants captured once, replayed).

The CUDA tests skip with the reason on a machine without a GPU (CI); the CPU fallback of
inner="cudagraphs" runs everywhere.
"""
import pytest
import torch
import torch._dynamo

import tokencache
from tokencache import introspect
from tokencache.models.reference_dit import ReferenceDiT
from tiny_models import generate, noise, reference_case, rel_err

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
TOL = 1e-4
CASE = reference_case(image=16, hidden=64, depth=2, heads=4)


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 convolutions (cuDNN's default) would cost the 1e-4 tolerance its meaning."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _model(device: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ReferenceDiT(image=16, hidden=64, depth=2, heads=4).eval().to(device)


def _inputs(device: str, batch: int = 2):
    return noise(CASE, batch).to(device), (torch.arange(batch) % 10).to(device)


def _generate(model, x0, labels, steps: int = 10):
    """The shared Euler loop; the reference case passes these same labels (arange % 10)."""
    assert torch.equal(labels.cpu(), torch.arange(x0.shape[0]) % 10)
    return generate(CASE, model, x0, steps)


@needs_cuda
@pytest.mark.slow
@pytest.mark.parametrize("inner", ["inductor", "cudagraphs"])
@pytest.mark.parametrize("options", [dict(policy="none"), dict(policy="toca", ratio=1.0, attention="tokens"),
                                     dict(policy="fora", interval=1)], ids=["none", "toca-exact", "fora-1"])
def test_cuda_matches_uncompiled(inner, options):
    model = _model("cuda")
    x0, labels = _inputs("cuda")
    expected = _generate(model, x0, labels)
    compiled = tokencache.compile(model, num_steps=10, inner=inner, **options)
    assert rel_err(_generate(compiled, x0, labels), expected) <= TOL


@needs_cuda
@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(policy="toca", ratio=0.25, interval=3), dict(policy="fora", interval=3),
                                     dict(policy="taylorseer", interval=3, order=2)], ids=["toca", "fora", "taylorseer"])
def test_cudagraphs_replay_equals_inductor(options):
    """Same kernels, replayed from a graph: the cached generation must not change (state copied in,
    outputs cloned out), and a second generation replays without recompiling or recapturing."""
    model = _model("cuda")
    x0, labels = _inputs("cuda")
    plain = _generate(tokencache.compile(model, num_steps=10, inner="inductor", **options), x0, labels)
    graphs = tokencache.compile(model, num_steps=10, inner="cudagraphs", **options)
    first = _generate(graphs, x0, labels)
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = _generate(graphs, x0, labels)
    assert rel_err(first, plain) <= 1e-5
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    (graph,) = introspect.graphs(graphs)
    assert all(len(fn.graphs) == 1 for fn in graph.compiled.values())
    report = tokencache.report(graphs)
    assert report["recompiles"] == 0 and all(v["compiles"] == 1 for v in report["variants"].values())


@needs_cuda
@pytest.mark.slow
def test_cudagraphs_cfg_as_two_calls():
    """Two calls per step replay the same graphs twice: each call position keeps its own state."""
    model = _model("cuda")
    x0, labels = _inputs("cuda")
    options = dict(policy="fora", interval=3, num_steps=10, inner="cudagraphs")
    expected = _generate(tokencache.compile(model, **options), x0, labels)
    two_calls = tokencache.compile(_model("cuda"), **options)
    x = x0.clone()
    sigmas = torch.linspace(1.0, 0.0, 11, device="cuda")
    with torch.no_grad():
        for i in range(10):
            t = (sigmas[i] * 1000).expand(1).contiguous()
            cond, uncond = two_calls(x[:1], t, labels[:1]), two_calls(x[1:], t, labels[1:])
            x = x + (sigmas[i + 1] - sigmas[i]) * torch.cat([cond, uncond])
    assert rel_err(x, expected) <= TOL


@needs_cuda
@pytest.mark.slow
def test_cudagraphs_two_model_instances_alternating():
    """A graph bakes in its parameters' addresses: a second instance of the same architecture must
    get its own graph, never the first one's weights."""
    a, b = _model("cuda", seed=0), _model("cuda", seed=1)
    x0, labels = _inputs("cuda")
    options = dict(policy="fora", interval=2, num_steps=10)
    expected = [_generate(tokencache.compile(m, inner="eager", **options), x0, labels) for m in (a, b)]
    compiled = [tokencache.compile(m, inner="cudagraphs", **options) for m in (a, b)]
    xs = [x0.clone(), x0.clone()]
    sigmas = torch.linspace(1.0, 0.0, 11, device="cuda")
    with torch.no_grad():
        for i in range(10):
            t = (sigmas[i] * 1000).expand(2).contiguous()
            for j in (0, 1):
                xs[j] = xs[j] + (sigmas[i + 1] - sigmas[i]) * compiled[j](xs[j], t, labels)
    for got, want in zip(xs, expected):
        assert rel_err(got, want) <= TOL
    assert rel_err(xs[0], xs[1]) > 0.05         # the two models really differ


@pytest.mark.slow
def test_cudagraphs_on_cpu_warns_and_runs_inductor():
    model = _model("cpu")
    x0, labels = _inputs("cpu")
    expected = _generate(model, x0, labels, steps=4)
    compiled = tokencache.compile(model, policy="none", num_steps=4, inner="cudagraphs")
    with pytest.warns(UserWarning, match="inner='cudagraphs' needs CUDA inputs"):
        got = _generate(compiled, x0, labels, steps=4)
    assert rel_err(got, expected) <= TOL
