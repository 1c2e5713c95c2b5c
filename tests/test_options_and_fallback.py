"""Bad options are rejected by name; unsupported graphs fall back loudly, never silently."""
import pytest
import torch
import torch.nn.functional as F

import tokencache
from tokencache.errors import TokenCacheError
from tiny_models import ALL_CASES, NoBlocksModel, generate, noise, rel_err, sana_case


@pytest.mark.parametrize("options, named", [
    (dict(polcy="toca"), "polcy"),
    (dict(policy="magic"), "policy"),
    (dict(ratio=1.5), "ratio"),
    (dict(ratio=0), "ratio"),
    (dict(interval=0), "interval"),
    (dict(attention="flash"), "attention"),
    (dict(inner="tvm"), "inner"),
    (dict(cpu_matmul="blas"), "cpu_matmul"),
    (dict(num_steps=2.5), "num_steps"),
    (dict(strict="yes"), "strict"),
    (dict(warmup=-1), "warmup"),
    (dict(warmup=1.5), "warmup"),
])
def test_bad_options_name_the_key(options, named):
    model = ALL_CASES["reference"]().build()
    with pytest.raises(ValueError, match=named):
        tokencache.compile(model, **options)


def test_warmup_default_depends_on_the_policy():
    """Forecasting policies start with 3 fresh steps (their references' default), the others with 1;
    an explicit value always wins, and the resolved value is what report() and bundles record."""
    C = tokencache.CacheConfig
    assert [C(policy=p).warmup for p in ("none", "fora", "toca", "duca", "taylorseer", "clusca")] == [1, 1, 1, 1, 3, 3]
    assert C(policy="taylorseer", warmup=1).warmup == 1 and C(policy="toca", warmup=4).warmup == 4
    assert C(policy="taylorseer").to_dict()["warmup"] == 3
    assert C.from_options(C(policy="clusca").to_dict()) == C(policy="clusca")


def test_bad_options_through_torch_compile():
    case = ALL_CASES["reference"]()
    compiled = torch.compile(case.build(), backend="tokencache", options={"ratio": 7})
    with pytest.raises(Exception) as info:
        generate(case, compiled, noise(case), steps=1)
    assert "ratio" in str(info.value) and "(0, 1]" in str(info.value)


def test_config_lists_allowed_values():
    with pytest.raises(ValueError, match="'none', 'fora', 'toca'"):
        tokencache.CacheConfig(policy="x")
    assert tokencache.CacheConfig.from_options({"policy": "fora"}).policy == "fora"


def test_conv_feed_forward_falls_back_with_reason():
    case = sana_case()
    model = case.build()
    x0 = noise(case)
    expected = generate(case, model, x0)
    compiled = tokencache.compile(model, policy="toca", num_steps=10, inner="eager")
    with pytest.warns(UserWarning, match="conv2d"):
        got = generate(case, compiled, x0)
    assert rel_err(got, expected) <= 1e-6
    report = tokencache.report(compiled)
    assert "conv2d" in report["fallback_reason"] and "blocks.0.ff" in report["fallback_reason"]
    assert report["policy"] == "none" and list(report["variants"]) == ["plain"]
    ff = [r for r in report["regions"] if r["region"] == "blocks.0.ff"][0]
    assert ff["token_wise"] is False


def test_regions_that_are_not_token_local_run_whole_at_k_equals_n():
    """ratio=1.0 asks for every token fresh: a convolution feed-forward (not token-local) then runs
    whole in cached steps, so K = N is exact; below 1.0 it is reused whole."""
    case = sana_case()
    model = case.build()
    x0 = noise(case)
    expected = generate(case, model, x0)
    computed = {}
    for ratio in (1.0, 0.5):
        torch._dynamo.reset()
        compiled = tokencache.compile(model, policy="toca", ratio=ratio, attention="tokens", interval=3,
                                      num_steps=10, inner="eager")
        got = generate(case, compiled, x0)
        if ratio == 1.0:
            assert rel_err(got, expected) <= 1e-5
        report = tokencache.report(compiled)
        computed[ratio] = {r["region"]: (r["computed_tokens"], r["tokens"]) for r in report["regions"]}
    assert computed[1.0]["blocks.0.ff"] == (16, 16) and computed[0.5]["blocks.0.ff"] == (0, 16)
    assert computed[0.5]["blocks.0.attn1"] == (8, 16)


