"""Replay a bundle's TensorRT engines. State lives in CUDA tensors: the tensor one engine wrote as
"new_state.<key>" is bound as the next engine's "state.<key>" input, with no host copies between
steps. With `cuda_graphs=True` each engine is captured once into a CUDA graph over static buffers;
state is then copied device-to-device into those buffers, since a graph replays fixed addresses.
Needs TensorRT and a GPU (`tokencache.exporters.tensorrt.tensorrt_missing()` says why not)."""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..exporters.manifest import BundleError
from ..exporters.tensorrt import TensorRTUnavailable, tensorrt_missing
from .bundle_runner import BundleReplay

_TORCH_TYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}


class EngineExecutor:
    """One engine, its execution context and (optionally) its CUDA graph."""

    def __init__(self, plan: Path, cuda_graph: bool = False):
        import tensorrt as trt

        self.name = plan.name
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BundleError(f"{plan}: TensorRT could not deserialise the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.inputs: dict[str, tuple] = {}
        self.outputs: dict[str, tuple] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            spec = (tuple(self.engine.get_tensor_shape(name)), _TORCH_TYPES[self.engine.get_tensor_dtype(name).name])
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[name] = spec
        self.cuda_graph = cuda_graph
        self._graph = None
        if cuda_graph:
            self._static = {n: torch.empty(s, dtype=d, device="cuda") for n, (s, d) in {**self.inputs, **self.outputs}.items()}
            self._bind(self._static)

    def _bind(self, tensors: dict) -> None:
        for name, tensor in tensors.items():
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise RuntimeError(f"{self.name}: TensorRT refused the address of tensor {name!r}")

    def _execute(self) -> None:
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see TensorRT's log above)")

    def _feed(self, feeds: dict) -> dict:
        tensors = {}
        for name, (shape, dtype) in self.inputs.items():
            tensor = feeds[name]
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise BundleError(f"{self.name}: tensor {name!r} is {list(tensor.shape)} {tensor.dtype}; the engine "
                                  f"takes {list(shape)} {dtype}")
            tensors[name] = tensor.contiguous()
        return tensors

    def run(self, feeds: dict) -> dict:
        tensors = self._feed(feeds)
        if not self.cuda_graph:
            # fresh output tensors each call: a state tensor is never an input and an output of one run
            outs = {n: torch.empty(s, dtype=d, device="cuda") for n, (s, d) in self.outputs.items()}
            self._bind({**tensors, **outs})
            self._execute()
            return outs
        for name, tensor in tensors.items():
            self._static[name].copy_(tensor, non_blocking=True)
        if self._graph is None:
            self._capture()
        self._graph.replay()
        # copies: the static outputs are overwritten by this engine's next replay (another call position)
        return {name: self._static[name].clone() for name in self.outputs}

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._execute()                     # TensorRT allocates lazily on the first run: not in the graph
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._execute()


class TensorRTBundleRunner(BundleReplay):
    """Model outputs come back as CUDA tensors."""

    def __init__(self, bundle: str | Path, cuda_graphs: bool = False, verify: bool = True):
        reason = tensorrt_missing()
        if reason:
            raise TensorRTUnavailable(reason)
        super().__init__(bundle, verify)
        missing = [n for n, v in self.manifest["variants"].items() if "engine" not in v]
        if missing:
            raise BundleError(f"variant {missing[0]!r} has no engine; run `tokencache export --tensorrt` first")
        self.cuda_graphs = cuda_graphs
        self._engines: dict[str, EngineExecutor] = {}
        self._run_lock = threading.Lock()

    def _engine(self, variant: str) -> EngineExecutor:
        if variant not in self._engines:
            plan = self.dir / self.manifest["variants"][variant]["engine"]["file"]
            self._engines[variant] = EngineExecutor(plan, self.cuda_graphs)
        return self._engines[variant]

    def _to_device(self, value):
        return torch.as_tensor(value).to("cuda", non_blocking=True)

    def _zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=getattr(torch, dtype), device="cuda")

    def _shape_dtype(self, value):
        return list(value.shape), str(value.dtype).replace("torch.", "")

    def _to_output(self, value):
        return value

    def _run(self, variant: str, feeds: dict) -> dict:
        with self._run_lock:            # an execution context (and its CUDA graph) runs one call at a time
            return self._engine(variant).run(feeds)
