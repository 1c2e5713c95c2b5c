"""Unit tests of the pieces: token scores and selection, region analysis (the step clock: test_steps.py)."""
import copy
import operator
import os

import pytest
import torch

from tokencache.compiler.regions import analyse, module_path
from tokencache.ops import token_ops
from tiny_models import ALL_CASES, noise


def test_cell_winners_marks_one_token_per_cell():
    score = torch.rand(3, 64)
    winners = token_ops.cell_winners(score, 2)
    assert winners.sum(dim=1).tolist() == [16.0] * 3           # 8x8 grid, 2x2 cells
    grid = score.reshape(3, 8, 8)
    cell = grid[:, 2:4, 4:6].reshape(3, 4)
    mask = winners.reshape(3, 8, 8)[:, 2:4, 4:6].reshape(3, 4)
    assert torch.equal(mask.argmax(dim=1), cell.argmax(dim=1))


def test_scores_prefer_changed_and_stale_tokens():
    ref = torch.ones(2, 16, 8)
    x = ref.clone()
    x[:, 5] += 3.0                                              # token 5 changed a lot
    stale = torch.zeros(2, 16)
    stale[:, 9] = 6.0                                           # token 9 was not computed for 6 steps
    s = token_ops.token_scores(x, ref, stale, interval=3, dynamics_weight=1.0, staleness_weight=0.25,
                               pair_halves=False, grid=2, bonus=0.0)
    top = token_ops.top_tokens(s, 2)
    assert set(top[0].tolist()) == {5, 9}


def test_pair_halves_select_the_same_tokens():
    x, ref = torch.randn(4, 16, 8), torch.randn(4, 16, 8)
    s = token_ops.token_scores(x, ref, torch.zeros(4, 16), 3, 1.0, 0.25, True, 2, 0.4)
    idx = token_ops.top_tokens(s, 5)
    assert torch.equal(idx[:2].sort(dim=1).values, idx[2:].sort(dim=1).values)


def test_gather_scatter_round_trip_and_staleness():
    full = torch.randn(2, 10, 4)
    idx = torch.tensor([[1, 7, 3], [0, 9, 2]])
    rows = token_ops.gather_rows(full, idx)
    assert torch.equal(rows[1, 1], full[1, 9])
    changed = token_ops.scatter_rows(torch.zeros_like(full), idx, rows)
    assert torch.equal(changed[0, 7], full[0, 7]) and changed[0, 0].abs().sum() == 0
    stale = token_ops.age_staleness(torch.full((2, 10), 2.0), idx)
    assert stale[0, 1] == 0 and stale[0, 0] == 3


def _capture_call(model, call) -> tuple:
    """(Dynamo's graph, its example inputs) of `call(compiled model)`."""
    captured = []

    def backend(gm, example_inputs):
        captured.append((gm, list(example_inputs)))
        return gm.forward
    torch._dynamo.reset()
    with torch.no_grad():
        call(torch.compile(model, backend=backend, dynamic=False))
    return captured[0]


def _capture(case_name):
    case = ALL_CASES[case_name]()
    return _capture_call(case.build(), lambda m: case.call(m, noise(case), torch.tensor([500.0, 500.0])))[0]


@pytest.mark.parametrize("case_name, kinds", [
    ("reference", {"blocks.0.attn": "self_attention", "blocks.0.mlp": "feed_forward"}),
    ("diffusers_dit", {"transformer_blocks.0.attn1": "self_attention", "transformer_blocks.0.ff": "feed_forward"}),
    ("pixart", {"transformer_blocks.1.attn1": "self_attention", "transformer_blocks.1.attn2": "cross_attention",
                "transformer_blocks.1.ff": "feed_forward"}),
])
def test_regions_found(case_name, kinds):
    analysis = analyse(_capture(case_name))
    found = {r.name: r for r in analysis.regions}
    for name, kind in kinds.items():
        assert found[name].kind == kind and found[name].token_wise, found[name]
    assert len(analysis.blocks) == 2
    assert all(r.tokens == 64 if case_name == "reference" else r.tokens == 16 for r in analysis.regions)


