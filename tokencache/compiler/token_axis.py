"""Token-axis propagation: which axis of every tensor in a region holds the tokens.

A region can run on K gathered rows instead of all N tokens only if every op on the token path
treats tokens independently. Following the token axis through the region (with the shapes Dynamo
recorded) proves that op by op, and tells the partial pass exactly which literal size argument of
a view/reshape is the token count (no guessing when N happens to equal another dimension).

Joint attention concatenates the image tokens with another stream's tokens (text) along the token
axis and slices them apart after the attention. The token axis of such a tensor holds *segments*:
a layout like (("img", N), ("ctx", L)). The propagation follows the layout through the cat and the
slices, so the partial pass can resize each segment (N -> K image rows, L -> L or 0 text rows).
Per-token tables that are not on the token path but meet it in an elementwise op (RoPE cos/sin,
complex frequencies) are recorded too: a partial step gathers their rows with the tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.fx as fx

# Ops that act on every token row independently and keep the axis where it is (broadcasting aside).
_ROWWISE = {
    "add", "sub", "mul", "truediv", "div", "neg", "pow", "gelu", "silu", "relu", "tanh", "sigmoid",
    "dropout", "linear", "to", "float", "half", "bfloat16", "type", "contiguous", "clone", "exp",
    "sqrt", "rsqrt", "abs", "clamp", "erf", "square", "mish", "leaky_relu", "hardswish", "softplus",
    "iadd", "imul", "add_", "mul_", "type_as", "detach", "empty_like", "zeros_like", "ones_like",
}
_LAST_DIMS = {"layer_norm", "rms_norm"}       # normalise over trailing dims only
_REDUCE_OR_SOFTMAX = {"softmax", "log_softmax", "mean", "sum", "amax", "amin", "norm"}
_SHAPE = {"view", "reshape"}
_ELEMENTWISE = {"add", "sub", "mul", "truediv", "div", "pow", "iadd", "imul", "add_", "mul_"}
SDPA = "scaled_dot_product_attention"
IMAGE, CONTEXT = "img", "ctx"

Layout = tuple  # ((segment kind, size), ...) along the token axis


@dataclass
class PathInfo:
    """What the partial pass needs beyond each node's token axis (filled by `propagate`)."""
    layouts: dict[str, Layout] = field(default_factory=dict)   # node -> segments on its token axis
    tables: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # node -> (per-token arg, its token axis)
    slices: dict[str, tuple[int, int]] = field(default_factory=dict)  # getitem -> kept segments [j0, j1) of its input
    joins: dict[str, list[int]] = field(default_factory=dict)   # cat along tokens -> positions of other-stream parts
    splits: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # split along tokens -> segments per piece

    def merge(self, other: "PathInfo") -> None:
        for name in ("layouts", "tables", "slices", "joins", "splits"):
            getattr(self, name).update(getattr(other, name))


def total(layout: Layout) -> int:
    return sum(size for _, size in layout)


class NotTokenLocal(Exception):
    """The op at `node` mixes or reshapes tokens; the message says how."""


def op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        return name.split(".")[-1]
    return node.op


