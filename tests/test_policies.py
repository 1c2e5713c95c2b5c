"""Policies beyond ToCa (DuCa, TaylorSeer) and varying ratios: degenerate cases, exactness of the
forecast, static schedules, zero recompiles, FLOPs and cache memory."""

import pytest
import torch
import torch.nn as nn

import tokencache
from tokencache import introspect
from tokencache.ops import token_ops
from tokencache.policies.taylorseer import host_taylor_inputs
from tiny_models import ALL_CASES, generate, noise, rel_err


@pytest.mark.parametrize("options", [dict(policy="taylorseer", interval=1, order=3),
                                     dict(policy="clusca", interval=1, clusters=4),
                                     dict(policy="duca", interval=1),
                                     dict(policy="duca", interval=1, aggressive="skip"),
                                     dict(policy="toca", interval=1, step_weight=0.5, layer_weight=0.3)])
def test_degenerate_settings_equal_the_model(options):
    case = ALL_CASES["pixart"]()
    model = case.build()
    x0 = noise(case)
    got = generate(case, tokencache.compile(model, num_steps=10, inner="eager", **options), x0)
    assert rel_err(got, generate(case, model, x0)) <= 1e-4


def test_duca_aggressive_step_is_fora_reuse():
    """Given the same fresh caches, DuCa's aggressive graph computes exactly FORA's reuse graph."""
    case = ALL_CASES["reference"]()
    model = case.build()
    x0 = noise(case)
    duca = tokencache.compile(model, policy="duca", interval=3, num_steps=10, inner="eager")
    fora = tokencache.compile(model, policy="fora", interval=3, num_steps=10, inner="eager")
    generate(case, duca, x0, stop=1)
    generate(case, fora, x0, stop=1)
    outs = []
    for compiled, name in ((duca, "aggressive"), (fora, "reuse")):
        graph = introspect.graphs(compiled)[0]
        _, state = graph.run_variant("fresh")
        later = list(graph.example_inputs)
        later[graph.timestep_index] = torch.full_like(later[graph.timestep_index], 700.0)
        outs.append(graph.run_variant(name, later, state, step=2)[0][0])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_duca_schedule_alternates():
    case = ALL_CASES["reference"]()
    compiled = tokencache.compile(case.build(), policy="duca", interval=4, num_steps=9, inner="eager")
    generate(case, compiled, noise(case), steps=9)
    assert tokencache.report(compiled)["schedule"] == ["fresh", "partial", "aggressive", "partial"] * 2 + ["fresh"]


def test_random_selection_is_reproducible_and_shared_by_the_batch():
    state = token_ops.seed_generator(torch.zeros(4, 64, 8), seed=3)
    s1 = token_ops.random_scores(token_ops.next_random(state), 4)
    s2 = token_ops.random_scores(token_ops.next_random(state), 4)
    assert torch.equal(s1, s2) and torch.equal(s1[0], s1[3])
    assert 0 <= s1.min() and s1.max() < 1 and s1[0].std() > 0.2        # spread like uniform (std 0.29)
    case = ALL_CASES["reference"]()
    model = case.build()
    compiled = tokencache.compile(model, policy="duca", interval=3, num_steps=10, inner="eager", seed=5)
    a = generate(case, compiled, noise(case))
    torch.testing.assert_close(generate(case, compiled, noise(case)), a, rtol=0, atol=0)


def _newton_forecast(fresh_steps, values, order, at):
    factors = torch.zeros(order + 1, *values[0].shape, dtype=torch.float64)
    for i in range(len(fresh_steps)):
        host = host_taylor_inputs("fresh", fresh_steps[i], fresh_steps[:i + 1], order)
        factors = token_ops.taylor_update(values[i], factors, host["taylor_dist"].double(), host["taylor_valid"].double())
    coef = host_taylor_inputs("forecast", at, fresh_steps, order)["taylor_coef"]
    return token_ops.taylor_predict(factors, coef.double(), torch.float64)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_forecast_is_exact_for_polynomials_of_the_step(order):
    g = torch.Generator().manual_seed(order)
    coeffs = torch.randn(order + 1, 3, 5, generator=g, dtype=torch.float64)
    feature = lambda s: sum(coeffs[j] * float(s) ** j for j in range(order + 1))
    fresh_steps = [0, 1, 2, 5, 8, 11][: order + 2]                        # uneven spacing on purpose
    values = [feature(s) for s in fresh_steps]
    for at in (fresh_steps[-1] + 1, fresh_steps[-1] + 2):
        predicted = _newton_forecast(fresh_steps, values, order, at)
        assert (predicted - feature(at)).abs().max() / feature(at).abs().max() <= 1e-5


