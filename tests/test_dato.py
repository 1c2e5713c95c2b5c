"""policy="dato" (issue 16): DaTo's pruned self-attention in fresh steps, FORA-like reuse between,
as static graphs; and U-Net transformer blocks cached under toca, fora and dato."""
import warnings

import pytest
import torch

import tokencache
from tokencache.models.zoo import tiny_unet
from tokencache.ops import prune_ops
from tiny_models import generate, noise, reference_case, rel_err

N, C, HIDDEN = 64, 64, 64       # reference_case(): 16x16 image, patch 2 -> 8x8 tokens; hidden 64


def _dato(model, **options):
    return tokencache.compile(model, policy="dato", num_steps=10, inner="eager", **options)


def test_exact_at_prune_zero_and_interval_one():
    case = reference_case()
    model, x0 = case.build(), noise(case)
    compiled = _dato(model, prune_ratio=0.0, interval=1)
    assert rel_err(generate(case, compiled, x0), generate(case, model, x0)) <= 1e-6
    report = tokencache.report(compiled)
    assert report["fallback_reason"] is None and set(report["schedule"]) == {"fresh"}


def test_pruning_changes_the_output_and_reuse_saves():
    case = reference_case()
    model, x0 = case.build(), noise(case)
    expected = generate(case, model, x0)
    pruned = _dato(model, prune_ratio=0.4, interval=1)
    err = rel_err(generate(case, pruned, x0), expected)
    assert 0 < err < 0.05
    torch._dynamo.reset()
    cached = _dato(model, interval=3)
    assert rel_err(generate(case, cached, x0), expected) < 0.1
    report = tokencache.report(cached)
    assert report["schedule"][:4] == ["fresh", "reuse", "reuse", "fresh"]
    assert report["flops_per_generation"] < 0.45 * report["flops_uncached_generation"]


def _attention_flops(batch: int, tokens: int) -> int:
    """The reference block's attention region on `tokens` rows: qkv and out projections, QK^T and AV."""
    return 2 * batch * tokens * C * 3 * C + 2 * batch * tokens * tokens * (C + C) + 2 * batch * tokens * C * C


def test_pruned_attention_flops_match_the_kept_token_count():
    """Pruned and unpruned fresh steps differ by exactly the attention on N - M fewer tokens per
    block (the plan's similarity matmul is in both)."""
    case = reference_case(depth=2)
    model, x0 = case.build(), noise(case)
    fresh = {}
    for prune in (0.0, 0.4):
        torch._dynamo.reset()
        compiled = _dato(model, prune_ratio=prune, interval=1)
        generate(case, compiled, x0, steps=2)
        fresh[prune] = tokencache.report(compiled)["variants"]["fresh"]["flops"]
    kept = N - prune_ops.pruned_count(N, 2, 0.4)
    assert kept == N - round(0.4 * (N - 16))
    batch = x0.shape[0]
    assert fresh[0.0] - fresh[0.4] == 2 * (_attention_flops(batch, N) - _attention_flops(batch, kept))


def test_two_generations_zero_recompiles_and_the_same_images():
    case = reference_case()
    model, x0 = case.build(), noise(case)
    compiled = _dato(model, interval=3)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first, second = generate(case, compiled, x0), generate(case, compiled, x0)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert tokencache.report(compiled)["recompiles"] == 0


def test_cfg_halves_prune_the_same_tokens():
    torch.manual_seed(0)
    x, dynamics, draw = torch.randn(4, 16, 8), torch.rand(4, 16), torch.randn(16)
    kept, at, to = prune_ops.plan(x, dynamics, draw, 2, 5, pair_halves=True)
    for t in (kept, at, to):
        torch.testing.assert_close(t[:2], t[2:])
    alone = prune_ops.plan(x[:2], dynamics[:2], draw, 2, 5, pair_halves=False)
    for got, want in zip((kept, at, to), alone):
        torch.testing.assert_close(got[:2], want)


