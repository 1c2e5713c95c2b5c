"""partial (ToCa): each token-wise region recomputes only its K highest-scoring tokens.

    score -> topk(K) -> gather K input rows -> the region's token path on K rows
          -> scatter into the cached output -> the block continues with the full cache

K = round(ratio * N) is a Python int fixed per region, so every shape is static. For attention
regions only the query path is gathered: keys and values still see all N tokens, which makes the
K recomputed rows exact (a self-attention under attention="reuse" is handled by the reuse pass).

Rows are gathered as early as the graph allows: when the region's input is made by row-local ops
(a LayerNorm and the adaLN modulation, typically) from a tensor that is computed anyway (the
residual stream), the K rows of that tensor are gathered and those ops run on K rows too. The N-row
region input then only feeds the score, and inductor computes it inside the score's reduction
instead of writing it out and reading it back (DiT-S partial step: 12 score kernels ~30 % faster).
"""
from __future__ import annotations

from typing import NamedTuple

import torch.fx as fx

from ..compat import drop_example_value, example_value
from ..compiler.regions import Region
from ..compiler.token_axis import CONTEXT, IMAGE, NotTokenLocal, propagate, shape_of, size_arg_positions, total
from ..config import CacheConfig
from ..ops import token_ops
from ..switches import current as current_switches
from .graph_edit import add_state_input, add_state_outputs, copy_module, finish, node_by_name, replace_uses_outside


def tokens_for(region: Region, ratio: float) -> int:
    return max(1, min(region.tokens, round(ratio * region.tokens)))


def partial(gm: fx.GraphModule, regions: list[Region], config: CacheConfig, selection: str = "score",
            ratios: dict[str, float] | None = None) -> fx.GraphModule:
    """`selection`: "score", "random" or "vnorm" (see token_ops); `ratios`: per-region ratio overrides."""
    gm = copy_module(gm)
    before = {n.name: n for n in gm.graph.nodes}
    for region in regions:
        if region.input not in before or region.output not in before:
            # dead in `gm`: what it fed is reused whole (NucleusMoE's text projection feeds only
            # an attention that is not token-local), so dead-code elimination dropped it
            continue
        ratio = (ratios or {}).get(region.name, config.ratio)
        _rewrite(gm, region, config, selection, tokens_for(region, ratio), before)
    return finish(gm)


