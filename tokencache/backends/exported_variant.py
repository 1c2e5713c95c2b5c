"""inner="onnxruntime" and inner="tensorrt": a variant run outside PyTorch, inside the PyTorch loop.

Each variant is exported to ONNX exactly as `tokencache.export` does it (parameters frozen in as
constants, the same exporter), then run by onnxruntime or built into a TensorRT engine and run by
the bundle runner's engine executor. The runtime around it is unchanged: schedule, state, CFG
call positions. So "onnxruntime" checks, with the model's own sampling loop, what a deployed
bundle will compute, and "tensorrt" gives TensorRT speed without leaving torch.compile.

Frozen weights belong to one model instance. Another instance of the same architecture shares
the captured graph (Dynamo passes parameters as inputs), so it gets its own export and engine,
keyed by its parameters' addresses. Weights changed in place after the first call are not seen.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.fx as fx

from ..passes.graph_edit import outputs_of
from .inner import parameter_key

BACKENDS = ("onnxruntime", "tensorrt")
_PRECISIONS = {torch.float16: "fp16", torch.bfloat16: "bf16"}


class ExportedVariant:
    """Callable like the compiled variant: positional args in the variant's placeholder order."""

    def __init__(self, gm: fx.GraphModule, param_positions: list[int], backend: str):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.gm, self.backend = gm, backend
        self.param_positions = list(param_positions)
        self.workdir = tempfile.TemporaryDirectory(prefix=f"tokencache-{backend}-")
        self.executors: dict[tuple, object] = {}
        params = set(self.param_positions)
        inputs = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
        self.kinds = ["param" if i in params else "user" for i in range(inputs)]
        self.positions = [i for i, kind in enumerate(self.kinds) if kind == "user"]   # ONNX inputs "in.<i>"
        self.outputs = [f"out.{j}" for j in range(len(outputs_of(gm)))]

    def __call__(self, *args):
        key = parameter_key(args, self.param_positions)
        if key not in self.executors:
            self.executors[key] = self._build(args, len(self.executors))
        outputs = self.executors[key].run({f"in.{i}": args[i] for i in self.positions})
        return tuple(outputs[name] for name in self.outputs)

    def _build(self, args, index: int):
        from ..exporters.onnx import FrozenVariant, export_frozen

        for i in self.positions:
            if not isinstance(args[i], torch.Tensor):
                raise TypeError(f"tokencache (inner={self.backend!r}): input {i} of the graph is a "
                                f"{type(args[i]).__name__}, not a tensor; only tensors can be ONNX inputs")
        path = Path(self.workdir.name) / f"variant{index}.onnx"
        export_frozen(FrozenVariant(self.gm, self.kinds, list(args)), [args[i] for i in self.positions], path,
                      [f"in.{i}" for i in self.positions], self.outputs)
        if self.backend == "onnxruntime":
            return OrtExecutor(path, device=args[self.positions[0]].device if self.positions else torch.device("cpu"))
        from ..exporters.tensorrt import build_engine
        from ..runtime.tensorrt_runner import EngineExecutor
        dtypes = [args[i].dtype for i in self.param_positions if args[i].is_floating_point()]
        precision = _PRECISIONS.get(dtypes[0] if dtypes else torch.float32, "fp32")
        plan = build_engine(path, path.with_suffix(".plan"), precision, Path(self.workdir.name) / "timing.cache")
        return EngineExecutor(plan)


class OrtExecutor:
    """One ONNX file in an onnxruntime session: torch tensors in, torch tensors out (on `device`)."""

    def __init__(self, path: Path, device: torch.device):
        import onnxruntime as ort

        from ..runtime.bundle_runner import ort_session
        cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        self.session = ort_session(path, ["CUDAExecutionProvider"] * cuda + ["CPUExecutionProvider"], in_turns=True)
        self.device = device

    def run(self, feeds: dict) -> dict:
        wanted = [a.name for a in self.session.get_inputs()]      # onnxruntime may prune unused inputs
        if any(feeds[n].dtype == torch.bfloat16 for n in wanted):
            raise TypeError("tokencache (inner='onnxruntime'): bfloat16 inputs cannot pass through numpy; "
                            "use float32 or float16, or inner='tensorrt'")
        arrays = {n: feeds[n].detach().cpu().contiguous().numpy() for n in wanted}
        names = [o.name for o in self.session.get_outputs()]
        return {n: torch.from_numpy(v).to(self.device) for n, v in zip(names, self.session.run(names, arrays))}
