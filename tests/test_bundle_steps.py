"""The bundle runners step by the same rules as the PyTorch runtime (one Session): a warm-up call
does not poison the next generation, repeated timesteps (Heun, DPM2) do not crash, and a
generation block gives the step count."""
import warnings

import pytest
import torch

import tokencache
from tokencache.runtime.bundle_runner import OnnxBundleRunner, bind_like
from test_generations import _heun_like
from tiny_models import ALL_CASES, generate, noise, rel_err

OPTIONS = dict(policy="toca", ratio=0.25, interval=3, num_steps=6, inner="eager")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch._dynamo.reset()
    case = ALL_CASES["reference"]()
    model = case.build()
    compiled = tokencache.compile(model, **OPTIONS)
    generate(case, compiled, noise(case), steps=1)
    return case, model, tokencache.export(compiled, tmp_path_factory.mktemp("steps") / "bundle", progress=False)


def test_bundle_warm_up_does_not_poison_the_next_generation(exported):
    case, model, bundle = exported
    x0 = noise(case, seed=3)
    expected = generate(case, bind_like(OnnxBundleRunner(bundle), model, tuple_output=False), x0, steps=6)
    runner = OnnxBundleRunner(bundle)
    call = bind_like(runner, model, tuple_output=False)
    with torch.no_grad():
        case.call(call, torch.full_like(x0, float("nan")), torch.full((2,), 1000.0))
    got = generate(case, call, x0, steps=6)
    assert rel_err(got, expected) < 1e-6 and torch.isfinite(got).all()
    assert runner.session.clock.generations == 2


def test_bundle_second_order_sampler(exported):
    case, model, bundle = exported
    x0 = noise(case, seed=4)
    runner = OnnxBundleRunner(bundle)
    got = _heun_like(case, bind_like(runner, model, tuple_output=False), x0)
    torch._dynamo.reset()
    expected = _heun_like(case, tokencache.compile(model, **OPTIONS), x0)
    assert rel_err(got, expected) < 5e-3          # onnxruntime's rounding can flip a near-tied top-K choice
    assert rel_err(got, _heun_like(case, model, x0)) < 0.05
    assert runner.session.calls["partial"] > 0 and runner.session.clock.generations == 1


def test_bundle_generation_block(exported):
    case, model, bundle = exported
    runner = OnnxBundleRunner(bundle)
    call = bind_like(runner, model, tuple_output=False)
    with pytest.warns(UserWarning, match="runs past its 6 steps"):
        generate(case, call, noise(case), steps=9)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="tokencache")
        with tokencache.generation(runner, steps=9):                 # the step count of this generation
            generate(case, call, noise(case), steps=9)
    assert sum(runner.session.calls.values()) == 9                   # the block had its own session
