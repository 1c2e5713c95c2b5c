"""Issue 14's observed failures, one test each (all failed before the runtime's step rules,
generation handles, per-thread state and lifecycle fixes): warm-up calls, repeated timesteps,
generations longer than num_steps, Python-number and unrecognised timesteps, threads, gradients,
report() after dtype changes, memory, many compilations of one class, strict errors."""
import gc
import threading
import warnings
import weakref

import pytest
import torch
import torch._dynamo

import tokencache
from tokencache import introspect
from tiny_models import ALL_CASES, Case, generate, noise, rel_err

OPTIONS = dict(policy="toca", ratio=0.25, interval=3, num_steps=10, inner="eager")


def _case_and_expected(seed=0, steps=10, **options):
    case = ALL_CASES["reference"]()
    x0 = noise(case, seed=seed)
    clean = tokencache.compile(case.build(), **{**OPTIONS, **options})
    return case, x0, generate(case, clean, x0, steps=steps)


@pytest.mark.parametrize("warm_up", ["nan_call", "random_call", "one_step_run", "lower_timestep_run"])
def test_warm_up_does_not_poison_the_next_generation(warm_up):
    """Observed 1: a warm-up call at the first timestep was taken for a CFG call of the generation's
    first step, whose cached steps then reused the warm-up's features (error 0.029, or NaN)."""
    case, x0, expected = _case_and_expected()
    compiled = tokencache.compile(case.build(), **OPTIONS)
    t0 = torch.full((2,), 1000.0)
    with torch.no_grad():
        if warm_up == "nan_call":
            case.call(compiled, torch.full_like(x0, float("nan")), t0)
        elif warm_up == "random_call":
            case.call(compiled, torch.randn_like(x0), t0)
        elif warm_up == "one_step_run":
            generate(case, compiled, torch.randn_like(x0), steps=1)
        else:                                    # a 1-step run of another sampler, at a lower timestep
            case.call(compiled, torch.randn_like(x0), torch.full((2,), 500.0))
    got = generate(case, compiled, x0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    report = tokencache.report(compiled)
    assert report["generations"] == 2 and report["variants"]["partial"]["calls"] == 6


def _heun_like(case, model, x0, steps=6):
    """Calls at [t0, t1, t1, t2, t2, ...] on different latents, as Heun/DPM2 do."""
    x = x0.clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            t = (sigmas[i] * 1000).expand(2).contiguous()
            d = case.call(model, x, t)
            x_pred = x + (sigmas[i + 1] - sigmas[i]) * d
            if i + 1 < steps:
                t1 = (sigmas[i + 1] * 1000).expand(2).contiguous()
                x = x + (sigmas[i + 1] - sigmas[i]) * 0.5 * (d + case.call(model, x_pred, t1))
            else:
                x = x_pred
    return x


@pytest.mark.parametrize("policy", ["toca", "fora", "taylorseer", "duca", "clusca"])
def test_second_order_sampler_repeated_timesteps(policy):
    """Observed 2: Heun, KDPM2 and DPM2 crashed ('needs state ... that no earlier step produced')."""
    case = ALL_CASES["reference"]()
    x0 = noise(case)
    options = dict(OPTIONS, policy=policy, num_steps=6, **({"clusters": 4} if policy == "clusca" else {}))
    compiled = tokencache.compile(case.build(), **options)
    got = _heun_like(case, compiled, x0)
    again = _heun_like(case, compiled, x0)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    assert rel_err(got, _heun_like(case, case.build(), x0)) < 0.05
    report = tokencache.report(compiled)
    assert report["generations"] == 2
    cached = sum(v["calls"] for name, v in report["variants"].items() if name != "fresh")
    assert cached > 0 and report["variants"]["fresh"]["calls"] + cached == 2 * 11


def test_more_steps_than_num_steps_is_one_generation_and_warns_once():
    """Observed 3: 15 steps with num_steps=10 were split into 2 generations silently, and cached
    steps ran after step 10."""
    case = ALL_CASES["reference"]()
    compiled = tokencache.compile(case.build(), **OPTIONS)
    with pytest.warns(UserWarning, match="runs past its 10 steps") as caught:
        got = generate(case, compiled, noise(case), steps=15)
    assert len([w for w in caught if "runs past" in str(w.message)]) == 1
    report = tokencache.report(compiled)
    assert report["generations"] == 1
    assert report["variants"]["fresh"]["calls"] == 4 + 5 and report["variants"]["partial"]["calls"] == 6
    assert torch.isfinite(got).all()


def test_generation_block_gives_the_step_count():
    """num_steps need not be repeated: the block's step count sets the schedule."""
    case = ALL_CASES["reference"]()
    compiled = tokencache.compile(case.build(), **{**OPTIONS, "num_steps": 50})
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # no "runs past" warning
        with tokencache.generation(compiled, steps=15):
            generate(case, compiled, noise(case), steps=15)
    report = tokencache.report(compiled)
    assert report["variants"]["fresh"]["calls"] == 5 and report["variants"]["partial"]["calls"] == 10
    assert report["generations"] == 1 and report["cache_bytes"] == 0      # state freed with the block


class _FloatTimestep(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, timestep: float, y):
        return self.model(x, torch.full((x.shape[0],), timestep), y)


def test_python_float_timestep_warns_and_stays_correct():
    """Observed 4: a Python-float timestep compiled one graph per value, and the second generation
    reused the first's caches (error 0.085) without a word."""
    case = ALL_CASES["reference"]()
    model = _FloatTimestep(case.build())
    floats = Case("float_t", None, case.latent, lambda m, x, t: m(x, float(t[0]), torch.arange(x.shape[0]) % 10))
    x0 = noise(case)
    expected = generate(floats, model, x0, steps=5)
    compiled = tokencache.compile(model, **{**OPTIONS, "num_steps": 5})
    with pytest.warns(UserWarning, match="'timestep' is a Python number"):
        first = generate(floats, compiled, x0, steps=5)
    second = generate(floats, compiled, x0, steps=5)
    assert rel_err(first, expected) < 1e-5 and rel_err(second, expected) < 1e-5
    assert "Python number" in tokencache.report(compiled)["fallback_reason"]


class _NoiseLevel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, noise_level, y):
        return self.model(x, noise_level, y)