def test_forecast_of_lower_order_history_uses_zeros():
    """With one fresh step only, the forecast is the stored output (higher orders are zero)."""
    value = torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(_newton_forecast([0], [value], 3, at=2), value)


class PolyDiT(nn.Module):
    """Blocks with a linear feed-forward on a hidden state that is quadratic in the timestep: the
    cached region's output is a quadratic polynomial of the step, which order 2 forecasts exactly."""

    def __init__(self, dim=16, depth=2):
        super().__init__()
        self.base, self.u, self.v = (nn.Parameter(torch.randn(1, 9, dim)) for _ in range(3))
        self.blocks = nn.ModuleList(nn.ModuleDict({"ff": nn.Sequential(nn.Linear(dim, 32), nn.Linear(32, dim))})
                                    for _ in range(depth))

    def forward(self, hidden_states, timestep):
        tau = (timestep / 1000)[:, None, None]
        h = self.base + self.u * tau + self.v * tau * tau + 0 * hidden_states.mean()
        out = 0
        for block in self.blocks:
            out = out + block["ff"](h)
        return out


def test_taylorseer_exact_on_polynomial_region():
    model = PolyDiT().eval()
    x = torch.zeros(2, 1)
    compiled = tokencache.compile(model, policy="taylorseer", order=2, interval=3, warmup=1, num_steps=10,
                                inner="eager")
    sigmas = torch.linspace(1, 0, 11)
    with torch.no_grad():
        for i in range(10):
            t = (sigmas[i] * 1000).expand(2).contiguous()
            got, want = compiled(x, t), model(x, t)
            if i >= 7:          # after three fresh steps (0, 3, 6) the quadratic is known exactly
                assert rel_err(got, want) <= 1e-5, i
    report = tokencache.report(compiled)
    assert report["fallback_reason"] is None and report["variants"]["forecast"]["calls"] == 6


@pytest.mark.parametrize("options", [dict(policy="fora"), dict(policy="toca"), dict(policy="duca"),
                                     dict(policy="duca", aggressive="skip"), dict(policy="taylorseer", order=2),
                                     dict(policy="toca", step_weight=0.4, layer_weight=0.2),
                                     dict(policy="clusca", clusters=4),
                                     dict(policy="duca", selection="vnorm")])
def test_zero_recompiles_over_two_generations(options):
    case = ALL_CASES["diffusers_dit"]()
    compiled = tokencache.compile(case.build(), num_steps=12, interval=3, inner="eager", **options)
    x0 = noise(case)
    first = generate(case, compiled, x0, steps=12)
    with torch._dynamo.config.patch(error_on_recompile=True):
        torch.testing.assert_close(generate(case, compiled, x0, steps=12), first, rtol=0, atol=0)
        generate(case, compiled, x0, steps=12)
    report = tokencache.report(compiled)
    assert report["recompiles"] == 0 and all(v["compiles"] <= 1 for v in report["variants"].values())
    assert sum(v["calls"] for v in report["variants"].values()) == 36


def test_step_buckets_are_few_variants_compiled_once():
    case = ALL_CASES["reference"]()
    compiled = tokencache.compile(case.build(), policy="toca", num_steps=20, interval=3, ratio=0.3,
                                  step_weight=0.5, layer_weight=0.4, ratio_buckets=3, inner="eager")
    generate(case, compiled, noise(case), steps=20)
    report = tokencache.report(compiled)
    partials = {k: v for k, v in report["variants"].items() if k.startswith("partial")}
    assert len(partials) == 3 and all(v["calls"] > 0 for v in partials.values())
    early, late = report["schedule"][1], report["schedule"][-1]
    assert partials[early]["flops"] > partials[late]["flops"]            # more tokens early (w_s > 0)
    mlp = [r["computed_tokens"] for r in report["regions"] if r["kind"] == "feed_forward"]
    assert mlp[0] > mlp[1]                                                # and in the first block (w_l > 0)


