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

    def _names(self, args) -> tuple[list[int], list[str]]:
        params = set(self.param_positions)
        positions = [i for i in range(len(args)) if i not in params]
        for i in positions:
            if not isinstance(args[i], torch.Tensor):
                raise TypeError(f"tokencache (inner={self.backend!r}): input {i} of the graph is a "
                                f"{type(args[i]).__name__}, not a tensor; only tensors can be ONNX inputs")
        return positions, [f"in.{i}" for i in positions]

    def __call__(self, *args):
        key = parameter_key(args, self.param_positions)
        if key not in self.executors:
            self.executors[key] = self._build(args, len(self.executors))
        positions, names = self._names(args)
        outputs = self.executors[key].run({n: args[i] for n, i in zip(names, positions)})
        return tuple(outputs[f"out.{j}"] for j in range(len(outputs)))

    def _build(self, args, index: int):
        from ..exporters.onnx import FrozenVariant, export_frozen
        from ..passes.graph_edit import outputs_of

        params = set(self.param_positions)
        kinds = ["param" if i in params else "user" for i in range(len(args))]
        positions, names = self._names(args)
        n_out = len(outputs_of(self.gm))
        path = Path(self.workdir.name) / f"variant{index}.onnx"
        export_frozen(FrozenVariant(self.gm, kinds, list(args)), [args[i] for i in positions], path,
                      names, [f"out.{j}" for j in range(n_out)])
        if self.backend == "onnxruntime":
            return OrtExecutor(path, device=args[positions[0]].device if positions else torch.device("cpu"))
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
