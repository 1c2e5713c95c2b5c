"""Find the cacheable regions of a captured transformer graph.

A *block* is the innermost numbered module holding an attention (`transformer_blocks.3`, see
blocks.py); a *region* is a
direct child of a block (`transformer_blocks.3.ff`) whose nodes form a clean unit of dataflow:
one token-major tensor input from outside (B, N, C), one output used outside (B, N, C'), and
nothing else leaking. The output is what gets cached: it is taken before the block applies its
gate and residual add, so cached values re-enter with the *current* gates.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch.fx as fx

from .blocks import child_of, find_blocks
from .blocks import inside as in_block
from .token_axis import SDPA, NotTokenLocal, op_name, propagate, shape_of

_COMPUTE = {"linear", "matmul", "bmm", "conv2d", "conv1d", SDPA, "baddbmm"}


@dataclass
class Region:
    name: str                 # normalised module path, e.g. "transformer_blocks.3.ff"
    block: str                # "transformer_blocks.3"
    kind: str                 # "self_attention" | "cross_attention" | "feed_forward"
    nodes: list[str]          # the region's nodes, in graph order
    input: str                # token-major input node (outside the region)
    output: str               # the node whose value leaves the region (cached)
    batch: int
    tokens: int
    in_features: int
    out_features: int
    token_wise: bool          # can run on K gathered rows
    reason: str | None = None  # why not token-wise
    attention: str | None = None                           # the SDPA node
    token_axes: dict[str, int] = field(default_factory=dict)  # token-path node -> its token axis
    value: str | None = None                               # attention: the SDPA's value input node

    def summary(self) -> dict:
        return {"region": self.name, "block": self.block, "kind": self.kind, "tokens": self.tokens,
                "token_wise": self.token_wise, "reason": self.reason}


@dataclass
class Analysis:
    blocks: list[str]
    regions: list[Region]
    rejected: list[tuple[str, str]]     # (module path, why it is not a region)
    block_outputs: dict[str, str] = field(default_factory=dict)  # block -> the one (B, N, C) tensor leaving it


def module_path(node: fx.Node) -> str:
    """Normalised path of the innermost module a node was traced in ('' at top level)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    raw = list(stack.values())[-1][0]
    raw = raw.replace("L['self']", "", 1)
    raw = re.sub(r"\.__dict__\['_modules'\]\['([^']+)'\]", r".\1", raw)
    raw = re.sub(r"\._modules\['([^']+)'\]", r".\1", raw)
    raw = re.sub(r"\['([^']+)'\]", r".\1", raw)
    return raw.strip(".")


def analyse(gm: fx.GraphModule) -> Analysis:
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    paths = {n.name: module_path(n) for n in nodes}
    blocks = find_blocks(nodes, paths)
    regions, rejected = [], []
    for block in blocks:
        children: dict[str, list[fx.Node]] = {}
        for n in nodes:
            child = child_of(paths[n.name], block)
            if child is not None:
                children.setdefault(child, []).append(n)
        for child, members in children.items():
            if not any(op_name(n) in _COMPUTE for n in members):
                continue  # norms, modulation, activations: not worth caching on their own
            region = _as_region(child, block, members)
            if isinstance(region, str):
                rejected.append((child, region))
            else:
                regions.append(region)
    return Analysis(blocks=[b for b in blocks if any(r.block == b for r in regions)] or blocks,
                    regions=regions, rejected=rejected, block_outputs=_block_outputs(nodes, paths, blocks))


def _block_outputs(nodes, paths, blocks) -> dict[str, str]:
    """The residual stream leaving each block: its only 3-D tensor used outside the block."""
    found = {}
    for block in blocks:
        inside = {n.name for n in nodes if in_block(paths[n.name], block)}
        leaving = [n for n in nodes if n.name in inside and len(shape_of(n) or ()) == 3
                   and any(u.name not in inside for u in n.users)]
        if len(leaving) == 1:
            found[block] = leaving[0].name
    return found