class Emitter:
    """Appends call_function nodes one after another, starting after `anchor`."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node):
        self.graph, self.anchor = graph, anchor
        self.created: set[str] = set()

    def __call__(self, fn, *args) -> fx.Node:
        with self.graph.inserting_after(self.anchor):
            self.anchor = self.graph.call_function(fn, args)
        self.created.add(self.anchor.name)
        return self.anchor

    def copy(self, node: fx.Node, env: dict) -> fx.Node:
        with self.graph.inserting_after(self.anchor):
            self.anchor = self.graph.node_copy(node, lambda a: env.get(a, a))
        self.created.add(self.anchor.name)
        return self.anchor


class Rows(NamedTuple):
    input: fx.Node            # the region input's K rows
    output: fx.Node           # the output's K rows (B, K, C')
    context: fx.Node | None   # joint attention, text recomputed: its text output (B, L, C')
    created: set[str]         # names of the nodes made


def region_on_rows(gm: fx.GraphModule, region: Region, index: fx.Node, k: int, emit: Emitter,
                   keep_context: bool = True, before: dict[str, fx.Node] | None = None) -> Rows:
    """Gather rows `index` (B, K) of the region input, or of the tensor its row-local prelude
    starts from (row_prelude), and run the prelude and the region's token path on them.

    Joint attention: the image queries are K rows joined with the text queries (all L of them
    when `keep_context`, none otherwise); slices, splits and reshapes of the joined token axis are
    resized to match, and per-token tables (RoPE) are gathered at the rows' original positions."""
    x, out = node_by_name(gm, region.input), node_by_name(gm, region.output)
    # switched off for an ablation: gather the region input itself
    source, prelude_axes = row_prelude(gm, region, emit.created) if current_switches().early_gather else (x, {})
    env = {source: emit(token_ops.gather_rows, source, index)}
    path, info = {**prelude_axes, **region.token_axes}, region.path

    def size(segment) -> int:
        kind, n = segment
        return k if kind == IMAGE else n if keep_context else 0

    def sizes(layout) -> list[int]:
        return [size(seg) for seg in layout]

    positions: dict = {}
    # by the graph as it was before any region was rewritten: a copy may take the name of a path
    # node that an earlier pass removed as dead
    originals = [n for name, n in (before or {n.name: n for n in gm.graph.nodes}).items()
                 if name in path and n is not source]
    for node in originals:
        layout = info.layouts.get(node.name, ((IMAGE, region.tokens),))
        if not keep_context and all(kind == CONTEXT for kind, _ in layout):
            continue                      # text-only values: the cache stands in for them
        mapping = dict(env)
        for arg_name, pos in info.tables.get(node.name, []):
            if layout not in positions:
                positions[layout] = emit(token_ops.layout_positions, index, tuple(layout), keep_context)
            table = node_by_name(gm, arg_name)
            rank = len(example_value(node).shape)
            mapping[table] = emit(token_ops.gather_table, table, positions[layout],
                                  pos + rank - len(example_value(table).shape), rank)
        copy = emit.copy(node, mapping)
        drop_example_value(copy)
        _resize(copy, path[node.name], total(layout), sum(sizes(layout)))
        src = node.args[0] if node.args else None
        if node.name in info.slices:
            j0, j1 = info.slices[node.name]
            before = sizes(info.layouts[src.name])
            _reslice(copy, path[src.name], sum(before[:j0]), sum(before[:j1]))
        if node.name in info.splits:
            before = sizes(info.layouts[src.name])
            copy.args = (copy.args[0], [sum(before[j0:j1]) for j0, j1 in info.splits[node.name]], *copy.args[2:])
        if node.name in info.joins and not keep_context:
            parts = [a for i, a in enumerate(copy.args[0]) if i not in info.joins[node.name]]
            copy.args = (parts, *copy.args[1:])
        env[node] = copy
    context = next((n for n in env if n.name == region.context_output), None)
    return Rows(env[x], env[out], env.get(context), {n.name for n in env.values()})


def _reslice(node: fx.Node, axis: int, start: int, stop: int) -> None:
    """Point a getitem's (or setitem's) slice of the token axis at the resized segments [start, stop)."""
    index = node.args[1]
    items = list(index) if isinstance(index, tuple) else [index]
    items[axis] = slice(start, stop)
    node.args = (node.args[0], tuple(items) if isinstance(index, tuple) else items[0], *node.args[2:])  # setitem: value


def row_prelude(gm: fx.GraphModule, region: Region, created: set[str]) -> tuple[fx.Node, dict[str, int]]:
    """(tensor to gather, token axis of each prelude node): the row-local ops that lead to the
    region input and that nothing but the region (and this rewrite's score) uses, walked back to
    the first tensor something else also reads. No prelude: (the region input, {}).

    Only for regions whose token path takes every use of the input: if the N-row input stays
    needed (keys and values of a self-attention), gathering earlier would only add work."""
    x = node_by_name(gm, region.input)
    inside, downstream = set(region.nodes), {x.name}
    for node in gm.graph.nodes:
        if node.name in inside and any(a.name in downstream for a in node.all_input_nodes):
            if node.name not in region.token_axes:
                return x, {}            # e.g. keys/values of a self-attention: N rows of x stay needed
            downstream.add(node.name)
    chain, node, allowed = [], x, set(region.token_axes) | created
    while True:
        source = _token_input(node, region.batch, region.tokens)
        if source is None or any(u.name not in allowed for u in node.users):
            break
        chain.insert(0, node)
        allowed, node = {n.name for n in chain}, source
    if not chain:
        return x, {}
    try:
        axes = propagate(chain, node, 1, region.tokens)
    except NotTokenLocal:
        return x, {}
    if axes.get(x.name) != 1 or any(n.name not in axes for n in chain):
        return x, {}
    return node, {n.name: axes[n.name] for n in chain}


