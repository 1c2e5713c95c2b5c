"""Find the cacheable regions of a captured transformer graph.

A *block* is the innermost numbered module holding an attention (`transformer_blocks.3`, see
blocks.py); a *region* is a
direct child of a block (`transformer_blocks.3.ff`) whose nodes form a clean unit of dataflow:
one token-major tensor input from outside (B, N, C), one output used outside (B, N, C'), and
nothing else leaking. The output is what gets cached: it is taken before the block applies its
gate and residual add, so cached values re-enter with the *current* gates.

A *joint attention* (SD3, Flux double blocks, AuraFlow, Qwen-Image, CogVideoX) takes two streams:
the image tokens (B, N, C) and the context/text tokens (B, L, C), attends over both, and returns
one output per stream (the text output is absent in a last, "context pre-only" block). Both
outputs are cached. The image stream is the one with more tokens (the first in graph order on a
tie). Regions of the text stream elsewhere in the block (its feed-forward) are marked
`stream="context"`, so policies can recompute or reuse them whole (CacheConfig.context_tokens).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch.fx as fx

from ..compat import module_path, module_stack
from .blocks import child_of, find_blocks
from .blocks import inside as in_block
from .token_axis import CONTEXT, IMAGE, SDPA, NotTokenLocal, PathInfo, op_name, propagate, shape_of, total

_COMPUTE = {"linear", "matmul", "bmm", "conv2d", "conv1d", SDPA, "baddbmm"}


@dataclass
class Region:
    name: str                 # normalised module path, e.g. "transformer_blocks.3.ff"
    block: str                # "transformer_blocks.3"
    kind: str                 # "self_attention" | "cross_attention" | "joint_attention" | "feed_forward"
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
    path: PathInfo = field(default_factory=PathInfo)        # segment layouts, per-token tables (token_axis)
    stream: str = "image"                                  # "image" | "context" (a joint block's text stream)
    context_input: str | None = None                       # joint attention: the text stream's input
    context_output: str | None = None                      # ... and its output (None: context pre-only)
    context_tokens: int = 0
    out_shape: tuple | None = None                         # a region reused whole whose output is not (B, N, C)

    def summary(self) -> dict:
        out = {"region": self.name, "block": self.block, "kind": self.kind, "tokens": self.tokens,
               "token_wise": self.token_wise, "reason": self.reason}
        if self.kind == "joint_attention":
            out["context_tokens"] = self.context_tokens
        if self.stream != "image":
            out["stream"] = self.stream
        return out

    def cached_outputs(self) -> list[tuple[str, str, tuple[int, int, int]]]:
        """(cache name, output node, its (batch, tokens, channels)) of every value the region
        hands back to the block: one, or two for a joint attention."""
        outs = [(self.name, self.output, self.out_shape or (self.batch, self.tokens, self.out_features))]
        if self.context_output is not None:
            outs.append((f"{self.name}:context", self.context_output, (self.batch, self.context_tokens, self.out_features)))
        return outs


@dataclass
class Analysis:
    blocks: list[str]
    regions: list[Region]
    rejected: list[tuple[str, str]]     # (module path, why it is not a region)
    block_outputs: dict[str, str] = field(default_factory=dict)  # block -> the one (B, N, C) tensor leaving it
    block_tokens: dict[str, int] = field(default_factory=dict)   # block -> the token count of that tensor


def analyse(gm: fx.GraphModule, owner: str | None = None) -> Analysis:
    """The blocks and regions of `gm`; `owner` as in blocks.find_blocks."""
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    paths = {n.name: module_path(n) for n in nodes}
    blocks = find_blocks(nodes, paths, owner)
    regions, rejected = [], []
    for block in blocks:
        children: dict[str, list[fx.Node]] = {}
        inside = {n.name for n in nodes if in_block(paths[n.name], block)}
        for n in nodes:
            call = _module_call(n, paths[n.name], block)
            if call is not None:
                children.setdefault(call, []).append(n)
        for child, members in children.items():
            if not any(op_name(n) in _COMPUTE for n in members):
                continue  # norms, modulation, activations: not worth caching on their own
            region = _as_region(child, block, members)
            if isinstance(region, str):
                rejected.append((child, region))
            else:
                regions.append(region)
        _mark_context_stream([r for r in regions if r.block == block], [n for n in nodes if n.name in inside])
    outputs = _block_outputs(nodes, paths, blocks)
    by_name = {n.name: n for n in nodes}
    return Analysis(blocks=[b for b in blocks if any(r.block == b for r in regions)] or blocks,
                    regions=regions, rejected=rejected, block_outputs=outputs,
                    block_tokens={b: shape_of(by_name[o])[1] for b, o in outputs.items()})


def _module_call(node: fx.Node, path: str, block: str) -> str | None:
    """The module call inside `block` that a node was traced in: normally the block's direct child
    (`attn1`); a second call of one module is `<child>@1` (CogView 4 runs its `ff` on the image,
    then on the text stream: Dynamo keys that call '<id>@1'); a submodule the block calls itself,
    outside its parent's forward, is its own call (LuminaNextDiT's block runs `attn2.to_out.0`
    on both attentions' sum). None: the block's own level."""
    child = child_of(path, block)
    if child is None:
        return None
    for key, module in module_stack(node):               # outermost first
        if module == child or module.startswith(child + "."):
            call = int(key.rsplit("@", 1)[1]) if "@" in key else 0
            return f"{module}@{call}" if call else module
    return child


def _mark_context_stream(regions: list[Region], nodes: list[fx.Node]) -> None:
    """Regions of a joint block that work on the text stream alone: their input descends from a
    joint attention's text output (or, before it, is its text input) and not from its image output
    (CogVideoX's feed-forward runs on both streams joined again: an image-stream region)."""
    def descendants(seed: str | None, joint: Region) -> set[str]:
        found = {seed} if seed else set()
        for n in nodes:
            if n.name not in joint.nodes and any(a.name in found for a in n.all_input_nodes):
                found.add(n.name)
        return found

    for joint in (r for r in regions if r.kind == "joint_attention"):
        text = descendants(joint.context_output or joint.context_input, joint)
        image = descendants(joint.output, joint)
        for r in regions:
            if r.kind != "joint_attention" and ((r.input in text and r.input not in image)
                                                or r.output == joint.context_input):
                r.stream = "context"


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
    sdpas = [n for n in members if op_name(n) == SDPA]
    if len(sdpas) == 1:
        joint = _joint_attention_region(name, block, members, external, outputs, sdpas[0])
        if joint is not None:
            return joint
    if len(outputs) != 1:
        return f"{len(outputs)} values leave the module (need exactly one)"
    out = outputs[0]
    out_shape = shape_of(out)
    if out_shape is None:
        return f"its output {out.name} is not a tensor"
    candidates = [a for a in external if len(out_shape) == 3 and (shape_of(a) or ())[:2] == out_shape[:2]
                  and len(shape_of(a)) == 3]
    if not candidates:
        return _whole(name, block, members, external, out, sdpas)
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
        info = PathInfo()
        axes = propagate(members, x, 1, N, info=info)
        if axes.get(out.name) != 1:
            raise NotTokenLocal(f"the output's token axis is {axes.get(out.name)}, not 1")
        region.token_axes, region.path = axes, info
        if not any(op_name(n) in _COMPUTE for n in members if n.name in axes):
            return "no compute on its tokens (a norm modulated by a projected conditioning)"
    except NotTokenLocal as e:
        region.token_wise, region.reason = False, f"not token-local: {_mixers(members) or e}"
    return region


def _whole(name, block, members, external, out, sdpas) -> Region | str:
    """A module whose one output is not (batch, tokens, channels) (Sana's convolutional feed-forward
    works on (B, C, H, W)): it can still be reused whole in cached steps, never token-wise."""
    shape = shape_of(out)
    # only values over the tokens (or the latent grid): a modulation computed from the timestep
    # embedding ((B, 6C), AdaLN) changes every step and must be recomputed
    tokens_in = [a for a in external if len(shape_of(a) or ()) >= 3 and math.prod(shape_of(a)[1:-1]) > 1]
    if len(shape) < 3 or math.prod(shape[1:-1]) <= 1 or not tokens_in:
        return f"its output {out.name} {tuple(shape)} is not a (batch, tokens, channels) tensor"
    why = (f"its output {out.name} {tuple(shape)} is not a (batch, tokens, channels) tensor" if len(shape) != 3
           else "no token-major input with the output's (batch, tokens) shape")
    return Region(name, block, "self_attention" if sdpas else "feed_forward", [n.name for n in members],
                  tokens_in[0].name, out.name, shape[0], 0, shape_of(tokens_in[0])[-1], shape[-1], token_wise=False,
                  reason=f"{why}: reused whole", out_shape=tuple(shape))


def _sdpa_arg(node: fx.Node, index: int, name: str):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _mixers(members: list[fx.Node]) -> str:
    """Name the convolutions/pooling in a region (the usual reason a feed-forward mixes tokens) and
    products of two computed tensors (linear attention, Sana)."""
    found, inside = [], {n.name for n in members}
    for n in members:
        name = op_name(n)
        if name.startswith(("conv", "avg_pool", "max_pool")):
            weight = shape_of(n.args[1]) if name.startswith("conv") and len(n.args) > 1 else None
            kernel = "x".join(map(str, weight[2:])) if weight and len(weight) > 2 else "?"
            found.append(f"{name} at {n.name} (kernel {kernel}) mixes neighbouring tokens")
        elif name in ("matmul", "bmm") and all(isinstance(a, fx.Node) and a.name in inside for a in n.args[:2]):
            found.append(f"{name} at {n.name} multiplies computed tensors with each other "
                         "(linear attention: keys and values summed over all tokens)")
    return "; ".join(found)


_WRITES = {"setitem", "copy_", "fill_", "zero_", "masked_fill_", "index_put_", "add_", "mul_"}


def _ancestors(node: fx.Node, inside: set[str], reader: fx.Node | None = None) -> set[str]:
    """Names of the nodes `node` depends on, walked within `inside` (external inputs included).
    An in-place write into a value before `reader` (default: `node`) reads it counts as a
    dependency: Wan's RoPE fills an `empty_like` buffer with `out[..., 0::2] = ...`, CogView 4
    rotates the image part of the queries with `query[:, :, L:] = ...` before the attention."""
    order: dict[fx.Node, int] = {}          # graph positions, numbered only once a write turns up

    def before_reader(u: fx.Node) -> bool:
        if not order:
            order.update((n, i) for i, n in enumerate(node.graph.nodes))
        return order[u] < order[reader if reader is not None else node]

    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        writers = [u for u in n.users if u.name in inside and op_name(u) in _WRITES and u.args
                   and u.args[0] is n and before_reader(u)]
        for a in list(n.all_input_nodes) + writers:
            if a.name not in seen:
                seen.add(a.name)
                if a.name in inside:
                    todo.append(a)
    return seen


def _attention_region(name, block, members, candidates, out, sdpa) -> Region | str:
    inside = {n.name for n in members}
    q, k, v = (_sdpa_arg(sdpa, i, name) for i, name in enumerate(("query", "key", "value")))
    if not all(isinstance(t, fx.Node) for t in (q, k, v)):
        return "attention whose query/key/value are not graph values"
    for x in candidates:
        feeds = [x.name in _ancestors(t, inside) | {t.name} for t in (q, k, v)]
        if not feeds[0]:
            continue
        kind = "self_attention" if feeds[1] and feeds[2] else "cross_attention"
        B, N, C = shape_of(x)
        q_path = _ancestors(q, inside, sdpa) | {q.name}
        region = Region(name, block, kind, [n.name for n in members], x.name, out.name, B, N, C,
                        shape_of(out)[2], token_wise=True, attention=sdpa.name,
                        value=v.name if isinstance(v, fx.Node) else None)
        try:
            region.token_axes, region.path = _query_path(members, q_path, x, q, sdpa, N, None)
            if region.token_axes.get(out.name) != 1:
                raise NotTokenLocal("the attention output does not keep tokens on axis 1")
        except NotTokenLocal as e:
            region.token_wise, region.reason = False, f"not token-local: {e}"
        return region
    return "attention whose queries do not come from a token-major input"


def _query_path(members, q_path, x, q, sdpa, tokens, context) -> tuple[dict[str, int], PathInfo]:
    """Token axes from the region input through the queries, and from the attention output on.
    Only the query path is followed: keys and values keep all tokens (Q-only gather is exact)."""
    info = PathInfo()
    q_axes = propagate([n for n in members if n.name in q_path], x, 1, tokens, info=info)
    if q_axes.get(q.name) != len(shape_of(q)) - 2:
        raise NotTokenLocal("queries do not have tokens on the second-to-last axis")
    _note_mask_rows(sdpa, total(info.layouts[q.name]), info)
    after = [n for n in members if n.name not in q_path and n is not sdpa]
    out_axes = propagate(after, sdpa, len(shape_of(sdpa)) - 2, tokens, info=info,
                         start_layout=info.layouts[q.name])
    return {**q_axes, **out_axes}, info


def _note_mask_rows(sdpa: fx.Node, tokens: int, info: PathInfo) -> None:
    """An attention mask with one row per query (HunyuanVideo's token refiner: (B, 1, L, L)) is
    a per-token table of the attention: a partial step gathers the rows of its queries. A mask
    that broadcasts over the queries ((B, 1, 1, N): a key-padding mask) needs nothing."""
    mask = _sdpa_arg(sdpa, 3, "attn_mask")
    if not isinstance(mask, fx.Node):
        return
    shape = shape_of(mask)
    if shape is None:
        raise NotTokenLocal(f"attention mask {mask.name} has no known shape")
    if len(shape) < 2 or shape[-2] == 1:
        return
    if shape[-2] != tokens:
        raise NotTokenLocal(f"attention mask {mask.name} {tuple(shape)} has {shape[-2]} query rows, not {tokens}")
    info.tables.setdefault(sdpa.name, []).append((mask.name, len(shape) - 2))


def _joined(members, q_path, streams, inside) -> bool:
    """Whether the two streams meet in a concatenation on the query path (their tokens joined into
    one sequence), rather than only in elementwise ops (a table of rotations applied to tokens)."""
    for n in members:
        if n.name in q_path and op_name(n) == "cat":
            parts = [a for a in (n.args[0] if n.args else n.kwargs["tensors"]) if isinstance(a, fx.Node)]
            sources = [_ancestors(a, inside) | {a.name} for a in parts]
            if all(any(s.name in src and other.name not in src for src in sources)
                   for s, other in (streams, streams[::-1])):
                return True
    return False


def _joint_attention_region(name, block, members, external, outputs, sdpa) -> Region | str | None:
    """A joint attention over an image stream and a text stream, or None if this is not one."""
    inside = {n.name for n in members}
    q, v = _sdpa_arg(sdpa, 0, "query"), _sdpa_arg(sdpa, 2, "value")
    if not isinstance(q, fx.Node):
        return None
    q_path = _ancestors(q, inside, sdpa) | {q.name}
    streams = [a for a in external if a.name in q_path and len(shape_of(a) or ()) == 3]
    if len(streams) != 2 or shape_of(streams[0])[0] != shape_of(streams[1])[0]:
        return None
    if not _joined(members, q_path, streams, inside):
        return None                 # e.g. a per-token RoPE table (Lumina 2's freqs_cis) beside the tokens
    order = {n.name: i for i, n in enumerate(members[0].graph.nodes)}
    x, c = sorted(streams, key=lambda a: (-shape_of(a)[1], order[a.name]))
    (B, N, C), L = shape_of(x), shape_of(c)[1]
    if not outputs or len(outputs) > 2 or any(len(shape_of(o) or ()) != 3 for o in outputs):
        return f"joint attention whose {len(outputs)} outputs are not (batch, tokens, channels) tensors"
    region = Region(name, block, "joint_attention", [n.name for n in members], x.name, outputs[0].name, B, N, C,
                    shape_of(outputs[0])[2], token_wise=True, attention=sdpa.name,
                    value=v.name if isinstance(v, fx.Node) else None, context_input=c.name, context_tokens=L)
    try:
        axes, info = _query_path(members, q_path, x, q, sdpa, N, L)
        by_layout = {((IMAGE, N),): "image", ((CONTEXT, L),): "context"}
        found = {}
        for o in outputs:
            stream = by_layout.get(info.layouts.get(o.name)) if axes.get(o.name) == 1 else None
            if stream is None or stream in found:
                raise NotTokenLocal(f"output {o.name} is not one stream's tokens on axis 1")
            found[stream] = o
        region.token_axes, region.path = axes, info
    except NotTokenLocal as e:
        region.token_wise, region.reason = False, f"not token-local: {e}"
        if N == L and len(outputs) == 2:
            return f"joint attention whose two streams cannot be told apart ({e})"
        found = {("image" if shape_of(o)[1] == N else "context"): o for o in outputs}
    if "image" not in found:
        return "joint attention without an image-stream output"
    region.output, region.out_features = found["image"].name, shape_of(found["image"])[2]
    region.context_output = found["context"].name if "context" in found else None
    return region