def test_timestep_under_another_name_is_found():
    """Observed 5: a timestep argument named otherwise (noise_level) made every call a step, and two
    5-step generations bled into each other (error 0.021)."""
    case = ALL_CASES["reference"]()
    x0 = noise(case)
    renamed = Case("noise_level", None, case.latent, lambda m, x, t: m(x, t, torch.arange(x.shape[0]) % 10))
    expected = generate(renamed, tokencache.compile(_NoiseLevel(case.build()), **OPTIONS), x0, steps=5)
    torch._dynamo.reset()
    compiled = tokencache.compile(_NoiseLevel(case.build()), **OPTIONS)
    generate(renamed, compiled, x0, steps=5)
    second = generate(renamed, compiled, x0, steps=5)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    report = tokencache.report(compiled)
    assert report["timestep_input"] == "noise_level" and report["generations"] == 2


class _Decorated(torch.nn.Module):
    """A forward behind a `(self, *args, **kwargs)` wrapper, as diffusers decorates HunyuanVideo's,
    Flux's and others' (apply_lora_scale): Dynamo names the inputs `kwargs.timestep`, ..."""
    def __init__(self, model):
        super().__init__()
        self.model = model

    def _inner(self, hidden_states, timestep, class_labels, guidance):
        # a second 1-d float input (HunyuanVideo's guidance): the timestep is not the only candidate
        return self.model(hidden_states, timestep * (1 + 0 * guidance), class_labels)

    def forward(self, *args, **kwargs):
        return self._inner(*args, **kwargs)


def test_timestep_passed_through_a_kwargs_wrapper_is_found():
    case = ALL_CASES["reference"]()
    x0 = noise(case)
    by_name = Case("decorated", None, case.latent,
                   lambda m, x, t: m(hidden_states=x, timestep=t, class_labels=torch.arange(x.shape[0]) % 10,
                                     guidance=torch.full((x.shape[0],), 3.5)))
    compiled = tokencache.compile(_Decorated(case.build()), **OPTIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)            # no "found no timestep input"
        first = generate(by_name, compiled, x0, steps=5)
        second = generate(by_name, compiled, x0, steps=5)
    torch.testing.assert_close(second, first, rtol=0, atol=0)  # the generations did not bleed
    report = tokencache.report(compiled)
    assert report["timestep_input"] == "kwargs.timestep" and report["generations"] == 2


def test_unknown_timestep_input_is_a_value_error():
    """Observed 5: timestep_input="nonexistent_arg" was accepted silently."""
    case = ALL_CASES["reference"]()
    with pytest.raises(ValueError, match="nonexistent_arg.*hidden_states, timestep, class_labels"):
        tokencache.compile(case.build(), timestep_input="nonexistent_arg")
    compiled = torch.compile(case.build(), backend="tokencache", options={"timestep_input": "nonexistent_arg"})
    with pytest.raises(Exception, match="nonexistent_arg"):
        generate(case, compiled, noise(case), steps=1)


