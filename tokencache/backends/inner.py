"""Inner backends: how one graph variant becomes a callable. Each variant is compiled once."""
from __future__ import annotations

import os
import warnings

import torch
import torch.fx as fx

from ..config import INNER_BACKENDS


def parameter_key(args, param_positions: list[int]) -> tuple:
    """Which model instance a call belongs to, for backends that bake parameters in (CUDA graphs
    read them at fixed addresses, ONNX/TensorRT freeze their values): the addresses of the first
    and last parameter."""
    return tuple(args[i].data_ptr() for i in list(param_positions[:1]) + list(param_positions[-1:]))


PACKED_MEMORY_SHARE = 0.25   # "auto" keeps packed weight copies while the weights take at most this share of RAM


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine, None where the OS does not say (os.sysconf is POSIX)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def cpu_matmul_for(example_args: list, inner: str, setting: str = "auto", weight_bytes: int = 0) -> str | None:
    """Which kernels run the linear layers of a variant compiled by inductor on the CPU: "onednn"
    or "onednn_packed" (passes/onednn_linear.py) or "aten"; None where the question does not arise
    (eager, CUDA, exported variants). `setting` is CacheConfig.cpu_matmul; `weight_bytes`: the
    model's parameter memory, which "auto" copies as packed weights only while it is at most a
    quarter of the machine's memory (plain oneDNN above that, or where the memory is unknown)."""
    if inner not in ("inductor", "cudagraphs"):
        return None
    tensors = [a for a in example_args if isinstance(a, torch.Tensor)]
    if any(t.device.type != "cpu" for t in tensors):
        return None
    from ..ops.linear import onednn_available
    if setting.startswith("onednn") and not onednn_available():
        raise RuntimeError(f"tokencache: cpu_matmul={setting!r} but this torch build has no oneDNN (mkldnn) "
                           "linear kernels; use cpu_matmul='aten' or 'auto'")
    # other dtypes already reach oneDNN through ATen (bf16/fp16 CPU matmuls use it)
    fp32_only = all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    if setting == "aten" or not fp32_only or not onednn_available():
        return "aten"
    if setting == "auto":
        memory = machine_memory_bytes()
        fits = memory is not None and weight_bytes <= PACKED_MEMORY_SHARE * memory
        return "onednn_packed" if fits else "onednn"
    return setting


def compile_variant(gm: fx.GraphModule, example_args: list, inner: str, param_positions: list[int] = (),
                    pool=None, cpu_matmul: str | None = None):
    """`example_args`: real tensors in the variant's placeholder order; `param_positions`: which of
    them are parameters (read in place by CUDA graphs, frozen into ONNX/TensorRT); `pool`: CUDA graph
    memory pool to share; `cpu_matmul`: the CPU linear kernels cpu_matmul_for() chose for these
    arguments (None: not an inductor variant on the CPU)."""
    if inner == "eager":
        return gm
    if inner in ("inductor", "cudagraphs"):
        from ..compat import compile_fx   # not a nested torch.compile (see there)
        from ..passes.graph_edit import copy_module
        from ..passes.pipeline import PassContext, run_stage
        # the variant itself stays as the policy built it
        graph = run_stage(copy_module(gm), PassContext("compile", cpu_matmul=cpu_matmul))
        with torch.no_grad():
            fn = compile_fx(graph, example_args)
        if inner == "inductor":
            return fn
        from .cuda_graphs import CudaGraphVariant, on_cuda
        if not on_cuda(example_args):
            warnings.warn("tokencache: inner='cudagraphs' needs CUDA inputs; these are on the CPU, so the "
                          "variants run inductor-compiled without CUDA graphs", stacklevel=4)
            return fn
        return CudaGraphVariant(fn, list(param_positions), pool=pool)
    if inner in ("onnxruntime", "tensorrt"):
        from .exported_variant import ExportedVariant
        if inner == "tensorrt":
            from ..exporters.tensorrt import TensorRTUnavailable, tensorrt_missing
            reason = tensorrt_missing()
            if reason:
                raise TensorRTUnavailable(f"tokencache: inner='tensorrt' cannot run here: {reason}")
        return ExportedVariant(gm, list(param_positions), inner)
    raise ValueError(f"unknown inner backend {inner!r}; allowed: {', '.join(map(repr, INNER_BACKENDS))}")
