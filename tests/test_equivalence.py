"""Settings that must reproduce the uncompiled model exactly (fp32, relative error <= 1e-4)."""
import pytest
import torch

import tokencache
from tokencache import introspect
from tiny_models import ALL_CASES, generate, noise, rel_err

TOL = 1e-4
EXACT_SETTINGS = {
    "none": dict(policy="none"),
    "toca_all_tokens": dict(policy="toca", ratio=1.0, attention="tokens"),
    "toca_interval1_reuse": dict(policy="toca", interval=1, ratio=0.25, attention="reuse"),
    "toca_interval1_tokens": dict(policy="toca", interval=1, ratio=0.25, attention="tokens"),
    "fora_interval1": dict(policy="fora", interval=1),
}


@pytest.mark.parametrize("case_name", list(ALL_CASES))
@pytest.mark.parametrize("setting", list(EXACT_SETTINGS))
def test_matches_uncompiled(case_name, setting):
    case = ALL_CASES[case_name]()
    model = case.build()
    x0 = noise(case)
    expected = generate(case, model, x0)
    compiled = tokencache.compile(model, num_steps=10, inner="eager", **EXACT_SETTINGS[setting])
    got = generate(case, compiled, x0)
    assert rel_err(got, expected) <= TOL
    report = tokencache.report(compiled)
    assert report["fallback_reason"] is None
    assert sum(v["calls"] for v in report["variants"].values()) == 10


@pytest.mark.parametrize("case_name", ["reference", "pixart"])
def test_caching_changes_the_output(case_name):
    """The cached settings are not secretly computing everything: they differ from the model."""
    case = ALL_CASES[case_name]()
    model = case.build()
    x0 = noise(case)
    expected = generate(case, model, x0)
    for options in (dict(policy="fora", interval=3), dict(policy="toca", ratio=0.25, interval=3)):
        got = generate(case, tokencache.compile(model, num_steps=10, inner="eager", **options), x0)
        assert 1e-4 < rel_err(got, expected) < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("cpu_matmul", ["auto", "onednn_packed", "aten"])
def test_inductor_matches_uncompiled(cpu_matmul):
    """The compiled path itself (inductor, compile_fx per variant), with the linear layers on
    oneDNN (GELU fused) where this torch has it, on live or packed weights, and on ATen's kernels."""
    case = ALL_CASES["reference"]()
    model = case.build()
    x0 = noise(case)
    expected = generate(case, model, x0)
    compiled = tokencache.compile(model, num_steps=10, inner="inductor", policy="toca", ratio=1.0, attention="tokens",
                                  cpu_matmul=cpu_matmul)
    assert rel_err(generate(case, compiled, x0), expected) <= TOL
    report = tokencache.report(compiled)
    variants = report["variants"]
    assert variants["fresh"]["compiles"] == 1 and variants["partial"]["compiles"] == 1
    onednn = {"auto": "onednn_packed", "onednn_packed": "onednn_packed"}.get(cpu_matmul)
    kernels = onednn if onednn and torch.backends.mkldnn.is_available() else "aten"
    assert variants["fresh"]["cpu_matmul"] == variants["partial"]["cpu_matmul"] == kernels
    assert (report["packed_weight_bytes"] > 0) == (kernels == "onednn_packed")


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_packed_weights_follow_weight_updates():
    """cpu_matmul="onednn_packed" (auto's choice here): every GEMM weight is packed once across
    generations; a load_state_dict (in place, so the compiled graphs stay valid) is seen at the next
    call, and a write through `.data` (as peft's LoRA merge does) at the next generation."""
    case = ALL_CASES["reference"]()
    model, other = case.build(), case.build()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x0 = noise(case)
    compiled = tokencache.compile(model, num_steps=10, inner="inductor", policy="toca", ratio=0.25, interval=3,
                                  attention="reuse", cpu_matmul="onednn_packed")
    eager = tokencache.compile(other, num_steps=10, inner="eager", policy="toca", ratio=0.25, interval=3,
                               attention="reuse")
    generate(case, compiled, x0)
    packs = introspect.packed_weight_packs()
    generate(case, compiled, x0)
    assert introspect.packed_weight_packs() == packs                       # second generation: no packing
    model.load_state_dict(other.state_dict())
    assert rel_err(generate(case, compiled, x0), generate(case, eager, x0)) <= TOL
    assert introspect.packed_weight_packs() > packs
    packs = introspect.packed_weight_packs()
    with torch.no_grad():
        for p, q in zip(model.parameters(), other.parameters()):
            q.mul_(1.5)
            p.data += 0.5 * p.data             # not seen by the version counters
    assert rel_err(generate(case, compiled, x0), generate(case, eager, x0)) <= TOL
    assert introspect.packed_weight_packs() > packs


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_cached_steps_pack_their_modulation_rows_once():
    """A FORA step computes only the gate rows of each adaLN projection (a row slice of the weight,
    passes/dead_chunks.py). Those rows are packed once: the second generation packs nothing (the
    slice is a new tensor at every call; keyed by it, every cached step re-packed every block's
    gate weights), and the result stays the eager one."""
    case = ALL_CASES["reference"]()
    model = case.build()
    x0 = noise(case, batch=8)                  # 8 rows: 2 to 4 run as W @ x^T, unpacked (ops/linear.py)
    options = dict(num_steps=10, policy="fora", interval=3)
    compiled = tokencache.compile(model, inner="inductor", cpu_matmul="onednn_packed", **options)
    eager = tokencache.compile(case.build(), inner="eager", **options)
    first = generate(case, compiled, x0)
    packs = introspect.packed_weight_packs()
    assert rel_err(generate(case, compiled, x0), first) == 0.0
    assert introspect.packed_weight_packs() == packs
    assert rel_err(first, generate(case, eager, x0)) <= TOL


@pytest.mark.slow
def test_inductor_token_wise_steps_write_caches_in_place():
    """On the CPU the compiled partial graphs write their K new rows into the cache they were given
    (passes/inplace_cache.py), where the eager variants build a new cache; both give the same images."""
    case = ALL_CASES["reference"]()
    model = case.build()
    x0 = noise(case)
    options = dict(num_steps=10, policy="toca", ratio=0.25, interval=3, attention="reuse")
    addresses = {}
    for inner in ("eager", "inductor"):
        compiled = tokencache.compile(model, inner=inner, **options)
        x = generate(case, compiled, x0, stop=2)                    # fresh, partial
        state = introspect.graphs(compiled)[0].state()
        before = {k: v.data_ptr() for k, v in state.items() if k.startswith("cache:") and k.endswith(".mlp")}
        x = generate(case, compiled, x, start=2, stop=3)            # partial
        addresses[inner] = [state[k].data_ptr() == ptr for k, ptr in before.items()]
        x = generate(case, compiled, x, start=3)
        if inner == "eager":
            expected = x
    assert addresses["eager"] and not any(addresses["eager"])        # a new cache tensor per step
    assert all(addresses["inductor"])                                # the same tensor, updated
    assert rel_err(x, expected) <= TOL