def test_hand_checked_plan_and_recovery():
    """A 4x4 grid in 2x2 patches. Dynamics pick one destination per patch; the two sources that
    copy a destination's features are the most similar and are pruned; recovery copies the
    destination's output into them."""
    side, patch = 4, 2
    dynamics = torch.zeros(1, 16)
    destinations = [5, 2, 8, 15]                  # one per patch: (1,1), (0,2), (2,0), (3,3)
    dynamics[0, destinations] = 100.0             # far above the 0.1-scaled noise
    x = torch.randn(1, 16, 6, generator=torch.Generator().manual_seed(1))
    x[0, 0] = 3 * x[0, 5]                          # same direction as destination 5: cosine 1
    x[0, 14] = x[0, 15]                            # a copy of destination 15
    kept, at, to = prune_ops.plan(x, dynamics, torch.zeros(16), patch, pruned=2, pair_halves=False)
    assert sorted(at[0].tolist()) == [0, 14]
    assert dict(zip(at[0].tolist(), to[0].tolist())) == {0: 5, 14: 15}
    assert kept[0].tolist() == [i for i in range(16) if i not in (0, 14)]
    assert set(destinations) <= set(kept[0].tolist())
    rows = torch.arange(14.0).reshape(1, 14, 1).expand(1, 14, 3)
    full = prune_ops.recover(kept, rows, at, to, 16)
    position = {t: i for i, t in enumerate(kept[0].tolist())}
    torch.testing.assert_close(full[0, 0], rows[0, position[5]])
    torch.testing.assert_close(full[0, 14], rows[0, position[15]])
    torch.testing.assert_close(full[0, 7], rows[0, position[7]])


def test_options_are_validated_and_a_non_grid_model_says_why():
    with pytest.raises(ValueError, match="prune_ratio"):
        tokencache.CacheConfig(policy="dato", prune_ratio=1.0)
    with pytest.raises(ValueError, match="prune_patch"):
        tokencache.CacheConfig(policy="dato", prune_patch=0)
    case = reference_case(image=12)               # 6x6 tokens: 4x4 patches do not divide it
    model = case.build()
    compiled = _dato(model, prune_patch=4)
    with pytest.warns(UserWarning, match=r"square grid that patches of 4x4 divide; .* 36 tokens: prune_patch=1 or 2 or 3 or 6 fits its 6x6 grid"):
        generate(case, compiled, noise(case), steps=2)



def test_unet_transformer_blocks_are_cached():
    """A diffusers U-Net's transformer blocks sit at down_blocks.0.attentions.0.transformer_blocks.0:
    cached under toca, fora and dato; none is exact."""
    model = tiny_unet()
    x0, context = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 16)

    def run(m):
        x = x0
        with torch.no_grad():
            for i in range(6):
                x = x - 0.1 * m(x, torch.full((2,), 999.0 * (1 - i / 6)), encoder_hidden_states=context).sample
        return x

    expected = run(model)
    for policy in ("none", "toca", "fora", "dato"):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="tokencache", dynamic=False,
                                 options=dict(policy=policy, num_steps=6, inner="eager", interval=3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = run(compiled)
            report = tokencache.report(compiled)
        assert report["fallback_reason"] is None, (policy, report["fallback_reason"])
        blocks = {r["block"] for r in report["regions"]}
        assert "down_blocks.0.attentions.0.transformer_blocks.0" in blocks
        if policy == "none":
            assert rel_err(got, expected) <= 1e-6
        else:
            assert report["flops_per_generation"] < report["flops_uncached_generation"]
            assert rel_err(got, expected) < 0.05


def test_dato_exports_to_an_onnx_bundle(tmp_path):
    """The pruning plan uses top-k, not a stable sort, so the fresh variant exports; the bundle
    replays a generation as PyTorch does."""
    from tokencache.runtime.bundle_runner import OnnxBundleRunner, bind_like

    case = reference_case()
    model, x0 = case.build(), noise(case)
    compiled = tokencache.compile(model, policy="dato", num_steps=6, interval=3, inner="eager")
    expected = generate(case, compiled, x0, steps=6)
    bundle = tokencache.export(compiled, tmp_path / "bundle", progress=False)
    runner = bind_like(OnnxBundleRunner(bundle), model, tuple_output=False)
    assert rel_err(generate(case, runner, x0, steps=6), expected) < 1e-4