def _as_region(name: str, block: str, members: list[fx.Node]) -> Region | str:
    inside = {n.name for n in members}
    outputs = [n for n in members if any(u.name not in inside for u in n.users)]
    external: list[fx.Node] = []
    for n in members:
        external += [a for a in n.all_input_nodes if a.name not in inside and a not in external]
    if len(outputs) != 1:
        return f"{len(outputs)} values leave the module (need exactly one)"
    out = outputs[0]
    out_shape = shape_of(out)
    if out_shape is None or len(out_shape) != 3:
        return f"its output {out.name} is not a (batch, tokens, channels) tensor"
    sdpas = [n for n in members if op_name(n) == SDPA]
    candidates = [a for a in external if (shape_of(a) or ())[:2] == out_shape[:2] and len(shape_of(a)) == 3]
    if not candidates:
        return "no token-major input with the output's (batch, tokens) shape"
    if len(sdpas) > 1:
        return f"{len(sdpas)} attention ops in one module"
    if sdpas:
        return _attention_region(name, block, members, candidates, out, sdpas[0])
    if len(candidates) != 1:
        return f"{len(candidates)} token-major inputs (need exactly one)"
    x = candidates[0]
    B, N, C = shape_of(x)
    region = Region(name, block, "feed_forward", [n.name for n in members], x.name, out.name,
                    B, N, C, out_shape[2], token_wise=True)
    try:
        axes = propagate(members, x, 1, N)
        if axes.get(out.name) != 1:
            raise NotTokenLocal(f"the output's token axis is {axes.get(out.name)}, not 1")
        region.token_axes = axes
    except NotTokenLocal as e:
        region.token_wise, region.reason = False, f"not token-local: {_mixers(members) or e}"
    return region


def _sdpa_arg(node: fx.Node, index: int, name: str):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _mixers(members: list[fx.Node]) -> str:
    """Name the convolutions/pooling in a region: the usual reason a feed-forward mixes tokens."""
    found = []
    for n in members:
        name = op_name(n)
        if name.startswith(("conv", "avg_pool", "max_pool")):
            weight = shape_of(n.args[1]) if name.startswith("conv") and len(n.args) > 1 else None
            kernel = "x".join(map(str, weight[2:])) if weight and len(weight) > 2 else "?"
            found.append(f"{name} at {n.name} (kernel {kernel}) mixes neighbouring tokens")
    return "; ".join(found)


def _attention_region(name, block, members, candidates, out, sdpa) -> Region | str:
    def ancestors(node: fx.Node) -> set[str]:
        seen, todo = set(), [node]
        while todo:
            n = todo.pop()
            for a in n.all_input_nodes:
                if a.name not in seen:
                    seen.add(a.name)
                    todo.append(a)
        return seen

    q, k, v = (_sdpa_arg(sdpa, i, name) for i, name in enumerate(("query", "key", "value")))
    if not all(isinstance(t, fx.Node) for t in (q, k, v)):
        return "attention whose query/key/value are not graph values"
    for x in candidates:
        feeds = [x.name in ancestors(t) | {t.name} for t in (q, k, v)]
        if not feeds[0]:
            continue
        kind = "self_attention" if feeds[1] and feeds[2] else "cross_attention"
        B, N, C = shape_of(x)
        q_path = ancestors(q) | {q.name}
        region = Region(name, block, kind, [n.name for n in members], x.name, out.name, B, N, C,
                        shape_of(out)[2], token_wise=True, attention=sdpa.name,
                        value=v.name if isinstance(v, fx.Node) else None)
        try:
            member_q = [n for n in members if n.name in q_path]
            q_axes = propagate(member_q, x, 1, N)
            if q_axes.get(q.name) != len(shape_of(q)) - 2:
                raise NotTokenLocal("queries do not have tokens on the second-to-last axis")
            after = [n for n in members if n.name not in q_path and n is not sdpa]
            out_axes = propagate(after, sdpa, len(shape_of(sdpa)) - 2, N)
            if out_axes.get(out.name) != 1:
                raise NotTokenLocal("the attention output does not keep tokens on axis 1")
            region.token_axes = {**q_axes, **out_axes}
        except NotTokenLocal as e:
            region.token_wise, region.reason = False, f"not token-local: {e}"
        return region
    return "attention whose queries do not come from a token-major input"