def test_fused_qkv_reshape_tracks_the_token_axis():
    """`qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)`, then `[0]`: tokens at axis 3, then 2."""
    analysis = analyse(_capture("reference"))
    attn = next(r for r in analysis.regions if r.name == "blocks.0.attn")
    assert attn.token_axes["qkv"] == 3 and attn.token_axes["q"] == 2 and attn.token_axes["o"] == 2


def test_module_path_normalisation():
    class Node:
        meta = {"nn_module_stack": {"a": ("L['self'].__dict__['_modules']['transformer_blocks'].0.attn1.to_q", object)}}
    assert module_path(Node()) == "transformer_blocks.0.attn1.to_q"


def test_row_prelude_gathers_the_residual_stream_before_layernorm_and_modulation():
    """The feed-forward's LayerNorm + adaLN modulation are row-local and only feed the region, so
    partial steps gather rows of the residual stream and run them on K rows; the self-attention's
    input also feeds keys and values (N rows stay needed), so it is gathered where it is."""
    from tokencache.compiler.token_axis import op_name
    from tokencache.passes.partial import row_prelude
    gm = _capture("reference")
    regions = {r.name: r for r in analyse(gm).regions}
    mlp, attn = regions["blocks.0.mlp"], regions["blocks.0.attn"]
    source, axes = row_prelude(gm, mlp, set())
    assert mlp.input in axes and set(axes.values()) == {1}
    assert "layer_norm" in {op_name(n) for n in gm.graph.nodes if n.name in axes}
    assert op_name(source) == "add" and len(source.users) > 1       # the residual stream
    source, axes = row_prelude(gm, attn, set())
    assert source.name == attn.input and axes == {}


def test_row_prelude_stops_at_per_token_inputs():
    """A per-token table added on the way (a positional embedding) would need gathering too: the
    prelude stops below it."""
    from tokencache.passes.partial import row_prelude

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(8)
            self.pos = torch.nn.Parameter(torch.randn(16, 8))
            self.ff = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))

        def forward(self, x):
            return x + self.ff(self.norm(x) + self.pos)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block()])

        def forward(self, x):
            return self.blocks[0](x * 2.0)

    gm, _ = _capture_call(Net(), lambda m: m(torch.randn(2, 16, 8)))
    ff = next(r for r in analyse(gm).regions if r.name == "blocks.0.ff")
    source, axes = row_prelude(gm, ff, set())
    assert source.name == ff.input and axes == {}    # the input adds self.pos: stop there


def _weight_slices(gm) -> dict[str, int]:
    """Row slices taken of weight parameters: node name -> rows."""
    return {f"{n.args[0].name}:{n.name}": n.args[1].stop - n.args[1].start for n in gm.graph.nodes
            if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], slice)
            and n.args[0].op == "placeholder" and n.args[0].name.endswith("weight_")}


def test_dead_chunks_split_the_linear_and_keep_the_output():
    from tokencache.passes.dead_chunks import drop_dead_chunks

    class Modulation(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 5 * 6)

        def forward(self, c, x):
            a, _, b, d, _ = self.lin(c).chunk(5, dim=1)
            return x * a + b * d

    torch.manual_seed(0)
    c, x = torch.randn(3, 8), torch.randn(3, 6)
    gm, inputs = _capture_call(Modulation(), lambda m: m(c, x))
    pruned = drop_dead_chunks(gm)
    assert sorted(_weight_slices(pruned).values()) == [6, 12]   # chunk 0 alone, chunks 2-3 together; 1 and 4 never computed
    torch.testing.assert_close(pruned(*inputs)[0], gm(*inputs)[0], rtol=1e-6, atol=1e-6)


