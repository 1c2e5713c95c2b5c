"""Runtime behaviour: schedules, zero recompiles, CFG layouts, new generations, shape changes."""
import subprocess
import sys

import pytest
import torch
import torch._dynamo

import tokencache
from tiny_models import ALL_CASES, Case, generate, noise, rel_err


def _fresh_and_cached(steps, interval, warmup=1):
    fresh = sum(1 for s in range(steps) if s < warmup or s % interval == 0)
    return fresh, steps - fresh


def test_two_generations_without_recompiles():
    case = ALL_CASES["diffusers_dit"]()
    model = case.build()
    compiled = tokencache.compile(model, policy="toca", ratio=0.25, interval=3, num_steps=20, inner="eager")
    x0 = noise(case)
    first = generate(case, compiled, x0, steps=20)            # compiles once here
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = generate(case, compiled, x0, steps=20)
        third = generate(case, compiled, x0, steps=20)
    torch.testing.assert_close(second, first, rtol=0, atol=0)   # each generation starts clean
    torch.testing.assert_close(third, first, rtol=0, atol=0)
    report = tokencache.report(compiled)
    fresh, cached = _fresh_and_cached(20, 3)
    assert report["variants"]["fresh"]["calls"] == 3 * fresh == 21
    assert report["variants"]["partial"]["calls"] == 3 * cached
    assert report["variants"]["fresh"]["compiles"] == 1 and report["variants"]["partial"]["compiles"] == 1
    assert report["recompiles"] == 0 and report["generations"] == 3
    assert report["schedule"][:4] == ["fresh", "partial", "partial", "fresh"]


def _cfg_generation(model, x0, two_calls: bool, guidance=3.0, steps=10):
    """Classifier-free guidance on one latent: [cond; uncond] as one batch, or as two calls per step."""
    x = x0.clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    labels = torch.tensor([3, 10])                                  # 10: the null class
    with torch.no_grad():
        for i in range(steps):
            t = (sigmas[i] * 1000).expand(1).contiguous()
            if two_calls:
                cond, uncond = model(x, t, labels[:1]), model(x, t, labels[1:])
            else:
                cond, uncond = model(torch.cat([x, x]), t.expand(2), labels).chunk(2)
            x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + guidance * (cond - uncond))
    return x


def test_cfg_as_two_calls_equals_one_doubled_batch():
    """Per-sample math of FORA is independent of batching; so the two layouts agree exactly only if
    the runtime keeps a separate cache per call position within a step."""
    case = ALL_CASES["reference"]()
    x0 = noise(case, batch=1)
    options = dict(policy="fora", interval=3, num_steps=10, inner="eager")
    expected = _cfg_generation(tokencache.compile(case.build(), **options), x0, two_calls=False)
    two_calls = tokencache.compile(case.build(), **options)
    assert rel_err(_cfg_generation(two_calls, x0, two_calls=True), expected) < 1e-5
    report = tokencache.report(two_calls)
    assert report["variants"]["fresh"]["calls"] == 2 * 4 and report["variants"]["reuse"]["calls"] == 2 * 6
    assert report["generations"] == 1
    uncached = _cfg_generation(case.build(), x0, two_calls=False)
    assert rel_err(expected, uncached) > 1e-3                       # caching did change something


def test_interrupted_generation_then_new_one():
    case = ALL_CASES["reference"]()
    options = dict(policy="fora", interval=3, num_steps=10, inner="eager")
    clean = tokencache.compile(case.build(), **options)
    expected = generate(case, clean, noise(case, seed=2))
    compiled = tokencache.compile(case.build(), **options)
    generate(case, compiled, noise(case, seed=1), stop=5)        # abandoned after 5 steps
    got = generate(case, compiled, noise(case, seed=2))           # timestep goes back up: reset
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert tokencache.report(compiled)["generations"] == 2


