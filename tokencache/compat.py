"""Every private PyTorch API tokencache relies on, in one place.

tokencache reads what Dynamo leaves on a captured graph (placeholder sources, module stacks, the
tracing context), calls inductor below torch.compile and calls oneDNN kernels directly. None of
that is a public, stable API: it is what torch 2.13 does. When a torch release changes one of
these, this file is the only one to fix; tests/test_compat.py fails if another module of
tokencache reaches for a private name itself.

Tested: torch 2.13 (CPU). Other versions import with a warning and may fail in the places below.
"""
from __future__ import annotations

import re
import warnings

import torch
import torch.fx as fx
import torch.nn.functional as F

TESTED_TORCH = ((2, 13), (2, 14))      # [lowest, highest): the minor versions CI runs (.ci/run)


def torch_version(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of `version` (default: the installed torch), e.g. "2.13.0+cpu" -> (2, 13)."""
    major, minor = re.match(r"(\d+)\.(\d+)", version or torch.__version__).groups()
    return int(major), int(minor)


def untested_torch(version: str | None = None) -> str | None:
    """Why this torch is outside the tested range; None inside it."""
    low, high = TESTED_TORCH
    if low <= torch_version(version) < high:
        return None
    return (f"tokencache is tested with torch >={low[0]}.{low[1]},<{high[0]}.{high[1]} only; torch "
            f"{version or torch.__version__} may change the private APIs it uses (tokencache/compat.py)")


if (_why := untested_torch()) is not None:
    warnings.warn(_why, stacklevel=2)


# --- Dynamo: what a captured graph carries -----------------------------------------------------

def placeholder_source(node: fx.Node) -> str | None:
    """The Dynamo source of a placeholder (`L['self']._modules['x']._parameters['weight']`,
    `L['timestep']`): `node._dynamo_source`, or `meta["grapharg"].source` (set only during the
    backend call). `copy.deepcopy(gm)` drops both."""
    source = getattr(node, "_dynamo_source", None)
    if source is None and "grapharg" in node.meta:
        source = getattr(node.meta["grapharg"], "source", None)
    return None if source is None else source.name


def copy_placeholder_source(old: fx.Node, new: fx.Node) -> None:
    """Carry a placeholder's Dynamo source over to its copy in another graph."""
    new._dynamo_source = getattr(old, "_dynamo_source", None)
    if "grapharg" in old.meta:
        new.meta["grapharg"] = old.meta["grapharg"]


def mark_sourceless(node: fx.Node, only_if_missing: bool = False) -> None:
    """A placeholder that Dynamo did not create (state, host inputs) or whose source a copy lost:
    inductor's compile_fx reads `_dynamo_source` on every placeholder."""
    if not (only_if_missing and hasattr(node, "_dynamo_source")):
        node._dynamo_source = None


def example_value(node: fx.Node):
    """The (fake) tensor Dynamo recorded for a node's result (`meta["example_value"]`), or None
    (nodes the passes made have none)."""
    return node.meta.get("example_value")


def drop_example_value(node: fx.Node) -> None:
    """Forget a copied node's recorded result: its shape no longer holds (a resized copy)."""
    node.meta.pop("example_value", None)


def module_stack(node: fx.Node) -> list[tuple[str, str]]:
    """The modules a node was traced in, outermost first, as (Dynamo's key, normalised path)."""
    return [(key, normalise_module_path(raw)) for key, (raw, _) in (node.meta.get("nn_module_stack") or {}).items()]


def module_path(node: fx.Node) -> str:
    """Normalised path of the innermost module a node was traced in ('' at top level)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return normalise_module_path(list(stack.values())[-1][0])


def normalise_module_path(raw: str) -> str:
    """`L['self'].__dict__['_modules']['transformer_blocks'].0.attn1` -> `transformer_blocks.0.attn1`."""
    raw = raw.replace("L['self']", "", 1)
    raw = re.sub(r"\.__dict__\['_modules'\]\['([^']+)'\]", r".\1", raw)
    raw = re.sub(r"\._modules\['([^']+)'\]", r".\1", raw)
    raw = re.sub(r"\['([^']+)'\]", r".\1", raw)
    return raw.strip(".")


def dynamo_compile_id(gm: fx.GraphModule):
    """Dynamo's CompileId of the graph being compiled (frame_id, frame_compile_id), or None."""
    return gm.meta.get("dynamo_compile_id") or torch._guards.CompileContext.current_compile_id()


def graph_end_reason(gm: fx.GraphModule):
    """Why Dynamo ended this graph (`.graph_break`, `.reason`, `.user_stack`), or None."""
    return getattr(gm, "compile_subgraph_reason", None)


def traced_code():
    """The code object of the frame Dynamo is compiling; None outside a compilation."""
    context = torch._guards.TracingContext.try_get()
    codes = getattr(context, "traced_code", None) if context is not None else None
    return codes[0] if codes else None


def frame_guards() -> list[tuple[str, str]]:
    """(guard name, guard kind) of the frame being compiled, e.g. ("L['t']", "CONSTANT_MATCH");
    empty outside a compilation."""
    context = torch._guards.TracingContext.try_get()
    if context is None:
        return []
    return [(guard.name, guard.create_fn_name()) for guard in context.guards_context.dynamo_guards]


def dynamo_counter(name: str) -> dict:
    """A snapshot of one of Dynamo's global counters ("graph_break", "unimplemented", ...)."""
    from torch._dynamo.utils import counters
    return dict(counters[name])


def eval_frame_file() -> str:
    """The file of Dynamo's OptimizedModule.__call__ (steplink finds the compiled model on the stack)."""
    return torch._dynamo.eval_frame.__file__


def calling_model():
    """The module of the outermost torch.compile wrapper (OptimizedModule) on the Python stack, found
    by its `__call__` frame in Dynamo's eval_frame.py (None: not called through one)."""
    import sys

    frame, outer, eval_frame = sys._getframe(1), None, eval_frame_file()
    while frame is not None:
        if frame.f_code.co_filename == eval_frame and frame.f_code.co_name == "__call__":
            outer = frame
        frame = frame.f_back
    if outer is None:
        return None
    return wrapped_module(outer.f_locals.get("self"))


def original_module(model):
    """The module a torch.compile wrapper (OptimizedModule) wraps; `model` itself if it is none."""
    return getattr(model, "_orig_mod", model)


def wrapped_module(obj):
    """The wrapped module of an OptimizedModule, None for anything else."""
    return getattr(obj, "_orig_mod", None)


def cache_entry_count(code) -> int:
    """How many graphs Dynamo holds for a code object (0 where torch cannot say)."""
    try:
        return len(torch._C._dynamo.eval_frame._debug_get_cache_entry_list(code))
    except (AttributeError, TypeError):
        return 0


def reset_dynamo() -> None:
    """Forget every compiled frame of this process (their cache entries and recompile counts)."""
    torch._dynamo.reset()


def recompile_limit() -> int:
    return torch._dynamo.config.recompile_limit


def recompile_limits(limit: int, accumulated: int):
    """A context raising Dynamo's recompile limits (per function, and over all functions)."""
    return torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=accumulated)