@pytest.mark.parametrize("dtype, size", [("float32", 4), ("float16", 2), ("bfloat16", 2)])
def test_cache_bytes_match_the_tensors_held(dtype, size):
    case = ALL_CASES["reference"]()
    compiled = tokencache.compile(case.build(), policy="taylorseer", order=2, cache_dtype=dtype,
                                  num_steps=10, inner="eager")
    generate(case, compiled, noise(case), stop=4)
    report = tokencache.report(compiled)
    held = introspect.graphs(compiled)[0].state()
    assert all(t.dtype == getattr(torch, dtype) for t in held.values())
    expected = sum(3 * r["tokens"] * 2 * 64 * size for r in report["regions"])   # (order+1, B, N, C)
    assert report["cache_bytes"] == expected == sum(t.numel() * t.element_size() for t in held.values())


@pytest.mark.slow      # 27 s: DiT-S-sized graphs, every policy
def test_flop_reductions_per_policy():
    from test_flops import DIT_S
    from tiny_models import reference_case
    case = reference_case(**DIT_S)
    model = case.build()
    x0 = noise(case)
    ratios = {}
    for name, options in {"taylorseer": dict(policy="taylorseer", interval=3, warmup=1), "duca": dict(policy="duca", interval=3),
                          "duca_skip": dict(policy="duca", interval=3, aggressive="skip"),
                          "toca_buckets": dict(policy="toca", interval=3, step_weight=0.5)}.items():
        compiled = tokencache.compile(model, num_steps=20, inner="eager", **options)
        generate(case, compiled, x0, steps=2)
        report = tokencache.report(compiled)
        ratios[name] = report["flops_per_generation"] / report["flops_uncached_generation"]
    assert ratios["taylorseer"] < 0.4 and ratios["duca"] < 0.45 and ratios["duca_skip"] < 0.45
    assert ratios["toca_buckets"] < 0.5


def _blobs(seed=0, per=20, clusters=4, dim=8):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * 10
    truth = torch.arange(clusters).repeat_interleave(per)[torch.randperm(clusters * per, generator=g)]
    x = centres[truth] + 0.1 * torch.randn(clusters * per, dim, generator=g)
    return x.unsqueeze(0), truth


def _same_partition(a, b):
    pairs_a = a.unsqueeze(0) == a.unsqueeze(1)
    return torch.equal(pairs_a, b.unsqueeze(0) == b.unsqueeze(1))


def test_kmeans_recovers_separable_clusters_and_warm_start_is_stable():
    from tokencache.ops.cluster_ops import kmeans
    x, truth = _blobs()
    labels, centroids = kmeans(x, torch.zeros(1, 4, 8), iterations=10)
    assert _same_partition(labels[0], truth)
    moved = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    again, _ = kmeans(moved, centroids, iterations=1)                  # warm start from the last centroids
    assert torch.equal(again, labels)                                   # same cluster ids, not just partition


def test_clusca_with_one_cluster_per_token_computes_the_feed_forward_exactly():
    """clusters = N and gamma = 0: every token is its own representative, so after a cached step
    each feed-forward's factor 0 holds its true output at that step (what ratio 1.0 would compute)."""
    model = PolyDiT().eval()
    compiled = tokencache.compile(model, policy="clusca", clusters=9, gamma=0.0, order=1, interval=3,
                                  warmup=1, num_steps=10, inner="eager")
    x = torch.zeros(2, 1)
    with torch.no_grad():
        for t in (1000.0, 900.0):                                           # fresh, then a cached step
            compiled(x, torch.tensor([t, t]))
        graph = introspect.graphs(compiled)[0]
        assert tokencache.report(compiled)["variants"]["clusters"]["calls"] == 1
        tau = torch.tensor(0.9)
        h = model.base + model.u * tau + model.v * tau * tau
        for i, block in enumerate(model.blocks):
            stored = graph.state()[f"taylor:blocks.{i}.ff"][0]
            torch.testing.assert_close(stored, block["ff"](h).expand(2, -1, -1), rtol=1e-5, atol=1e-5)


def test_value_norm_prior_prefers_small_values():
    value = torch.ones(1, 2, 5, 4)
    value[:, :, 3] = 0.1                                                   # token 3: small values in every head
    prior = token_ops.value_norm_prior(value)
    assert prior.argmax().item() == 3 and prior.min() >= 0


def test_vnorm_selection_stores_the_prior_at_fresh_steps():
    case = ALL_CASES["pixart"]()
    compiled = tokencache.compile(case.build(), policy="duca", selection="vnorm", num_steps=10, inner="eager")
    generate(case, compiled, noise(case))
    report = tokencache.report(compiled)
    assert report["fallback_reason"] is None
    assert any(k.startswith("vnorm:") for k in report["variants"]["fresh"]["state_out"])