def test_conv_feed_forward_strict_raises():
    case = sana_case()
    compiled = tokencache.compile(case.build(), policy="toca", num_steps=10, inner="eager", strict=True)
    with pytest.raises(Exception) as info:
        generate(case, compiled, noise(case), steps=1)
    assert isinstance(info.value, TokenCacheError) or isinstance(getattr(info.value, "inner_exception", None), TokenCacheError)
    assert "conv2d" in str(info.value)


def test_conv_feed_forward_still_reusable_by_fora():
    """FORA reuses whole regions, so token-locality does not matter to it."""
    case = sana_case()
    compiled = tokencache.compile(case.build(), policy="fora", interval=2, num_steps=10, inner="eager")
    generate(case, compiled, noise(case))
    report = tokencache.report(compiled)
    assert report["fallback_reason"] is None and report["variants"]["reuse"]["calls"] == 5


def test_unknown_architecture_falls_back():
    model = NoBlocksModel()
    compiled = tokencache.compile(model, policy="fora", inner="eager")
    x, t = torch.randn(2, 16), torch.tensor([1.0, 1.0])
    with pytest.warns(UserWarning, match="no transformer blocks"):
        out = compiled(x, t)
    torch.testing.assert_close(out, model(x, t))
    assert "no transformer blocks" in tokencache.report(compiled)["fallback_reason"]


def test_report_before_first_call_is_a_clear_error():
    with pytest.raises(ValueError, match="first call"):
        tokencache.report(tokencache.compile(NoBlocksModel()))


def test_flux_joint_attention_is_cached_token_wise():
    """Flux's double blocks attend over image and text tokens jointly (two outputs): tokencache
    caches both outputs and, under attention="tokens", recomputes the K image queries against all
    keys (exact at K=N, RoPE rows gathered with the tokens)."""
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(0)
    flux = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                  axes_dims_rope=[4, 4, 8]).eval()
    ids = torch.stack([torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4], dim=1)
    inputs = dict(hidden_states=torch.randn(1, 16, 4), encoder_hidden_states=torch.randn(1, 8, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.tensor([1.0]), img_ids=ids,
                  txt_ids=torch.zeros(8, 3), return_dict=False)
    compiled = tokencache.compile(flux, policy="toca", inner="eager", num_steps=2, interval=2, ratio=1.0,
                                  attention="tokens")
    with torch.no_grad():
        for t in (1.0, 0.5):
            step = {**inputs, "timestep": torch.tensor([t])}
            torch.testing.assert_close(compiled(**step)[0], flux(**step)[0], rtol=1e-4, atol=1e-5)
    report = tokencache.report(compiled)
    assert report["fallback_reason"] is None and report["variants"]["partial"]["calls"] == 1
    joint = [r for r in report["regions"] if r["region"] == "transformer_blocks.0.attn"][0]
    assert joint["kind"] == "joint_attention" and joint["token_wise"] and joint["context_tokens"] == 8


class _TwoAttentionOps(torch.nn.Module):
    """An attention module running two attention ops (SanaWM, QwenImage 2.1): not a region."""

    def __init__(self, dim):
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        both = F.scaled_dot_product_attention(q, k, v) + F.scaled_dot_product_attention(q, v, k)
        return self.out(both.squeeze(1))


class _TwoOpsBlock(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn = _TwoAttentionOps(dim)
        self.ff = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.ff(x)


class _TwoOpsModel(torch.nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_TwoOpsBlock(dim) for _ in range(2))

    def forward(self, x, timestep):
        x = x * (1 + timestep[:, None, None])
        for block in self.blocks:
            x = block(x)
        return x


def test_an_attention_that_is_no_region_runs_every_step_and_the_rest_is_cached():
    torch.manual_seed(0)
    model = _TwoOpsModel().eval()
    x0 = torch.randn(2, 16, 16)

    def run(m):
        x = x0
        with torch.no_grad():
            for i in range(6):
                x = x - 0.1 * m(x, torch.full((2,), 1.0 - i / 6))
        return x

    expected = run(model)
    exact = tokencache.compile(model, policy="toca", ratio=1.0, attention="tokens", interval=3, num_steps=6,
                               inner="eager")
    with pytest.warns(UserWarning, match=r"2 attention module\(s\) cannot be cached and run in every step.*"
                                         r"blocks.0.attn \(2 attention ops"):
        got = run(exact)
    assert rel_err(got, expected) <= 1e-5
    report = tokencache.report(exact)
    assert report["fallback_reason"] is None
    assert {r["region"] for r in report["regions"]} == {"blocks.0.ff", "blocks.1.ff"}