def backend_failure_cause(error: BaseException) -> BaseException | None:
    """The backend's own exception inside Dynamo's BackendCompilerFailed; None for other errors."""
    if isinstance(error, torch._dynamo.exc.BackendCompilerFailed):
        return error.inner_exception
    return None


def current_dispatch_mode():
    """The innermost active TorchDispatchMode, or None."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    return _get_current_dispatch_mode()


def fake_tensor_mode():
    """A FakeTensorMode that also accepts real tensors (parameters) as inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode(allow_non_fake_inputs=True)


# --- inductor ------------------------------------------------------------------------------------

def compile_fx(gm: fx.GraphModule, example_args: list):
    """Inductor on one graph. Called directly, not through a nested torch.compile: nested
    compiles count against Dynamo's recompile limit and would show up as recompiles of the model.

    Inside a tracing context whose fake mode has a ShapeEnv: the runtime compiles a variant at its
    first call, outside Dynamo's context, and without a ShapeEnv inductor bypasses its FX graph
    cache ("No shape env"), so every process compiled every variant from scratch even with a warm
    on-disk cache. The example inputs are handed over as static-shaped fake tensors of that mode
    (real ones would be re-made with symbolic sizes, and the kernels would be compiled dynamic)."""
    from torch._guards import TracingContext, tracing
    from torch._inductor.compile_fx import compile_fx as inductor_compile_fx
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    mode = FakeTensorMode(shape_env=ShapeEnv(), static_shapes=True)
    fake = [mode.from_tensor(a, static_shapes=True) if isinstance(a, torch.Tensor) else a for a in example_args]
    with tracing(TracingContext(mode)):
        return inductor_compile_fx(gm, fake)


