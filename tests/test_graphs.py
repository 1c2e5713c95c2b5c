"""Any graph Dynamo hands over (issue 20): nested and wrapped blocks, block frames, graph breaks,
lifted constants, symbolic shapes, and a loud report when caching saves little."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

from tokencache.compiler.blocks import ROOT, find_blocks, is_list_entry


def _blocks(ops: list[tuple[str, str]], out_tokens: int = 16, queries: int = 16) -> list[str]:
    """find_blocks on a graph of (module path, op) nodes: op "attn" (SDPA with `queries` queries)
    or "linear"; the graph returns a (2, out_tokens, 8) tensor."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    q = graph.placeholder("q")
    q.meta["example_value"] = torch.empty(2, 2, queries, 4)
    nodes, paths = [], {}
    for path, op in ops:
        target = F.scaled_dot_product_attention if op == "attn" else F.linear
        node = graph.call_function(target, (q, q, q) if op == "attn" else (x, x))
        nodes.append(node)
        paths[node.name] = path
    out = graph.call_function(torch.empty, (2, out_tokens, 8))
    out.meta["example_value"] = torch.empty(2, out_tokens, 8)
    paths[out.name] = ""
    graph.output(out)
    return find_blocks(nodes + [out], paths)


def test_blocks_are_innermost_numbered_modules_holding_an_attention():
    unet = "down_blocks.1.attentions.0.transformer_blocks.0"
    assert _blocks([("down_blocks.0.resnets.0.conv1", "linear"), (f"{unet}.attn1", "attn"), (f"{unet}.ff.net.0.proj", "linear"),
                    ("mid_block.attentions.0.transformer_blocks.0.attn1", "attn")]) == \
        [unet, "mid_block.attentions.0.transformer_blocks.0"]
    dit = [("transformer_blocks.0.attn.to_q", "linear"), ("transformer_blocks.0.attn", "attn"),
           ("transformer_blocks.0.attn.to_out.0", "linear"), ("transformer_blocks.0.ff.net.0.proj", "linear"),
           ("transformer_blocks.0.ff.net.2", "linear"), ("transformer_blocks.1.attn", "attn")]
    assert _blocks(dit) == ["transformer_blocks.0", "transformer_blocks.1"]
    # the attention ops run in a numbered module itself: that is an attention layer, not a block
    assert _blocks([("blocks.2.attns.0", "attn"), ("blocks.2.attns.0.to_q", "linear")]) == ["blocks.2"]


def test_sublayers_are_never_blocks():
    """A block's own frame (module paths relative to the block, as after a graph break): the whole
    graph is the block, not its feed-forward's `net.0`."""
    frame = [("norm1.linear", "linear"), ("attn.to_q", "linear"), ("attn", "attn"), ("attn.to_out.0", "linear"),
             ("ff.net.0.proj", "linear"), ("ff.net.2", "linear")]
    assert _blocks(frame) == [ROOT]
    # a joint attention's queries hold both streams (16 = 11 image + 5 text tokens)
    assert _blocks([("attn", "attn"), ("ff.net.2", "linear")], out_tokens=11) == [ROOT]
    # an attention pooling in an embedding module's frame (Mochi's time_embed.pooler) is no block:
    # its one query is not the tokens of the graph's (batch, tokens, channels) output
    assert _blocks([("pooler", "attn"), ("caption_proj", "linear")], out_tokens=5, queries=1) == []
    # the rest of a block after a break inside its attention: no attention, no block at all
    assert _blocks([("ff.net.0.proj", "linear"), ("ff.net.2", "linear"), ("ff_context.net.0.proj", "linear")]) == []
    assert not is_list_entry("ff.net.0") and is_list_entry("down_blocks.1.attentions.0") and is_list_entry("blocks.0")