def test_dead_chunks_in_cached_variants_of_the_reference_dit():
    """FORA's reuse step needs only the two gates of each block's six adaLN chunks; pruning them
    leaves the variant's output unchanged."""
    from tokencache.config import CacheConfig
    from tokencache.models.reference_dit import ReferenceDiT
    from tokencache.passes.dead_chunks import drop_dead_chunks
    from tokencache.policies import get_policy

    torch.manual_seed(0)
    model = ReferenceDiT(image=8, hidden=32, depth=2, heads=2).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.full((2,), 700.0), torch.tensor([1, 2])
    gm, inputs = _capture_call(model, lambda m: m(x, t, y))
    for policy, cached in [("fora", "reuse"), ("toca", "partial")]:
        config = CacheConfig(policy=policy, num_steps=6, interval=3, ratio=0.5)
        variants = get_policy(policy).variants(gm, analyse(gm), config)
        fresh = variants["fresh"](*inputs)
        info = variants["fresh"].meta["tokencache"]
        state = dict(zip(info["state_out"], fresh[info["num_outputs"]:]))
        raw = variants[cached]
        args = inputs + [state[k] for k in raw.meta["tokencache"]["state_in"]]
        pruned = drop_dead_chunks(raw)
        live = {"fora": [32, 32], "toca": [4 * 32]}[policy]     # gates; gate_msa..gate_mlp
        for block in range(2):
            assert [w for name, w in _weight_slices(pruned).items() if f"blocks_modules_{block}_" in name] == live
        for got, want in zip(pruned(*args), raw(*args)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_onednn_linear_rewrites_linears_and_fuses_gelu():
    """Every linear becomes tokencache::linear, with a GELU that is its only user fused (erf and tanh
    forms; one with another user stays); bias-free linears and 1-D inputs work; outputs match."""
    from tokencache.passes.onednn_linear import onednn_linear

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8, bias=False), torch.nn.Linear(8, 8)

        def forward(self, x, v, u):
            h = torch.nn.functional.gelu(self.a(x), approximate="tanh")
            z = self.c(self.b(h))
            return torch.nn.functional.gelu(z) + z, torch.nn.functional.gelu(self.a(v)), self.b(u)

    net = Net().eval()
    x, v, u = torch.randn(2, 16, 8), torch.randn(2, 8), torch.randn(16)
    gm, example = _capture_call(net, lambda m: m(x, v, u))
    rewritten = onednn_linear(gm)
    targets = [n.target for n in rewritten.graph.nodes if n.op == "call_function"]
    fused = [n.args[3:5] for n in rewritten.graph.nodes if n.target is torch.ops.tokencache.linear.default]
    assert torch.nn.functional.linear not in targets
    assert sorted(fused) == [("gelu", "none"), ("gelu", "tanh"), ("none", ""), ("none", ""), ("none", "")]
    assert targets.count(torch.nn.functional.gelu) == 1      # z has two users: its GELU is not fused
    # a row slice of a parameter (passes/dead_chunks.py) becomes the parameter and its row range
    sliced = copy.deepcopy(gm)
    linear = next(n for n in sliced.graph.nodes if n.target is torch.nn.functional.linear)
    with sliced.graph.inserting_before(linear):
        rows = sliced.graph.call_function(operator.getitem, (linear.args[1], slice(0, 8)))
    bias = linear.args[2] if len(linear.args) > 2 else linear.kwargs.get("bias")
    with sliced.graph.inserting_before(linear):
        bias_rows = sliced.graph.call_function(operator.getitem, (bias, slice(0, 8)))
    linear.args, linear.kwargs = (linear.args[0], rows, bias_rows), {}
    sliced.recompile()
    op = next(n for n in onednn_linear(sliced).graph.nodes if n.target is torch.ops.tokencache.linear.default
              and n.args[5])
    assert op.args[1] is not None and op.args[1].op == "placeholder" and op.args[5] == [0, 8]
    with torch.no_grad():
        for got, want in zip(rewritten(*example), gm(*example)):
            assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (2, 1, 24), (4, 24), (3, 2, 24), (24,)])