def _token_input(node: fx.Node, batch: int, tokens: int) -> fx.Node | None:
    """The one (batch, tokens, ...) tensor an op reads, if its other tensor inputs are the same
    for every token (shapes that broadcast with size 1 or nothing on the token axis)."""
    if node.op not in ("call_function", "call_method"):
        return None
    found = []
    for arg in node.all_input_nodes:
        shape = shape_of(arg)
        if shape is None:
            return None
        if len(shape) >= 2 and shape[:2] == (batch, tokens):
            found.append(arg)
        elif len(shape) >= 2 and shape[-2] != 1:
            return None               # per-token values (a positional table) would need gathering too
    return found[0] if len(found) == 1 else None


def _rewrite(gm: fx.GraphModule, region: Region, config: CacheConfig, selection: str, k: int,
             before: dict[str, fx.Node]) -> None:
    cache = add_state_input(gm, f"cache:{region.name}")
    if selection == "random":
        rng = add_state_input(gm, f"rng:{region.name}")
    else:
        prior = add_state_input(gm, f"{'vnorm' if selection == 'vnorm' else 'ref'}:{region.name}")
        stale = add_state_input(gm, f"stale:{region.name}")
    x, out = node_by_name(gm, region.input), node_by_name(gm, region.output)
    last_member = [n for n in gm.graph.nodes if n.name in set(region.nodes)][-1]
    emit = Emitter(gm.graph, last_member)     # new nodes go after the region, in order
    pair = config.cfg_shared_tokens and region.batch >= 2 and region.batch % 2 == 0
    if selection == "random":
        new_rng = emit(token_ops.next_random, rng)
        score = emit(token_ops.random_scores, new_rng, region.batch)
    elif selection == "vnorm":
        score = emit(token_ops.prior_scores, prior, stale, config.interval, float(config.dynamics_weight),
                     float(config.staleness_weight), pair, config.spatial_grid, float(config.spatial_bonus))
    else:
        score = emit(token_ops.token_scores, x, prior, stale, config.interval, float(config.dynamics_weight),
                     float(config.staleness_weight), pair, config.spatial_grid, float(config.spatial_bonus))
    index = emit(token_ops.top_tokens, score, k)
    keep_context = config.context_tokens == "recompute"
    rows = region_on_rows(gm, region, index, k, emit, keep_context, before)
    out_rows, created = rows.output, rows.created
    new_cache = emit(token_ops.scatter_rows, cache, index, out_rows)
    text = before.get(region.context_output)
    if text is not None:          # (gone when an earlier rewrite left the text stream unused)
        fill = rows.context if keep_context else add_state_input(gm, f"cache:{region.name}:context")
        replace_uses_outside(text, fill, set(region.nodes) | created)
    if selection == "random":
        state = {f"rng:{region.name}": new_rng}
    else:
        # `ref` stays the fresh step's input: dynamics = change since the last fresh step, and no
        # full-size copy of the snapshot per step
        state = {f"stale:{region.name}": emit(token_ops.age_staleness, stale, index)}
    replace_uses_outside(out, new_cache, set(region.nodes) | created)
    add_state_outputs(gm, {f"cache:{region.name}": new_cache, **state})


def _resize(node: fx.Node, axis: int, tokens: int, k: int) -> None:
    """Change a literal token count in a view/reshape size list from N to K (or a joined
    sequence's N + L to K + L)."""
    where = size_arg_positions(node)
    if where is None:
        return
    style, start = where
    args = list(node.args)
    sizes = list(args[start]) if style == "tuple" else args[start:]
    if axis < len(sizes) and sizes[axis] == tokens:
        sizes[axis] = k
        if style == "tuple":
            args[start] = type(node.args[start])(sizes)
        else:
            args[start:] = sizes
        node.args = tuple(args)