def test_feed_forward_only_blocks_and_wrappers():
    assert _blocks([("blocks.0.ff.net.0.proj", "linear"), ("blocks.0.ff.net.2", "linear"), ("blocks.1.ff.0", "linear")]) == \
        ["blocks.0", "blocks.1"]
    # HiDream wraps each block: double_stream_blocks.0.block holds everything
    wrapped = [("double_stream_blocks.0.block.attn1", "attn"), ("double_stream_blocks.0.block.ff_i.w1", "linear"),
               ("double_stream_blocks.0.block.adaLN_modulation.1", "linear")]
    assert _blocks(wrapped) == ["double_stream_blocks.0.block"]


# ---------------------------------------------------------------------------------------------------
# Graph breaks: one model, several graphs, one step clock

import tokencache
from tokencache.models.reference_dit import ReferenceDiT, modulate
from tiny_models import generate, noise, reference_case, rel_err


class BrokenDiT(ReferenceDiT):
    """ReferenceDiT whose forward breaks the graph between its two halves of blocks: Dynamo hands
    over the part up to the break (with the timestep) and a resume function (without it)."""

    def __init__(self, breaker: str = "graph_break", rope: bool = False, **kw):
        super().__init__(**kw)
        self.breaker = breaker

    def forward(self, hidden_states, timestep, class_labels):
        B = hidden_states.shape[0]
        x = self.embed(hidden_states).flatten(2).transpose(1, 2) + self.pos
        c = self.t_mlp(self.timestep_embedding(timestep)) + self.y_embed(class_labels)
        half = len(self.blocks) // 2
        x = self._run(self.blocks[:half], x, c)
        if self.breaker == "graph_break":
            torch._dynamo.graph_break()
        else:
            finite = int(torch.isfinite(x).all().item())     # a host sync, as models do with .item()
            x = x * finite
        x = self._run(self.blocks[half:], x, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        x = self.out(modulate(self.norm(x), shift, scale))
        g, p = self.image // self.patch, self.patch
        x = x.reshape(B, g, g, p, p, self.channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, self.channels, self.image, self.image)

    @staticmethod
    def _run(blocks, x, c):
        for block in blocks:
            x = block(x, c)
        return x


def _broken(breaker="graph_break", depth=4):
    torch.manual_seed(0)
    return BrokenDiT(breaker, depth=depth).eval()


def _unbroken(depth=4):
    torch.manual_seed(0)
    return ReferenceDiT(depth=depth).eval()


def _cfg_generate(model, x0, steps=10):
    """Classifier-free guidance as two calls per step (the same timestep twice)."""
    x = x0.clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    labels, null = torch.arange(x.shape[0]) % 10, torch.full((x.shape[0],), 10)
    with torch.no_grad():
        for i in range(steps):
            t = (sigmas[i] * 1000).expand(x.shape[0]).contiguous()
            cond, uncond = model(x, t, labels), model(x, t, null)
            x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + 2.0 * (cond - uncond))
    return x


@pytest.mark.parametrize("breaker", ["graph_break", "item"])
def test_graph_break_between_block_groups_caches_both_graphs(breaker):
    case = reference_case(depth=4)
    model = _broken(breaker)
    x0 = noise(case)
    expected = generate(case, model, x0)
    compiled = tokencache.compile(model, policy="toca", ratio=1.0, attention="tokens", interval=3, num_steps=10,
                                  inner="eager")
    got = generate(case, compiled, x0)
    assert rel_err(got, expected) <= 1e-4
    with torch._dynamo.config.patch(error_on_recompile=True):     # a second generation: no recompile
        again = generate(case, compiled, x0)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    report = tokencache.report(compiled)
    graphs = report["graphs"]
    assert len(graphs) == 2 and report["recompiles"] == 0
    blocks = [sorted({r["block"] for r in g["regions"]}) for g in graphs]
    assert blocks == [["blocks.0", "blocks.1"], ["blocks.2", "blocks.3"]]
    for g in graphs:   # both graphs cached, on the same steps (fresh at 0, 3, 6, 9 of each generation)
        assert {v: d["calls"] for v, d in g["variants"].items()} == {"fresh": 8, "partial": 12}
    assert report["flops_per_generation"] == sum(g["flops_per_generation"] for g in graphs)
    assert report["flops_uncached_generation"] == sum(g["flops_uncached_generation"] for g in graphs)
    assert graphs[1]["timestep_input"] is None and graphs[1]["fallback_reason"] is None
    (brk,) = report["graph_breaks"]
    assert brk["graph"] == graphs[0]["capture"]["compile_id"]
    assert ("graph_break()" if breaker == "graph_break" else "item()") in brk["reason"]
    assert brk["at"].startswith("test_graphs.py:")
    json.dumps(report)


