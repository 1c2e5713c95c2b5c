"""Which modules of a captured graph are transformer blocks.

A *block* is a numbered module (a ModuleList entry, `transformer_blocks.3`) that holds an attention
inside one of its children (`transformer_blocks.3.attn1`), and is the innermost such module:

 - `transformer_blocks.3`: a DiT/PixArt/Flux block (its attention runs in `.attn`).
 - `down_blocks.1.attentions.0.transformer_blocks.0`: a U-Net's transformer block, nested in
   numbered modules that also hold the attention; the innermost one is the block.
 - `ff.net.0`, `attn.to_out.0`: numbered sublayers with no attention inside: never blocks.
 - `blocks.2.attns.0` where the attention ops run in that very module: an attention layer, not a
   block (its children are projections); the numbered module around it is the block.

An attention is a `scaled_dot_product_attention` or a `softmax` (attention written as bmm +
softmax). When Dynamo hands over a graph traced from a block's own `forward` (models that break
the graph between blocks, or inside one: each block then runs as its own frame, module paths
relative to the block), there is no numbered module; if an attention sits in a direct child
(`attn`, `attn1`) and attends over the tokens of a (batch, tokens, channels) output of the graph,
the whole graph is one block, named "" (ROOT). So is a graph traced from a list entry's own
forward with no attention in it (`owner`, the frame's module, is `transformer_blocks.0`): the rest
of a block after a graph break inside its attention (Mochi's processor calls `nonzero`), whose
feed-forward is still the block's. A graph with no attention at
all takes its outermost numbered list entries with compute in a child (`blocks.0` of a
feed-forward-only model), never a numbered sublayer of a named module.
"""
from __future__ import annotations

import torch.fx as fx

from .token_axis import SDPA, op_name, shape_of

ROOT = ""
_ATTENTION = {SDPA, "softmax", "_softmax"}
_COMPUTE = {"linear", "matmul", "bmm", "conv2d", "conv1d", "baddbmm", SDPA}


def inside(path: str, block: str) -> bool:
    """Whether a module path lies in `block` (the block itself included)."""
    return block == ROOT or path == block or path.startswith(block + ".")


def child_of(path: str, block: str) -> str | None:
    """The direct child of `block` that `path` lies in (None: the block's own level, or outside)."""
    if block == ROOT:
        return path.split(".")[0] if path else None
    if not path.startswith(block + "."):
        return None
    return block + "." + path[len(block) + 1:].split(".")[0]


def numbered_prefixes(path: str) -> list[str]:
    """Every prefix of `path` that ends in a list index, outermost first."""
    parts = path.split(".") if path else []
    return [".".join(parts[:i + 1]) for i in range(1, len(parts)) if parts[i].isdigit() and not parts[i - 1].isdigit()]


def is_list_entry(path: str) -> bool:
    """A path made of (list name, index) pairs only: `blocks.0`, `down_blocks.1.attentions.0`; not a
    numbered sublayer inside a named module (`ff.net.0`, `attn.to_out.0`)."""
    parts = path.split(".") if path else []
    return len(parts) % 2 == 0 and all(p.isdigit() != (i % 2 == 0) for i, p in enumerate(parts))


def find_blocks(nodes: list[fx.Node], paths: dict[str, str], owner: str | None = None) -> list[str]:
    """The blocks of a graph, in order of first appearance. `owner`: the model's module whose
    forward the graph was traced from, where known (graph_inputs.frame_owner)."""
    order: dict[str, int] = {}
    holders: set[str] = set()           # numbered modules with an attention inside one of their children
    for i, n in enumerate(nodes):
        path = paths[n.name]
        prefixes = numbered_prefixes(path)
        for p in prefixes:
            order.setdefault(p, i)
        if op_name(n) in _ATTENTION:
            holders.update(p for p in prefixes if p != path)
    blocks = [b for b in holders if not any(o != b and o.startswith(b + ".") for o in holders)]
    if not blocks and ((owner and is_list_entry(owner)) or _is_block_frame(nodes, paths)):
        return [ROOT]
    if not blocks:
        # blocks without attention (feed-forward only): numbered list entries, outermost, with compute
        # in a child; never a numbered sublayer of a named module
        computing = {p for n in nodes if op_name(n) in _COMPUTE
                     for p in numbered_prefixes(paths[n.name]) if p != paths[n.name] and is_list_entry(p)}
        blocks = [b for b in computing if not any(o != b and b.startswith(o + ".") for o in computing)]
    blocks = sorted(blocks, key=order.__getitem__)
    return [_unwrap(b, nodes, paths) for b in blocks]


def _is_block_frame(nodes: list[fx.Node], paths: dict[str, str]) -> bool:
    """A graph traced from a block's own forward: an attention in a direct child (`attn`) whose
    queries hold the tokens of a (batch, tokens, channels) output of the graph (the residual stream
    the block hands on; a joint attention's queries hold both streams' tokens). An attention
    pooling in an embedding module (one query) is no block."""
    if not nodes:
        return False
    output = next(n for n in reversed(nodes[0].graph.nodes) if n.op == "output")
    streams = [s[:2] for s in map(shape_of, output.all_input_nodes) if s is not None and len(s) == 3 and s[1] > 1]
    for n in nodes:
        if op_name(n) == SDPA and paths[n.name] and "." not in paths[n.name]:
            query = n.args[0] if n.args else n.kwargs.get("query")
            q = shape_of(query) if isinstance(query, fx.Node) else None
            # joint attention: the queries are the image and text tokens concatenated
            if q is not None and len(q) >= 3 and any(b == q[0] and 1 < t <= q[-2] for b, t in streams):
                return True
    return False


def _unwrap(block: str, nodes: list[fx.Node], paths: dict[str, str]) -> str:
    """A block whose nodes all lie in one child (a wrapper: HiDream's `double_stream_blocks.0.block`)
    is that child, as long as the attention stays inside a named child of it."""
    while True:
        children = {child_of(paths[n.name], block) for n in nodes if inside(paths[n.name], block)}
        if len(children) != 1 or None in children:
            return block
        (child,) = children
        holding = {child_of(paths[n.name], child) for n in nodes if op_name(n) in _ATTENTION and inside(paths[n.name], child)}
        if not holding or any(h is None or h.rsplit(".", 1)[-1].isdigit() for h in holding):
            return block        # the child is the attention itself, or a list of layers
        block = child
