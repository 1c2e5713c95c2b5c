"""FLOP reductions of whole generations on the DiT-S-shaped config (counted, not timed)."""
import pytest
import torch
import torch.nn.functional as F

import tokencache
from tokencache.runtime.flops import flop_counter
from tiny_models import generate, noise, reference_case

DIT_S = dict(image=32, patch=2, channels=4, hidden=384, depth=12, heads=6)   # 256 tokens


@pytest.fixture(scope="module")
def dit_s():
    case = reference_case(**DIT_S)
    model = case.build()
    x0 = noise(case)
    with flop_counter() as counter:
        generate(case, model, x0, steps=20, stop=1)      # every uncached step costs the same
    return case, model, x0, 20 * counter.get_total_flops()


def _generation_flops(dit_s, **options):
    case, model, x0, _ = dit_s
    compiled = tokencache.compile(model, num_steps=20, inner="eager", **options)
    generate(case, compiled, x0, steps=2)
    return tokencache.report(compiled)


def test_uncached_count_matches_the_model(dit_s):
    report = _generation_flops(dit_s, policy="none")
    assert report["flops_per_generation"] == pytest.approx(dit_s[3], rel=1e-3)


def test_toca_quarter_tokens_below_half(dit_s):
    report = _generation_flops(dit_s, policy="toca", ratio=0.25, interval=3, attention="reuse")
    assert report["flops_per_generation"] < 0.5 * dit_s[3]


def test_fora_interval3_below_40_percent(dit_s):
    report = _generation_flops(dit_s, policy="fora", interval=3)
    assert report["flops_per_generation"] < 0.4 * dit_s[3]


def test_token_attention_costs_more_than_reuse(dit_s):
    reuse = _generation_flops(dit_s, policy="toca", ratio=0.25, interval=3, attention="reuse")
    tokens = _generation_flops(dit_s, policy="toca", ratio=0.25, interval=3, attention="tokens")
    assert reuse["flops_per_generation"] < tokens["flops_per_generation"] < dit_s[3]


def test_attention_on_cpu_is_counted():
    """torch 2.13's FlopCounterMode has no formula for the CPU SDPA kernel (it counted 0)."""
    q, k, v = torch.randn(2, 3, 8, 16), torch.randn(2, 3, 10, 16), torch.randn(2, 3, 10, 4)
    with flop_counter() as counter:
        F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 2 * 2 * 3 * 8 * 10 * (16 + 4)
