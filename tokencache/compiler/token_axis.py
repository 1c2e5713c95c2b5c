"""Token-axis propagation: which axis of every tensor in a region holds the tokens.

A region can run on K gathered rows instead of all N tokens only if every op on the token path
treats tokens independently. Following the token axis through the region (with the shapes Dynamo
recorded) proves that op by op, and tells the partial pass exactly which literal size argument of
a view/reshape is the token count (no guessing when N happens to equal another dimension).
"""
from __future__ import annotations

import math
import torch
import torch.fx as fx

# Ops that act on every token row independently and keep the axis where it is (broadcasting aside).
_ROWWISE = {
    "add", "sub", "mul", "truediv", "div", "neg", "pow", "gelu", "silu", "relu", "tanh", "sigmoid",
    "dropout", "linear", "to", "float", "half", "bfloat16", "type", "contiguous", "clone", "exp",
    "sqrt", "rsqrt", "abs", "clamp", "erf", "square", "mish", "leaky_relu", "hardswish", "softplus",
    "iadd", "imul", "add_", "mul_", "type_as", "detach",
}
_LAST_DIMS = {"layer_norm", "rms_norm"}       # normalise over trailing dims only
_REDUCE_OR_SOFTMAX = {"softmax", "log_softmax", "mean", "sum", "amax", "amin", "norm"}
_SHAPE = {"view", "reshape"}
SDPA = "scaled_dot_product_attention"


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
              stop_at: set[str] = frozenset()) -> dict[str, int]:
    """Token axis of every node in `nodes` reachable from `start` (in graph order).

    `stop_at`: node names whose token axis is set by the caller (e.g. the attention output).
    Raises NotTokenLocal naming the first op that would mix tokens.
    """
    axes: dict[str, int] = {start.name: start_axis}
    for node in nodes:
        if node.name in stop_at or node.name in axes:
            continue
        on_path = _tensor_args(node, axes)
        if not on_path:
            continue
        axes[node.name] = _axis_after(node, on_path, axes, tokens)
    return axes


def _axis_after(node: fx.Node, on_path: list[fx.Node], axes: dict[str, int], tokens: int) -> int:
    name = op_name(node)
    src = on_path[0]
    axis = axes[src.name]
    in_shape, out_shape = shape_of(src), shape_of(node)
    where = f"{name} at {node.name}"
    if name == "getitem":
        # An element of a chunk/split tuple keeps the axis; indexing a tensor must not touch it.
        return axis if in_shape is None else _getitem_axis(node, src, axis, where)
    if name in ("chunk", "split", "unbind", "split_with_sizes") and in_shape is not None:
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if _dim(dim, len(in_shape)) == axis:
            raise NotTokenLocal(f"{where}: splits along the token axis")
        return axis if name != "unbind" else axis - (1 if _dim(dim, len(in_shape)) < axis else 0)
    if out_shape is None or in_shape is None:
        raise NotTokenLocal(f"{where}: result is not a tensor with a known shape")
    if name in _ROWWISE:
        if name in ("linear",) and node.args[0] is not src:
            raise NotTokenLocal(f"{where}: token tensor used as a weight")
        return axis + (len(out_shape) - len(in_shape))
    if name in _LAST_DIMS:
        normalized = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        if len(tuple(normalized)) > len(in_shape) - 1 - axis:
            raise NotTokenLocal(f"{where}: normalises across the token axis")
        return axis
    if name in _REDUCE_OR_SOFTMAX:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = dim if isinstance(dim, (list, tuple)) else [dim]
        if dim is None or any(_dim(d, len(in_shape)) == axis for d in dims):
            raise NotTokenLocal(f"{where}: reduces over the token axis")
        if len(out_shape) != len(in_shape):
            return axis - sum(1 for d in dims if _dim(d, len(in_shape)) < axis)
        return axis
    if name == "transpose":
        d0, d1 = (_dim(d, len(in_shape)) for d in node.args[1:3])
        return d1 if axis == d0 else d0 if axis == d1 else axis
    if name == "permute":
        order = node.args[1] if isinstance(node.args[1], (list, tuple)) else node.args[1:]
        return [_dim(d, len(in_shape)) for d in order].index(axis)
    if name == "unsqueeze":
        d = _dim(node.args[1], len(out_shape))
        return axis + 1 if d <= axis else axis
    if name in _SHAPE or name == "flatten":
        return _reshape_axis(in_shape, out_shape, axis, tokens, where)
    if name == "matmul" or name == "bmm":
        other = node.args[1]
        if node.args[0] is src and not (isinstance(other, fx.Node) and other.name in axes) and len(shape_of(other) or ()) == 2:
            return axis
        raise NotTokenLocal(f"{where}: multiplies token rows with each other")
    if name == "cat":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if _dim(dim, len(out_shape)) == axis or any(a.name not in axes for a in node.args[0] if isinstance(a, fx.Node)):
            raise NotTokenLocal(f"{where}: concatenates along the token axis or with non-token tensors")
        return axis
    if name == SDPA:
        raise NotTokenLocal(f"{where}: attention mixes tokens")
    raise NotTokenLocal(f"{where}: op {name!r} is not known to treat tokens independently")


def _getitem_axis(node: fx.Node, src: fx.Node, axis: int, where: str) -> int:
    index = node.args[1]
    index = index if isinstance(index, tuple) else (index,)
    result = axis
    for i, item in enumerate(index):
        if item is Ellipsis or item is None:
            raise NotTokenLocal(f"{where}: indexing with ... or None before the token axis")
        if i == axis:
            if item != slice(None):
                raise NotTokenLocal(f"{where}: indexes the token axis")
            break
        if isinstance(item, int):
            result -= 1                 # an integer index drops an axis in front of the tokens
        elif item != slice(None):
            raise NotTokenLocal(f"{where}: slices an axis before the token axis")
    return result


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