@pytest.mark.parametrize("post_op, algorithm", [("none", ""), ("gelu", "tanh"), ("gelu", "none")])
@pytest.mark.parametrize("op_name", ["linear", "linear_packed"])
def test_tokencache_linear_op_matches_linear(shape, post_op, algorithm, op_name):
    """Both paths of the ops (W @ x^T for 2-4 rows, oneDNN otherwise, on live or packed weights)
    give linear(+GELU), row-major."""
    import tokencache.passes.onednn_linear  # noqa: F401  (defines the ops)
    op = getattr(torch.ops.tokencache, op_name)
    x, w, b = torch.randn(shape), torch.randn(40, 24), torch.randn(40)
    want = torch.nn.functional.linear(x, w, b)
    if post_op == "gelu":
        want = torch.nn.functional.gelu(want, approximate=algorithm)
    got = op(x, w, b, post_op, algorithm)
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    # rows 8..19 of the weight (a live modulation chunk): the op takes the whole weight and the range
    part = torch.nn.functional.linear(x, w[8:20], b[8:20])
    if post_op == "gelu":
        part = torch.nn.functional.gelu(part, approximate=algorithm)
    got = op(x, w, b[8:20], post_op, algorithm, [8, 20])
    assert got.shape == part.shape and torch.allclose(got, part, rtol=1e-5, atol=1e-5)
    assert torch.allclose(op(x, w, None, "none", ""), x @ w.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_packed_weights_are_reused_renewed_and_freed():
    """A weight is packed once while unchanged, again after an in-place update (its version moves)
    or after drop(); its copy goes with it. The packed GEMM follows the updated weight."""
    import gc

    from tokencache.runtime.packed_weights import PackedWeights
    store = PackedWeights()
    w, x = torch.nn.Parameter(torch.randn(40, 24)), torch.randn(16, 24)

    def matches(weight):
        got = torch.ops.mkldnn._linear_pointwise(x, store.get(weight, 16), None, "none", [], "")
        return torch.allclose(got, x @ weight.detach().t(), rtol=1e-5, atol=1e-5)
    assert matches(w)
    assert store.get(w, 16) is store.get(w, 16) and store.packs == 1
    assert store.nbytes([w]) >= w.numel() * 4
    with torch.no_grad():
        w.mul_(2.0)
    assert matches(w) and store.packs == 2
    assert store.verify([w]) == 0          # unchanged bytes: the copy stays
    w.data.mul_(0.5)                       # bypasses the version counter: not seen by get() ...
    assert store.get(w, 16) is store.get(w, 16) and store.packs == 2
    assert store.verify([w]) == 1          # ... but by verify(), which drops the stale copy
    assert matches(w) and store.packs == 3
    w.data[3, 5] = torch.nextafter(w.data[3, 5], torch.tensor(float("inf")))   # one bit of one element
    assert store.verify([w]) == 1 and matches(w) and store.packs == 4
    store.drop([w])
    assert matches(w) and store.packs == 5
    rows = store.get(w, 16, (8, 20))       # a row range has its own copy, kept with the weight's
    assert rows is store.get(w, 16, (8, 20)) and store.packs == 6
    got = torch.ops.mkldnn._linear_pointwise(x, rows, None, "none", [], "")
    assert torch.allclose(got, x @ w.detach()[8:20].t(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        w.mul_(2.0)                        # a new version renews the whole weight's copies
    assert store.get(w, 16, (8, 20)) is not rows and store.packs == 7
    del w
    gc.collect()
    assert store._entries == {}


def test_cpu_matmul_choice():
    from tokencache.backends import inner
    fp32, bf16 = [torch.zeros(2, 2)], [torch.zeros(2, 2, dtype=torch.bfloat16)]
    have = torch.backends.mkldnn.is_available()
    assert inner.cpu_matmul_for(fp32, "inductor", "auto") == ("onednn_packed" if have else "aten")
    assert inner.cpu_matmul_for(fp32, "inductor", "onednn") == ("onednn" if have else "aten")
    assert inner.cpu_matmul_for(fp32, "inductor", "aten") == "aten"
    assert inner.cpu_matmul_for(fp32, "inductor", "onednn_packed") == ("onednn_packed" if have else "aten")
    assert inner.cpu_matmul_for(bf16, "inductor", "onednn_packed") == "aten"
    assert inner.cpu_matmul_for(bf16, "inductor", "auto") == "aten"      # ATen already uses oneDNN there
    assert inner.cpu_matmul_for(fp32, "eager", "onednn") is None


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_cpu_matmul_auto_packs_only_weights_that_fit(monkeypatch):
    """"auto" keeps packed copies while the weights take at most a quarter of the machine's memory,
    and runs oneDNN on the live weights above that or where the memory is unknown."""
    from tokencache.backends import inner
    fp32 = [torch.zeros(2, 2)]
    if hasattr(os, "sysconf"):
        assert inner.machine_memory_bytes() > 2**20
    monkeypatch.setattr(inner, "machine_memory_bytes", lambda: 4000)
    assert inner.cpu_matmul_for(fp32, "inductor", "auto", weight_bytes=1000) == "onednn_packed"
    assert inner.cpu_matmul_for(fp32, "inductor", "auto", weight_bytes=1001) == "onednn"
    assert inner.cpu_matmul_for(fp32, "inductor", "onednn_packed", weight_bytes=10**9) == "onednn_packed"
    monkeypatch.setattr(inner, "machine_memory_bytes", lambda: None)
    assert inner.cpu_matmul_for(fp32, "inductor", "auto", weight_bytes=1) == "onednn"


def test_cpu_matmul_onednn_without_onednn_is_an_error(monkeypatch):
    from tokencache.backends import inner
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    for setting in ("onednn", "onednn_packed"):
        with pytest.raises(RuntimeError, match=f"cpu_matmul='{setting}'"):
            inner.cpu_matmul_for([torch.zeros(2)], "inductor", setting)
    assert inner.cpu_matmul_for([torch.zeros(2)], "inductor", "auto") == "aten"


@pytest.mark.parametrize("returns_cache_view", [False, True])
def test_inplace_cache_only_where_no_output_is_the_cache(returns_cache_view):
    """A scatter into a state placeholder becomes in place, unless a model output is that cache or
    a view of it (a caller keeping outputs would see them change)."""
    import torch.fx as fx

    from tokencache.ops import token_ops
    from tokencache.passes.inplace_cache import inplace_cache

    graph = fx.Graph()
    x, cache, index, rows = (graph.placeholder(n) for n in ("x", "cache", "index", "rows"))
    new = graph.call_function(token_ops.scatter_rows, (cache, index, rows))
    shown = graph.call_method("reshape", (new, (-1,))) if returns_cache_view else graph.call_function(torch.add, (x, new))
    graph.output((shown, new))
    gm = fx.GraphModule(torch.nn.Module(), graph)
    gm.meta["tokencache"] = {"num_outputs": 1, "state_in": [], "state_out": ["cache:r"], "host_in": [], "state_init": {}}
    rewritten = inplace_cache(gm)
    targets = [n.target for n in rewritten.graph.nodes if n.op == "call_function"]
    assert (token_ops.scatter_rows_ in targets) == (not returns_cache_view)
    args = torch.randn(2, 4, 3), torch.zeros(2, 4, 3), torch.tensor([[1], [2]]), torch.ones(2, 1, 3)
    held = args[1]
    out, state = rewritten(*args)
    assert torch.equal(state, token_ops.scatter_rows(torch.zeros(2, 4, 3), args[2], args[3]))
    assert (state is held) == (not returns_cache_view)


def _indexing(index):
    """(x, x[index]) as graph nodes with the shapes Dynamo would record: x is (2, 6 tokens, 8)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    y = graph.call_function(operator.getitem, (x, index))
    with FakeTensorMode() as mode:
        x.meta["example_value"] = mode.from_tensor(torch.zeros(2, 6, 8))
        y.meta["example_value"] = x.meta["example_value"][index]
    return x, y


@pytest.mark.parametrize("index, axis", [
    ((Ellipsis, slice(None, 4)), 1),        # Flux 2's SwiGLU: x[..., :half] keeps the tokens at 1
    ((slice(None), None), 2),               # x[:, None]: a new axis in front moves them to 2
    ((None, Ellipsis, 0), 2),               # x[None, ..., 0]: moved by the new axis, channels dropped
    ((0,), 0),                              # x[0]: the batch axis is dropped
])
def test_indexing_keeps_track_of_the_token_axis(index, axis):
    from tokencache.compiler.token_axis import propagate
    x, y = _indexing(index)
    assert propagate([x, y], x, 1, 6)[y.name] == axis


@pytest.mark.parametrize("index", [(Ellipsis, slice(0, 3), slice(None)), (slice(None), slice(1, 4))])
def test_indexing_rejects_slicing_tokens_inside_the_stream(index):
    from tokencache.compiler.token_axis import NotTokenLocal, propagate
    x, y = _indexing(index)
    with pytest.raises(NotTokenLocal):
        propagate([x, y], x, 1, 6)