class _IntegerLevel(torch.nn.Module):
    """The reference DiT behind an integer noise level that tokencache cannot recognise as the timestep."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, level, y):
        return self.model(x, level.float(), y)


def test_explicit_new_generation():
    case = ALL_CASES["reference"]()
    compiled = tokencache.compile(_IntegerLevel(case.build()), policy="fora", interval=3, num_steps=10, inner="eager")
    counting = Case("int_level", None, case.latent, lambda m, x, t: m(x, t.long(), torch.arange(x.shape[0]) % 10))
    x0 = noise(case)
    with pytest.warns(UserWarning, match="no timestep input"):          # counting calls only, and saying so
        first = generate(counting, compiled, x0)
    generate(counting, compiled, x0, stop=4)
    tokencache.new_generation(compiled)
    torch.testing.assert_close(generate(counting, compiled, x0), first, rtol=0, atol=0)
    assert tokencache.report(compiled)["timestep_input"] is None


def test_batch_size_change_between_generations():
    case = ALL_CASES["reference"]()
    options = dict(policy="toca", ratio=0.25, interval=3, num_steps=10, inner="eager")
    compiled = tokencache.compile(case.build(), **options)
    small, large = noise(case, batch=2, seed=3), noise(case, batch=4, seed=4)
    a = generate(case, compiled, small)
    b = generate(case, compiled, large)
    generate(case, compiled, small, stop=3)                       # interrupted, then a new one of the other size
    c = generate(case, compiled, large)
    d = generate(case, compiled, small)
    torch.testing.assert_close(c, b, rtol=0, atol=0)
    torch.testing.assert_close(d, a, rtol=0, atol=0)
    expected_large = generate(case, tokencache.compile(case.build(), **options), large)
    torch.testing.assert_close(b, expected_large, rtol=0, atol=0)
    assert tokencache.report(compiled)["recompiles"] == 1        # one graph per batch size


def test_backend_entry_point_without_import():
    code = (
        "import sys, torch\n"
        "from tokencache.models.reference_dit import ReferenceDiT\n"
        "del sys.modules['tokencache']\n"
        "[sys.modules.pop(k) for k in list(sys.modules) if k.startswith('tokencache')]\n"
        "m = ReferenceDiT().eval()\n"
        "c = torch.compile(m, backend='tokencache', options={'policy': 'fora', 'inner': 'eager', 'num_steps': 2})\n"
        "with torch.no_grad(): c(torch.randn(2, 4, 16, 16), torch.tensor([999.0, 999.0]), torch.tensor([1, 2]))\n"
        "import tokencache\n"
        "print(tokencache.report(c)['policy'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("fora")


def test_same_module_compiled_twice_reports_each():
    case = ALL_CASES["reference"]()
    model = case.build()
    fora = tokencache.compile(model, policy="fora", num_steps=10, inner="eager")
    toca = tokencache.compile(model, policy="toca", num_steps=10, inner="eager")
    x0 = noise(case)
    generate(case, fora, x0)
    generate(case, toca, x0)
    assert tokencache.report(fora)["policy"] == "fora" and tokencache.report(toca)["policy"] == "toca"
    assert tokencache.report(fora)["variants"]["reuse"]["calls"] == 6


def test_timestep_views_of_the_schedule_are_read_without_a_device_read(monkeypatch):
    """On a GPU, float(t) of a device timestep waits for every queued kernel, at every call. A
    sampler that passes views of its schedule (diffusers pipelines: `t.expand(batch)` of an element
    of scheduler.timesteps) has them read from one host copy of the schedule (runtime/host_scalar.py);
    a timestep computed from it is read from the device, once per call. The device path runs here on
    CPU tensors (HOST_DEVICES emptied); the clock must decide exactly as with direct reads."""
    from tokencache.runtime import host_scalar
    scalars = host_scalar.HOST_SCALARS
    case = ALL_CASES["diffusers_dit"]()
    x0, schedule = noise(case), torch.linspace(1000.0, 100.0, 10)

    def run(timestep_of):
        torch._dynamo.reset()
        compiled = tokencache.compile(case.build(), policy="fora", interval=3, num_steps=10, inner="eager")
        outs = []
        with torch.no_grad():
            for _ in range(2):
                x = x0.clone()
                for t in schedule:                     # iterating a tensor yields views of it
                    x = x - 0.1 * case.call(compiled, x, timestep_of(t, x.shape[0]))
                outs.append(x)
        report = tokencache.report(compiled)
        return outs, {name: v["calls"] for name, v in report["variants"].items()}, report["generations"]

    direct = run(lambda t, b: t.expand(b).contiguous())
    monkeypatch.setattr(host_scalar, "HOST_DEVICES", ())
    reads, copies = scalars.device_reads, scalars.mirrored
    viewed = run(lambda t, b: t.expand(b))
    assert scalars.device_reads == reads and scalars.mirrored == copies + 1     # one copy, both generations
    assert viewed[1:] == direct[1:] == ({"fresh": 8, "reuse": 12}, 2)
    for got, want in zip(viewed[0], direct[0]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    computed = run(lambda t, b: t.expand(b) * 1.0)          # no view of the schedule: read per call
    assert scalars.device_reads == reads + 20 and computed[1:] == direct[1:]
    with torch.no_grad():
        schedule.mul_(0.5)                          # an in-place write to the schedule: copied again
    assert scalars.value(schedule[3].expand(2)) == float(schedule[3]) and scalars.mirrored == copies + 2
    assert scalars.value(schedule[2:][3].expand(2)) == float(schedule[5])      # a view of a view