def shape_of(node) -> tuple[int, ...] | None:
    value = node.meta.get("example_value") if isinstance(node, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _tensor_args(node: fx.Node, axes: dict[str, int]) -> list[fx.Node]:
    flat = []
    for a in list(node.args) + list(node.kwargs.values()):
        if isinstance(a, (list, tuple)):
            flat.extend(a)
        else:
            flat.append(a)
    return [a for a in flat if isinstance(a, fx.Node) and a.name in axes]


def propagate(nodes: list[fx.Node], start: fx.Node, start_axis: int, tokens: int,
              stop_at: set[str] = frozenset(), info: PathInfo | None = None,
              start_layout: Layout | None = None, attention_over_rows: bool = False) -> dict[str, int]:
    """Token axis of every node in `nodes` reachable from `start` (in graph order).

    `stop_at`: node names whose token axis is set by the caller (e.g. the attention output).
    `info`: filled with layouts, per-token tables, token-axis slices and joins (see PathInfo).
    `attention_over_rows`: an attention whose queries, keys and values all carry the token axis
    attends over the rows present (DaTo's pruned attention: run on a subset of the tokens, it
    attends over that subset); otherwise attention mixes tokens.
    Raises NotTokenLocal naming the first op that would mix tokens.
    """
    info = info if info is not None else PathInfo()
    axes: dict[str, int] = {start.name: start_axis}
    info.layouts[start.name] = start_layout or ((IMAGE, tokens),)
    for node in nodes:
        if node.name in stop_at or node.name in axes:
            continue
        on_path = _tensor_args(node, axes)
        if not on_path:
            continue
        if attention_over_rows and op_name(node) == SDPA:
            axis, layout = _attention_over_rows(node, axes, info)
        else:
            axis, layout = _axis_after(node, on_path, axes, info)
        axes[node.name], info.layouts[node.name] = axis, layout
    return axes


def _attention_over_rows(node: fx.Node, axes: dict[str, int], info: PathInfo) -> tuple[int, Layout]:
    q, k, v = (node.args[i] if len(node.args) > i else node.kwargs.get(n) for i, n in enumerate(("query", "key", "value")))
    where = f"{SDPA} at {node.name}"
    if not all(isinstance(a, fx.Node) and a.name in axes for a in (q, k, v)):
        raise NotTokenLocal(f"{where}: keys or values do not come from the pruned tokens")
    rank = len(shape_of(q) or ())
    if any(axes[a.name] != rank - 2 for a in (q, k, v)) or len({info.layouts[a.name] for a in (q, k, v)}) != 1:
        raise NotTokenLocal(f"{where}: queries, keys and values hold the tokens on different axes")
    if node.kwargs.get("attn_mask") is not None or len(node.args) > 3 and node.args[3] is not None:
        raise NotTokenLocal(f"{where}: an attention mask over all tokens")
    return axes[q.name], info.layouts[q.name]


def _axis_after(node: fx.Node, on_path: list[fx.Node], axes: dict[str, int], info: PathInfo) -> tuple[int, Layout]:
    name = op_name(node)
    src = on_path[0]
    axis, layout = axes[src.name], info.layouts[src.name]
    tokens = total(layout)
    in_shape, out_shape = shape_of(src), shape_of(node)
    where = f"{name} at {node.name}"
    if name == "getitem":
        # An element of a chunk/split tuple keeps the axis; indexing a tensor must not touch it.
        if in_shape is None and src.name in info.splits:
            j0, j1 = info.splits[src.name][node.args[1]]
            return axis, layout[j0:j1]
        return (axis, layout) if in_shape is None else _getitem_axis(node, src, axis, layout, info, where)
    if name in ("chunk", "split", "unbind", "split_with_sizes") and in_shape is not None:
        at = 1 if name == "unbind" else 2          # unbind(x, dim); chunk/split(x, n, dim)
        dim = node.args[at] if len(node.args) > at else node.kwargs.get("dim", 0)
        if _dim(dim, len(in_shape)) == axis:
            return axis, _split_segments(node, layout, info, where)
        return (axis if name != "unbind" else axis - (1 if _dim(dim, len(in_shape)) < axis else 0)), layout
    if name == "setitem":
        return _setitem_axis(node, axes, info, where)
    if out_shape is None or in_shape is None:
        raise NotTokenLocal(f"{where}: result is not a tensor with a known shape")
    if name == "cat":
        return _cat_axis(node, axes, info, where)
    if name == "stack":
        parts = node.args[0]
        if any(not isinstance(a, fx.Node) or a.name not in axes or axes[a.name] != axis
               or info.layouts[a.name] != layout for a in parts):
            raise NotTokenLocal(f"{where}: stacks token tensors with other tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return (axis + 1 if _dim(dim, len(out_shape)) <= axis else axis), layout
    if len(on_path) > 1 and any(axes[a.name] - len(shape_of(a) or ()) != axis - len(in_shape)
                                or info.layouts[a.name] != layout for a in on_path[1:]):
        raise NotTokenLocal(f"{where}: combines token tensors whose token axes differ")
    if name in _ROWWISE:
        if name in ("linear",) and node.args[0] is not src:
            raise NotTokenLocal(f"{where}: token tensor used as a weight")
        out_axis = axis + (len(out_shape) - len(in_shape))
        if name in _ELEMENTWISE:
            _note_tables(node, axes, out_axis, len(out_shape), tokens, info)
        return out_axis, layout
    if name in _LAST_DIMS:
        normalized = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        if len(tuple(normalized)) > len(in_shape) - 1 - axis:
            raise NotTokenLocal(f"{where}: normalises across the token axis")
        return axis, layout
    if name in _REDUCE_OR_SOFTMAX:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = dim if isinstance(dim, (list, tuple)) else [dim]
        if dim is None or any(_dim(d, len(in_shape)) == axis for d in dims):
            raise NotTokenLocal(f"{where}: reduces over the token axis")
        if len(out_shape) != len(in_shape):
            return axis - sum(1 for d in dims if _dim(d, len(in_shape)) < axis), layout
        return axis, layout
    if name == "transpose":
        d0, d1 = (_dim(d, len(in_shape)) for d in node.args[1:3])
        return (d1 if axis == d0 else d0 if axis == d1 else axis), layout
    if name == "permute":
        order = node.args[1] if isinstance(node.args[1], (list, tuple)) else node.args[1:]
        return [_dim(d, len(in_shape)) for d in order].index(axis), layout
    if name == "unsqueeze":
        d = _dim(node.args[1], len(out_shape))
        return (axis + 1 if d <= axis else axis), layout
    if name == "unflatten":
        d = _dim(node.args[1] if len(node.args) > 1 else node.kwargs["dim"], len(in_shape))
        if d == axis:
            raise NotTokenLocal(f"{where}: unflattens the token axis")
        return (axis + len(out_shape) - len(in_shape) if d < axis else axis), layout
    if name in ("view_as_complex", "view_as_real"):
        if axis >= len(in_shape) - 1 and name == "view_as_complex":
            raise NotTokenLocal(f"{where}: the token axis is the real/imaginary pair")
        return axis, layout
    if name in _SHAPE or name == "flatten":
        return _reshape_axis(in_shape, out_shape, axis, tokens, where), layout
    if name == "matmul" or name == "bmm":
        other = node.args[1]
        if node.args[0] is src and not (isinstance(other, fx.Node) and other.name in axes) and len(shape_of(other) or ()) == 2:
            return axis, layout
        raise NotTokenLocal(f"{where}: multiplies token rows with each other")
    if name == SDPA:
        raise NotTokenLocal(f"{where}: attention mixes tokens")
    raise NotTokenLocal(f"{where}: op {name!r} is not known to treat tokens independently")


def _note_tables(node: fx.Node, axes: dict[str, int], out_axis: int, rank: int, tokens: int, info: PathInfo) -> None:
    """An elementwise op's operand that is off the token path but has one row per token (a RoPE
    table): a partial step must gather its rows too."""
    if tokens <= 1:
        return
    for arg in list(node.args) + list(node.kwargs.values()):
        shape = shape_of(arg) if isinstance(arg, fx.Node) else None
        if shape is None or arg.name in axes:
            continue
        pos = out_axis - (rank - len(shape))
        if pos >= 0 and shape[pos] == tokens:
            info.tables.setdefault(node.name, []).append((arg.name, pos))


def _cat_axis(node: fx.Node, axes: dict[str, int], info: PathInfo, where: str) -> tuple[int, Layout]:
    parts = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    rank = len(shape_of(node))
    ours = [a for a in parts if isinstance(a, fx.Node) and a.name in axes]
    axis = axes[ours[0].name]
    if _dim(dim, rank) != axis:
        if len(ours) != len(parts) or any(axes[a.name] != axis or info.layouts[a.name] != info.layouts[ours[0].name]
                                          for a in ours):
            raise NotTokenLocal(f"{where}: concatenates token tensors with non-token tensors")
        return axis, info.layouts[ours[0].name]
    # joint attention: our tokens join another stream's (text) tokens along the token axis, or
    # pieces of one joined sequence are put back together (HunyuanVideo's single-stream blocks
    # rotate the image part of the queries only: cat([rope(q[:, :, :-L]), q[:, :, -L:]]))
    layout, others = [], []
    for i, part in enumerate(parts):
        if part in ours:
            if axes[part.name] != axis:
                raise NotTokenLocal(f"{where}: concatenates token tensors whose token axes differ")
            layout.extend(info.layouts[part.name])
            if all(kind == CONTEXT for kind, _ in info.layouts[part.name]):
                others.append(i)                    # text rows only: dropped when text is reused
        else:
            shape = shape_of(part)
            if shape is None:
                raise NotTokenLocal(f"{where}: joins a value of unknown shape")
            layout.append((CONTEXT, shape[axis]))
            others.append(i)
    if sum(kind == IMAGE for kind, _ in layout) > 1:
        raise NotTokenLocal(f"{where}: concatenates several copies of the image tokens")
    info.joins[node.name] = others
    return axis, tuple(layout)


def _getitem_axis(node: fx.Node, src: fx.Node, axis: int, layout: Layout, info: PathInfo,
                  where: str) -> tuple[int, Layout]:
    index = node.args[1]
    index = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in index:                       # x[..., :half] (Flux 2's SwiGLU): spell the axes out
        at = index.index(Ellipsis)
        rank = len(shape_of(src))
        named = sum(1 for item in index if item is not None and item is not Ellipsis)
        index[at:at + 1] = [slice(None)] * (rank - named)
    result, in_axis = axis, 0
    for position, item in enumerate(index):
        if item is None:                        # a new axis: in front of the tokens it moves them
            if in_axis <= axis:
                result += 1
            continue
        if in_axis == axis:
            if item == slice(None):
                break
            if position != axis:                # the partial pass re-slices by position
                raise NotTokenLocal(f"{where}: slices the token axis behind ... or None")
            return result, _slice_segments(node, item, layout, info, where)
        if isinstance(item, int):
            result -= 1                 # an integer index drops an axis in front of the tokens
        elif item != slice(None):
            raise NotTokenLocal(f"{where}: slices an axis before the token axis")
        in_axis += 1
    return result, layout


def _setitem_axis(node: fx.Node, axes: dict[str, int], info: PathInfo, where: str) -> tuple[int, Layout]:
    """`out[..., 0::2] = rows` (Wan's RoPE writes into an `empty_like` buffer), `q[:, :, L:] = rows`
    (CogView 4 rotates the image segment of a joint sequence): token-local when the target holds
    the tokens, the index keeps their axis whole or takes whole segments, and the written value
    has the same tokens on the same axis of the indexed view."""
    target, _, value = node.args
    if not isinstance(target, fx.Node) or target.name not in axes:
        raise NotTokenLocal(f"{where}: writes token rows into a tensor without tokens")
    axis, layout = axes[target.name], info.layouts[target.name]
    # a slice of whole segments is fine (the partial pass resizes it as a getitem's)
    view_axis, view_layout = _getitem_axis(node, target, axis, layout, info, where)
    items = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    if any(isinstance(item, fx.Node) for item in items):
        raise NotTokenLocal(f"{where}: writes at tensor indices")
    view_rank = len(shape_of(target)) - sum(isinstance(i, int) for i in items) + sum(i is None for i in items)
    if isinstance(value, fx.Node) and value.name in axes:
        # the value broadcasts against the view from the right: its tokens must line up
        if axes[value.name] - len(shape_of(value)) != view_axis - view_rank or info.layouts[value.name] != view_layout:
            raise NotTokenLocal(f"{where}: writes token rows at another axis")
    elif isinstance(value, fx.Node) and node.name in info.slices:
        raise NotTokenLocal(f"{where}: writes values without tokens into part of the token axis")
    return axis, layout


def _split_segments(node: fx.Node, layout: Layout, info: PathInfo, where: str) -> Layout:
    """split([L, N], dim=tokens) of a joint sequence into whole streams."""
    sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections", node.kwargs.get("split_sizes"))
    if op_name(node) not in ("split", "split_with_sizes") or not isinstance(sizes, (list, tuple)):
        raise NotTokenLocal(f"{where}: splits along the token axis")
    bounds = [0]
    for _, size in layout:
        bounds.append(bounds[-1] + size)
    pieces, start = [], 0
    for size in sizes:
        if start not in bounds or start + size not in bounds:
            raise NotTokenLocal(f"{where}: splits the token axis inside a stream")
        pieces.append((bounds.index(start), bounds.index(start + size)))
        start += size
    info.splits[node.name] = pieces
    return layout


def _slice_segments(node: fx.Node, item, layout: Layout, info: PathInfo, where: str) -> Layout:
    """A slice of the token axis that takes whole segments (joint attention splitting the
    streams apart again)."""
    if not isinstance(item, slice) or item.step not in (None, 1):
        raise NotTokenLocal(f"{where}: indexes the token axis")
    start, stop, _ = item.indices(total(layout))
    bounds = [0]
    for _, size in layout:
        bounds.append(bounds[-1] + size)
    if start not in bounds or stop not in bounds or stop <= start:
        raise NotTokenLocal(f"{where}: slices the token axis inside a stream ({start}:{stop} of {layout})")
    j0, j1 = bounds.index(start), bounds.index(stop)
    while j1 > 0 and bounds[j1 - 1] == stop:      # zero-size segments end where they start
        j1 -= 1
    info.slices[node.name] = (j0, j1)
    return layout[j0:j1]


def _reshape_axis(in_shape, out_shape, axis: int, tokens: int, where: str) -> int:
    before = math.prod(in_shape[:axis])
    for j, size in enumerate(out_shape):
        if size == tokens and math.prod(out_shape[:j]) == before:
            return j
    raise NotTokenLocal(f"{where}: reshapes the token axis {in_shape} -> {out_shape}")


def size_arg_positions(node: fx.Node) -> tuple[str, int] | None:
    """Where the size list of a view/reshape lives: ("args", first index) or ("tuple", arg index)."""
    if op_name(node) not in _SHAPE:
        return None
    start = 1
    if len(node.args) == start + 1 and isinstance(node.args[start], (list, tuple)):
        return ("tuple", start)
    return ("args", start)