# --- ATen / oneDNN -------------------------------------------------------------------------------

LINEAR_TARGETS = (F.linear, torch._C._nn.linear)   # Dynamo records F.linear as either


def is_flex_attention(target) -> bool:
    """A call of the flex_attention higher-order op (`torch.ops.higher_order.flex_attention`)."""
    hop = getattr(getattr(torch.ops, "higher_order", None), "flex_attention", None)
    return hop is not None and target is hop


def tensor_version(tensor: torch.Tensor) -> int:
    """The version counter in-place writes through the tensor bump (not writes through `.data`)."""
    return tensor._version


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(x, weight, bias, post_op: str, algorithm: str):
    """oneDNN's linear with a fused pointwise post-op ("none" | "gelu"); `weight` plain or packed."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)


def onednn_pack_linear_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` in oneDNN's blocked layout for a GEMM with about `rows` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def keeps_in_dead_code_elimination(node: fx.Node) -> bool:
    """A node dead-code elimination must keep although nothing uses its value: FX's own impure
    ops; functorch's vmap bookkeeping (`_vmap_increment_nesting`, `lazy_load_decompositions`
    from torch._functorch.predispatch), which Dynamo records for a `torch.vmap` inside the model
    (AnyFlowFAR, Kandinsky 6 SR): without the nesting calls the batched ops fail at run time; and
    an in-place write whose tensor is read later (AceStep's `mask.masked_fill_(window, 0.0)`, whose
    result nobody uses: FX drops it, and the attention then ran unmasked)."""
    if _unread_collective_wait(node):
        return False
    return node.is_impure() or (node.op == "call_function"
                                and getattr(node.target, "__module__", "").startswith("torch._functorch")) \
        or _writes_live_tensor(node)


def _unread_collective_wait(node: fx.Node) -> bool:
    """A `wait_tensor` nobody reads, on an out-of-place functional collective that only it reads
    (the all-gathered keys and values of an attention that a reuse step dropped: tokencache.distributed).
    FX keeps every wait_tensor (registered side-effectful). Dropping the wait and its collective is
    safe when every process runs the same graph, as all processes of a tokencache schedule run the
    same variant at each step: they all skip the same collectives."""
    if node.op != "call_function" or node.users or not str(node.target).startswith("_c10d_functional.wait_tensor"):
        return False
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or source.op != "call_function":
        return False
    namespace, _, op = str(source.target).partition(".")
    return namespace == "_c10d_functional" and not op.split(".")[0].endswith("_") and list(source.users) == [node]


# ops that return a view of their first argument: an in-place write through one of them is a write
# to the same storage
_VIEWS = {"view", "view_as", "reshape", "unsqueeze", "squeeze", "transpose", "permute", "expand", "expand_as",
          "select", "narrow", "flatten", "unflatten", "t", "as_strided", "unbind", "split", "chunk", "getitem",
          "diagonal", "movedim", "swapaxes", "contiguous", "detach", "__getitem__"}


def _op_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def _writes_live_tensor(node: fx.Node) -> bool:
    """An in-place op (`x.add_(..)`, `torch.relu_(x)`, `out=`) whose tensor, or a view of it, is a
    graph input or is read after it. Dead-code elimination visits nodes last to first, so the
    later readers still in the graph are live ones."""
    if node.op not in ("call_method", "call_function"):
        return False
    name = _op_name(node)
    in_place = (name.endswith("_") and not name.endswith("__")) or "out" in node.kwargs
    if not in_place or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    root = node.args[0]
    while root.op != "placeholder" and _op_name(root) in _VIEWS and root.args and isinstance(root.args[0], fx.Node):
        root = root.args[0]
    if root.op == "placeholder":
        return True
    aliases, frontier = {root}, [root]
    while frontier:
        for user in frontier.pop().users:
            if user not in aliases and _op_name(user) in _VIEWS and user.args and user.args[0] in aliases:
                aliases.add(user)
                frontier.append(user)
    later, n = set(), node.next
    while n.op != "root":
        later.add(n)
        n = n.next
    return any(u in later for a in aliases for u in a.users if u is not node and u not in aliases)