@pytest.mark.parametrize("explicit", [False, True])
def test_two_threads_on_one_compiled_model_are_isolated(explicit):
    """Observed 6: two threads on one compiled model: one crashed, the other's output was off."""
    case = ALL_CASES["reference"]()
    model = case.build()
    seeds = (1, 2)
    expected = {s: generate(case, tokencache.compile(case.build(), **OPTIONS), noise(case, seed=s)) for s in seeds}
    compiled = tokencache.compile(model, **OPTIONS)
    generate(case, compiled, noise(case), steps=1)          # compile before the threads start
    barrier, results, errors = threading.Barrier(2), {}, []

    def run(seed):
        try:
            class Lockstep(torch.nn.Module):                # the threads alternate call by call
                def __call__(self, *args):
                    barrier.wait(timeout=60)
                    return compiled(*args)
            with tokencache.generation(compiled, steps=10) if explicit else _nothing():
                results[seed] = generate(case, Lockstep(), noise(case, seed=seed))
        except Exception as e:             # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for s in seeds:
        torch.testing.assert_close(results[s], expected[s], rtol=0, atol=0)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_grad_enabled_warns_and_runs_uncached_with_autograd():
    """Observed 7: with grad enabled the output had requires_grad=False and backward() failed."""
    case = ALL_CASES["reference"]()
    model = case.build()
    compiled = tokencache.compile(model, **OPTIONS)
    x = noise(case).requires_grad_()
    t = torch.full((2,), 1000.0)
    with pytest.warns(UserWarning, match="gradients enabled"):
        out = case.call(compiled, x, t)
    assert out.requires_grad
    out.square().mean().backward()
    expected_grad = torch.autograd.grad(case.call(model, x, t).square().mean(), x)[0]
    torch.testing.assert_close(x.grad, expected_grad)
    assert "inference" in tokencache.report(compiled)["fallback_reason"]


def test_report_after_dtype_change():
    """Observed 8: report() after model.to(torch.bfloat16) raised (FLOPs re-ran float32 examples)."""
    case = ALL_CASES["reference"]()
    model = case.build()
    compiled = tokencache.compile(model, **OPTIONS)
    generate(case, compiled, noise(case), steps=2)
    before = tokencache.report(compiled)["flops_per_generation"]
    model.to(torch.bfloat16)
    assert tokencache.report(compiled)["flops_per_generation"] == before
    generate(case, compiled, noise(case).bfloat16(), steps=2)
    report = tokencache.report(compiled)
    assert report["recompiles"] == 1 and report["flops_per_generation"] == before


@pytest.mark.parametrize("how", ["tokencache.compile", "torch.compile"])
def test_deleting_the_model_frees_weights_and_caches(how):
    """Observed 9: all 6 models compiled with tokencache.compile kept their weights alive after
    `del model, compiled` (82 MB each); the runtime held parameters in its example inputs."""
    case = ALL_CASES["reference"]()
    weights, caches = [], []
    for i in range(6):
        model = case.build()
        if how == "tokencache.compile":
            compiled = tokencache.compile(model, **OPTIONS)
        else:
            compiled = torch.compile(model, backend="tokencache", options=OPTIONS, dynamic=False)
        generate(case, compiled, noise(case, seed=i), steps=2)
        (graph,) = introspect.graphs(compiled)
        weights.append(weakref.ref(model.blocks[0].mlp.fc1.weight))
        caches += [weakref.ref(t) for t in graph.state().values()]
        del model, compiled, graph
    gc.collect()
    assert [w() is None for w in weights] == [True] * 6
    assert caches and all(c() is None for c in caches)


def test_dynamo_reset_frees_the_caches():
    """Observed 9: the registry kept cache state alive after torch._dynamo.reset()."""
    case = ALL_CASES["reference"]()
    model = case.build()
    compiled = tokencache.compile(model, **OPTIONS)
    generate(case, compiled, noise(case), steps=2)
    (graph,) = introspect.graphs(compiled)
    caches = [weakref.ref(t) for t in graph.state().values()]
    del graph
    torch._dynamo.reset()
    gc.collect()
    assert caches and all(c() is None for c in caches)
    assert introspect.graphs(compiled) == []


def test_many_compilations_of_one_class_stay_cached():
    """Observed 10: the 9th tokencache.compile of one model class ran uncached, with no warning."""
    case = ALL_CASES["reference"]()
    for i in range(12):
        compiled = tokencache.compile(case.build(), **OPTIONS)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            generate(case, compiled, noise(case), steps=2)
        assert tokencache.report(compiled)["variants"]["partial"]["calls"] == 1, i


def test_a_call_dynamo_runs_eagerly_is_reported():
    """When Dynamo gives up (here: its recompile limit), tokencache says so instead of going silent."""
    case = ALL_CASES["reference"]()
    with torch._dynamo.config.patch(recompile_limit=1):
        first = tokencache.compile(case.build(), **OPTIONS)
        generate(case, first, noise(case), steps=1)
        other = tokencache.compile(case.build(), **{**OPTIONS, "policy": "fora"})
        with pytest.warns(UserWarning, match="recompile limit"):
            generate(case, other, noise(case), steps=2)
        with pytest.raises(ValueError, match="recompile limit"):
            tokencache.report(other)


def test_strict_raises_token_cache_error_itself():
    """Observed 11: strict=True raised BackendCompilerFailed around a TokenCacheError tokencache did
    not export, whose message said 'Running it uncached'."""
    from tiny_models import sana_case
    case = sana_case()
    compiled = tokencache.compile(case.build(), **{**OPTIONS, "strict": True})
    with pytest.raises(tokencache.TokenCacheError, match="conv2d") as info:
        generate(case, compiled, noise(case), steps=1)
    assert "uncached" not in str(info.value)
