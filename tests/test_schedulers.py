"""Real diffusers schedulers driving a compiled tiny DiT in a plain sampling loop (no generation
block: the runtime's step rules alone must tell steps, repeated timesteps and generations apart).
Each must run without error, close to the uncached model, with caching active and two
generations counted as two."""
import warnings

import diffusers
import pytest
import torch

import tokencache
from tiny_models import ALL_CASES, noise, rel_err

STEPS = 6
SCHEDULERS = {
    "euler": lambda: diffusers.EulerDiscreteScheduler(),
    "flow_match_euler": lambda: diffusers.FlowMatchEulerDiscreteScheduler(),
    "dpm_solver_multistep": lambda: diffusers.DPMSolverMultistepScheduler(),
    # DDIM clips its x0 estimate to [-1, 1] by default; on a random-weight model that estimate is
    # far outside, and clipping turns a 0.3 % feature difference into a different image
    "ddim": lambda: diffusers.DDIMScheduler(clip_sample=False),
    "heun": lambda: diffusers.HeunDiscreteScheduler(),                  # t0, t1, t1, t2, t2, ...
    "kdpm2": lambda: diffusers.KDPM2DiscreteScheduler(),                # 2n-1 distinct timesteps
    "unipc": lambda: diffusers.UniPCMultistepScheduler(),
    "euler_ancestral": lambda: diffusers.EulerAncestralDiscreteScheduler(),
    "kdpm2_ancestral": lambda: diffusers.KDPM2AncestralDiscreteScheduler(),   # repeated timesteps + noise
}


@torch.no_grad()
def _sample(case, model, scheduler, x0):
    scheduler.set_timesteps(STEPS)
    x = x0 * getattr(scheduler, "init_noise_sigma", 1.0)
    generator = torch.Generator().manual_seed(7)                     # ancestral noise, the same every run
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = case.call(model, model_in, t.expand(x.shape[0]))
        extra = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
        x = scheduler.step(out, t, x, **extra).prev_sample
    return x


def _model_timesteps(make) -> int:
    scheduler = make()
    scheduler.set_timesteps(STEPS)
    return int(torch.unique_consecutive(scheduler.timesteps).numel())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_diffusers_scheduler(name):
    make = SCHEDULERS[name]
    case = ALL_CASES["reference"]()
    model = case.build()
    x0 = noise(case)
    expected = _sample(case, model, make(), x0)
    compiled = tokencache.compile(model, policy="toca", ratio=0.25, interval=2, inner="eager",
                                  num_steps=_model_timesteps(make))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="tokencache")         # no tokencache warning at all
        first = _sample(case, compiled, make(), x0)
        second = _sample(case, compiled, make(), x0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)            # each generation starts clean
    assert torch.isfinite(first).all()
    assert rel_err(first, expected) < 0.03
    report = tokencache.report(compiled)
    assert report["generations"] == 2
    assert report["variants"]["partial"]["calls"] > 0
    scheduler = make()
    scheduler.set_timesteps(STEPS)
    assert sum(v["calls"] for v in report["variants"].values()) == 2 * len(scheduler.timesteps)