def test_graph_break_follows_the_models_clock_with_cfg_calls():
    """With two calls per step (CFG) and K < N, the graph after the break must use the step and
    call position of the graph before it: the split model then computes exactly what the same
    model does as one graph."""
    case = reference_case(depth=4)
    x0 = noise(case)
    options = dict(policy="toca", ratio=0.25, interval=3, num_steps=10, inner="eager")
    whole = _cfg_generate(tokencache.compile(_unbroken(), **options), x0)
    compiled = tokencache.compile(_broken(), **options)
    split = _cfg_generate(compiled, x0)
    assert rel_err(split, whole) <= 1e-5
    assert rel_err(split, _cfg_generate(_unbroken(), x0)) > 1e-4        # caching did something
    report = tokencache.report(compiled)
    assert report["flop_fraction"] < 0.8 and report["low_savings"] is None
    calls = [{v: d["calls"] for v, d in g["variants"].items()} for g in report["graphs"]]
    assert calls[0] == calls[1] == {"fresh": 8, "partial": 12}


def test_new_generation_restarts_every_graph():
    case = reference_case(depth=4)
    x0 = noise(case)
    compiled = tokencache.compile(_broken(), policy="toca", ratio=0.25, interval=3, num_steps=10, inner="eager")
    first = generate(case, compiled, x0)
    generate(case, compiled, x0, stop=4)                       # interrupted
    tokencache.new_generation(compiled)
    torch.testing.assert_close(generate(case, compiled, x0), first, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# Lifted constants: tensors that are neither parameters nor buffers

class RopeAttention(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x, table):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = q * table, k * table                    # a per-token rotary-style table (N, head_dim)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class RopeBlock(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attn = RopeAttention(dim, heads)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))
        self.ada = torch.nn.Linear(dim, 2 * dim)

    def forward(self, x, c, table):
        ga, gm = self.ada(c).chunk(2, dim=-1)
        x = x + ga.unsqueeze(1) * self.attn(self.norm1(x), table)
        return x + gm.unsqueeze(1) * self.mlp(self.norm2(x))


class RopeTableModel(torch.nn.Module):
    """A DiT-like model whose rotary table is a plain tensor attribute of a submodule (as Z-Image's
    rope_embedder.freqs_cis or NucleusMoE's pos_embed.pos_freqs): Dynamo lifts it as a graph input
    that is neither a parameter nor a buffer, and it is the first module state the graph reads."""

    def __init__(self, dim=32, heads=2, tokens=16, depth=2):
        super().__init__()
        self.rope = torch.nn.Module()
        self.rope.table = 1.0 + 0.1 * torch.randn(tokens, dim // heads)    # not registered: a plain attribute
        self.embed = torch.nn.Linear(4, dim)
        self.t_embed = torch.nn.Linear(1, dim)
        self.blocks = torch.nn.ModuleList([RopeBlock(dim, heads) for _ in range(depth)])
        self.out = torch.nn.Linear(dim, 4)

    def forward(self, hidden_states, timestep):
        B, C, H, W = hidden_states.shape
        table = self.rope.table[: H * W]
        x = self.embed(hidden_states.flatten(2).transpose(1, 2))
        c = self.t_embed(timestep[:, None] / 1000)
        for block in self.blocks:
            x = block(x, c, table)
        return self.out(x).transpose(1, 2).reshape(B, C, H, W)


def test_lifted_rope_table_is_a_constant():
    from tiny_models import Case

    def build():
        torch.manual_seed(0)
        return RopeTableModel().eval()
    case = Case("rope_table", build, (4, 4, 4), lambda m, x, t: m(x, t))
    x0 = noise(case)
    model = build()
    expected = generate(case, model, x0)
    compiled = tokencache.compile(model, policy="fora", interval=3, num_steps=10, inner="eager")
    generate(case, compiled, x0)
    report = tokencache.report(compiled)            # "has not been run through the tokencache backend" before
    assert report["fallback_reason"] is None and report["variants"]["reuse"]["calls"] == 6
    assert {r["block"] for r in report["regions"]} == {"blocks.0", "blocks.1"}
    exact = tokencache.compile(build(), policy="toca", ratio=1.0, attention="tokens", interval=3, num_steps=10,
                               inner="eager")
    assert rel_err(generate(case, exact, x0), expected) <= 1e-4
    assert tokencache.report(exact)["fallback_reason"] is None
    # the graph takes the table as an input, marked constant; it anchors no model
    from tokencache.runtime.registry import sessions_for
    runtime, _ = sessions_for(compiled)[0]
    constants = [gi for gi in runtime.inputs if gi.constant]
    assert [gi.name for gi in constants] == ["L['self']._modules['rope'].table"]
    assert all(not runtime.inputs[i].constant for i in runtime.param_positions[:runtime.owned_params])


# ---------------------------------------------------------------------------------------------------
# Symbolic shapes: what Dynamo hands over without dynamic=False

class ScaledDiT(ReferenceDiT):
    """ReferenceDiT with an int argument that only scales the output (no shape depends on it)."""

    def forward(self, hidden_states, timestep, class_labels, scale: int = 1):
        return super().forward(hidden_states, timestep, class_labels) * scale


def _generate_scaled(model, x0, scale, steps=10):
    x = x0.clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            t = (sigmas[i] * 1000).expand(x.shape[0]).contiguous()
            x = x + (sigmas[i + 1] - sigmas[i]) * model(x, t, torch.arange(x.shape[0]) % 10, scale)
    return x


def test_int_input_passes_through_and_caching_applies():
    """A second value of an int argument makes Dynamo recompile with a SymInt input; it changes no
    tensor shape, so the graph is cached as usual (it crashed in runtime.assemble before)."""
    case = reference_case()
    torch.manual_seed(0)
    model = ScaledDiT().eval()
    x0 = noise(case)
    compiled = torch.compile(model, backend="tokencache",
                             options=dict(policy="toca", ratio=1.0, attention="tokens", interval=3, num_steps=10,
                                          inner="eager"))
    for scale in (1, 2, 3):
        got = _generate_scaled(compiled, x0, scale)
        assert rel_err(got, _generate_scaled(model, x0, scale)) <= 1e-4
    report = tokencache.report(compiled)
    symbolic = report["graphs"][-1]
    assert symbolic["fallback_reason"] is None and symbolic["variants"]["partial"]["calls"] == 12


def test_symbolic_shapes_are_specialised():
    """Batch 2, then 4, then 6 without dynamic=False: Dynamo's second graph has a symbolic batch
    size; tokencache makes it static per shape (one runtime each) and caches each."""
    case = reference_case()
    torch.manual_seed(0)
    model = ReferenceDiT().eval()
    compiled = torch.compile(model, backend="tokencache",
                             options=dict(policy="toca", ratio=1.0, attention="tokens", interval=3, num_steps=10,
                                          inner="eager"))
    for batch in (2, 4, 6):
        x0 = noise(case, batch=batch)
        assert rel_err(generate(case, compiled, x0), generate(case, model, x0)) <= 1e-4
    report = tokencache.report(compiled)
    graphs = report["graphs"]
    assert len(graphs) == 3 and report["recompiles"] == 2
    assert [g["capture"]["compile_id"] for g in graphs] == ["0/0", "0/1", "0/1"]
    for g in graphs:
        assert g["fallback_reason"] is None and g["variants"]["partial"]["calls"] == 6
    assert [r["tokens"] for r in graphs[2]["regions"]][:1] == [64]


def test_specialise_folds_sizes_into_literals():
    from tokencache.compiler.specialise import specialise, symbolic_shapes

    captured = []

    def backend(gm, example_inputs):
        captured.append((gm, list(example_inputs)))
        return gm.forward

    def f(x):
        B, N, C = x.shape
        return x.reshape(B * N, C).sum(0) + N

    compiled = torch.compile(f, backend=backend)
    compiled(torch.randn(2, 3, 4))
    compiled(torch.randn(2, 5, 4))                 # Dynamo recompiles with a symbolic N
    gm, example = captured[-1]
    assert symbolic_shapes(gm)
    from tokencache.compiler.specialise import concrete
    args = [torch.randn(2, 7, 4) if isinstance(a, torch.Tensor) else 7 for a in map(concrete, example)]
    static = specialise(gm, args)
    assert not symbolic_shapes(static)
    reshape = next(n for n in static.graph.nodes if n.op == "call_method" and n.target == "reshape")
    assert reshape.args[1:] == (14, 4)
    torch.testing.assert_close(static(*args)[0], f(args[-1] if isinstance(args[-1], torch.Tensor) else args[1]))


# ---------------------------------------------------------------------------------------------------
# Tiny diffusers models (random weights, built from config) that Dynamo does not hand over as one
# clean static graph

def _zoo_run(name, options, dynamic=None, steps=4, entry=None):
    """(uncompiled result, compiled result, report, tokencache warnings) of a short generation."""
    import warnings

    from tokencache.models import zoo

    entry = entry or zoo.entry(name)
    model = entry.build()
    expected = zoo.denoise(model, entry, steps=steps)
    kwargs = {} if dynamic is None else {"dynamic": dynamic}
    compiled = torch.compile(model, backend="tokencache", options=dict(inner="eager", num_steps=steps, interval=2,
                                                                        **options), **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = zoo.denoise(compiled, entry, steps=steps)
        report = tokencache.report(compiled)
    json.dumps(report)
    return expected, got, report, [str(w.message) for w in caught if str(w.message).startswith("tokencache")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Mochi", "HunyuanVideo", "HiDream", "HunyuanVideo15"])
def test_without_dynamic_false_nothing_crashes(name):
    """Without dynamic=False these crashed in runtime.assemble ('int' object has no attribute
    'device') for every policy: Dynamo hands over SymInt inputs after a recompile."""
    expected, got, report, _ = _zoo_run(name, dict(policy="none"))
    assert rel_err(got, expected) <= 1e-5
    expected, got, report, _ = _zoo_run(name, dict(policy="toca", ratio=0.5))
    assert torch.isfinite(got).all()
    # cached, or each uncached part says why
    assert report["flop_fraction"] < 0.8 or report["low_savings"]["reason"]
    assert all(u["reason"] for u in report["uncached"])


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [None, False])
@pytest.mark.parametrize("name", ["ZImage", "Kandinsky5", "NucleusMoEImage"])
def test_lifted_constants_in_diffusers_models(name, dynamic):
    """RoPE tables lifted as graph inputs: report() raised "has not been run through the tokencache
    backend"; NucleusMoE-Image with toca raised KeyError in graph_edit.node_by_name."""
    _, got, report, _ = _zoo_run(name, dict(policy="toca", ratio=0.5), dynamic=dynamic)
    assert report["fallback_reason"] is None and report["variants"]["partial"]["calls"] > 0
    assert report["flop_fraction"] < 0.9 and torch.isfinite(got).all()


@pytest.mark.slow
def test_framepack_graph_breaks_are_listed_and_its_blocks_cached():
    """`.item()` splits HunyuanVideo-Framepack into several graphs; its blocks then run as their
    own frames. Before: `ff.net.0` was taken for a block and the FLOP fraction was 0.87-0.91."""
    expected, got, report, _ = _zoo_run("HunyuanVideoFramepack", dict(policy="none"))
    assert rel_err(got, expected) <= 1e-5
    _, got, report, _ = _zoo_run("HunyuanVideoFramepack", dict(policy="toca", ratio=0.25))
    assert len(report["graphs"]) >= 3 and torch.isfinite(got).all()
    assert any("item()" in b["reason"] for b in report["graph_breaks"])
    blocks = {r["block"] for g in report["graphs"] for r in g["regions"]}
    assert "" in blocks and not any(b.endswith(".net.0") for b in blocks)
    cached = [g for g in report["graphs"] if g["fallback_reason"] is None and g["regions"]
              and any(v["calls"] for name, v in g["variants"].items() if name != g["schedule"][0])]
    assert len(cached) >= 2
    assert report["flop_fraction"] < 0.8


@pytest.mark.slow
def test_low_savings_say_why_once():
    """HunyuanVideo 1.5 built with its ByT5 text projection at diffusers' fixed 2048 width (the zoo
    narrows it) spends its FLOPs outside any block: caching saves almost nothing. report() says so
    with the modules, and one warning."""
    import dataclasses

    from tokencache.models import zoo

    wide = dataclasses.replace(zoo.entry("HunyuanVideo15"), after_build=None)
    _, _, report, warned = _zoo_run("HunyuanVideo15", dict(policy="fora"), dynamic=False, entry=wide)
    low = report["low_savings"]
    assert low is not None and low["flop_fraction"] > 0.8
    assert "context_embedder_2" in low["reason"] and low["outside_regions"]["flop_share"] > 0.5
    assert sum("caching saves" in w for w in warned) == 1


@pytest.mark.slow
def test_unet_transformer_blocks_are_found_and_cached():
    from diffusers import UNet2DConditionModel
    from tiny_models import Case

    def build():
        torch.manual_seed(0)
        return UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                    out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                    attention_head_dim=4, norm_num_groups=4).eval()

    def call(m, x, t):
        text = torch.randn(x.shape[0], 5, 16, generator=torch.Generator().manual_seed(1))
        return m(x, t, encoder_hidden_states=text, return_dict=False)[0]
    case = Case("unet", build, (4, 8, 8), call)
    x0 = noise(case)
    model = build()
    expected = generate(case, model, x0, steps=6)
    compiled = tokencache.compile(model, policy="toca", ratio=1.0, attention="tokens", interval=3, num_steps=6,
                                  inner="eager")
    assert rel_err(generate(case, compiled, x0, steps=6), expected) <= 1e-4
    report = tokencache.report(compiled)
    blocks = {r["block"] for r in report["regions"]}
    assert "down_blocks.1.attentions.0.transformer_blocks.0" in blocks
    assert "up_blocks.0.attentions.1.transformer_blocks.0" in blocks and len(blocks) == 4
    assert report["fallback_reason"] is None and report["variants"]["partial"]["calls"] == 4


def test_a_failing_cached_variant_costs_caching_not_the_model():
    """A rewrite that should not have applied (a cached variant that raises when it first runs):
    the graph runs fresh from then on, with the reason in a warning and in report()."""
    from tokencache.runtime.registry import sessions_for

    case = reference_case()
    model = _unbroken(depth=2)
    x0 = noise(case)
    compiled = tokencache.compile(model, policy="toca", ratio=0.25, interval=3, num_steps=10, inner="eager")
    generate(case, compiled, x0, stop=1)                      # the fresh step compiles the runtime
    runtime, _ = sessions_for(model)[0]

    def broken(*args):
        raise RuntimeError("The size of tensor a (2) must match the size of tensor b (8)")
    runtime.compiled["partial"] = broken
    tokencache.new_generation(compiled)
    with pytest.warns(UserWarning, match="'partial' variant failed"):
        got = generate(case, compiled, x0)
    assert rel_err(got, generate(case, model, x0)) <= 1e-5      # every step ran fresh: exact
    report = tokencache.report(compiled)
    assert "'partial' variant failed" in report["fallback_reason"] and list(report["variants"]) == ["fresh"]


class _VmapInside(torch.nn.Module):
    """A forward that calls torch.vmap (AnyFlowFAR and Kandinsky 6 SR do): Dynamo records functorch's
    nesting calls, whose values nothing uses; dead-code elimination must keep them."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x, timestep):
        rows = torch.vmap(lambda row: torch.tanh(row) * 2)(x)
        return self.proj(rows) * timestep[:, None, None]


def _none_matches_eager(model, x, t):
    """One call under policy none gives what the uncompiled model gives."""
    with torch.no_grad():
        expected = model(x, t)
        got = torch.compile(model, backend="tokencache", dynamic=False,
                            options=dict(policy="none", num_steps=2, inner="eager"))(x, t)
    torch.testing.assert_close(got, expected)


def test_torch_vmap_inside_the_model_runs():
    _none_matches_eager(_VmapInside().eval(), torch.randn(2, 4, 8), torch.ones(2))


class _MaskWrittenInPlace(torch.nn.Module):
    """AceStep builds its sliding-window mask with `mask.masked_fill_(window, 0.0)` and never uses
    the call's result: dead-code elimination must keep the write (it dropped it: unmasked attention)."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x, timestep):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        n = x.shape[1]
        index = torch.arange(n)
        mask = torch.full((n, n), float("-inf"))
        mask.masked_fill_((index[:, None] - index[None, :]).abs() <= 1, 0.0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * timestep[:, None, None]


def test_in_place_write_with_unused_result_is_kept():
    _none_matches_eager(_MaskWrittenInPlace().eval(), torch.randn(2, 6, 8), torch.ones(2))


def test_dead_in_place_write_on_a_dead_tensor_is_dropped():
    """The rule keeps only writes someone reads: a scratch tensor written and never read goes."""
    from tokencache.compat import keeps_in_dead_code_elimination

    graph = fx.Graph()
    x = graph.placeholder("x")
    scratch = graph.call_function(torch.zeros, (4,))
    graph.call_method("add_", (scratch, 1.0))
    graph.output(x)
    graph.eliminate_dead_code(is_impure_node=keeps_in_dead_code_elimination)
    assert [n.op for n in graph.nodes] == ["placeholder", "output"]


class _AttentionWithBreak(torch.nn.Module):
    """Self-attention whose processor breaks the graph (Mochi's calls `nonzero` on the prompt mask)."""

    def __init__(self, dim):
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        torch._dynamo.graph_break()
        return self.out(F.scaled_dot_product_attention(q, k, v).squeeze(1))


class _SplitBlock(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn = _AttentionWithBreak(dim)
        self.ff = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x, c):
        x = x + self.attn(x)
        return x + self.ff(x * (1 + c[:, None]))


class _SplitBlocksModel(torch.nn.Module):
    def __init__(self, dim=16, depth=2):
        super().__init__()
        self.t = torch.nn.Linear(1, dim)
        self.blocks = torch.nn.ModuleList(_SplitBlock(dim) for _ in range(depth))
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x, timestep):
        c = self.t(timestep[:, None])
        for block in self.blocks:
            x = block(x, c)
        return self.proj(x)


def _split_generate(model, x0, steps=6):
    x = x0
    with torch.no_grad():
        for i in range(steps):
            x = x - 0.1 * model(x, torch.full((x0.shape[0],), 1.0 - i / steps))
    return x


def test_block_split_by_a_break_in_its_attention_caches_the_rest_of_the_block():
    """The graph after the break (Dynamo's resume function of the block's forward, module paths
    relative to the block) holds the feed-forward: its module is the list entry `blocks.N`, so the
    graph is that block and its feed-forward is cached token-wise (the attention, in the graphs of
    the split processor, runs every step)."""
    torch.manual_seed(0)
    model = _SplitBlocksModel().eval()
    x0 = torch.randn(2, 12, 16)
    expected = _split_generate(model, x0)
    exact = tokencache.compile(model, policy="toca", ratio=1.0, attention="tokens", interval=3, num_steps=6,
                               inner="eager")
    assert rel_err(_split_generate(exact, x0), expected) <= 1e-5
    torch._dynamo.reset()
    compiled = tokencache.compile(model, policy="toca", ratio=0.25, interval=3, num_steps=6, inner="eager")
    got = _split_generate(compiled, x0)
    assert 0 < rel_err(got, expected) < 0.2
    report = tokencache.report(compiled)
    cached = [g for g in report["graphs"] if g["regions"]]
    assert {g["capture"]["module"] for g in cached} <= {"blocks.0", "blocks.1"} and cached
    assert all(r["region"] == "ff" and r["token_wise"] for g in cached for r in g["regions"])
    assert report["flops_per_generation"] < 0.8 * report["flops_uncached_generation"]


class _FlexOrDense(torch.nn.Module):
    """One block whose self-attention is flex_attention or SDPA (same weights, same result)."""

    def __init__(self, flex: bool, dim=16):
        super().__init__()
        self.flex = flex
        self.blocks = torch.nn.ModuleList([_FlexBlock(dim)])

    def forward(self, x, timestep):
        for block in self.blocks:
            x = block(x, self.flex)
        return x * timestep[:, None, None]


class _FlexBlock(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn = torch.nn.Linear(dim, 3 * dim)
        self.ff = torch.nn.Linear(dim, dim)

    def forward(self, x, flex):
        from torch.nn.attention.flex_attention import flex_attention

        q, k, v = self.attn(x).unsqueeze(1).chunk(3, dim=-1)
        attend = flex_attention if flex else F.scaled_dot_product_attention
        return x + self.ff(attend(q, k, v).squeeze(1))


def test_report_counts_flex_attention_as_dense_attention():
    """FlopCounterMode cannot run flex_attention (AnyFlowFAR, Kandinsky 6 SR: report() raised);
    it counts as the dense attention it computes, so both models report the same FLOPs."""
    flops = {}
    for flex in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = _FlexOrDense(flex).eval()
        compiled = torch.compile(model, backend="tokencache", dynamic=False,
                                 options=dict(policy="fora", num_steps=2, inner="eager"))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t in (1.0, 0.5):
                compiled(torch.randn(2, 8, 16), torch.full((2,), t))
        flops[flex] = tokencache.report(compiled)["flops_uncached_generation"]
    assert flops[True] == flops[False] > 0


def test_graph_recompiled_mid_generation_runs_every_generation_alike():
    """The first step's latent is contiguous, later ones are not (JoyImage's loop): Dynamo recompiles
    the model's frame at step 1, and that graph joins each generation from step 1 on. It must
    drop its caches when it joins (it reused the previous generation's, so generations differed)."""
    case = reference_case(depth=2)
    model = case.build()
    x0 = noise(case)

    def run(m):
        x = x0.clone()
        sigmas = torch.linspace(1.0, 0.0, 7)
        with torch.no_grad():
            for i in range(6):
                t = (sigmas[i] * 1000).expand(x.shape[0]).contiguous()
                latent = x if i == 0 else x.transpose(2, 3).contiguous().transpose(2, 3)   # other strides
                x = x + (sigmas[i + 1] - sigmas[i]) * case.call(m, latent, t)
        return x

    expected = run(model)
    compiled = tokencache.compile(model, policy="fora", interval=3, num_steps=6, inner="eager")
    generations = [run(compiled) for _ in range(3)]
    assert len(tokencache.report(compiled)["graphs"]) == 2
    for later in generations[1:]:
        torch.testing.assert_close(later, generations[0], rtol=0, atol=0)
    assert rel_err(generations[0], expected) < 0.05
