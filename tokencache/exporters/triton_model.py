"""The Triton Inference Server Python-backend model of a tokencache bundle (`model.py` of the
repository `tokencache export --triton DIR` writes; exporters/triton.py).

Each Triton request is one model call (one denoising step, or one CFG half). Requests of one
client generation form a Triton *sequence* (the sequence batcher's correlation id, with its START
and END control inputs): every sequence is one `tokencache.generation` of the bundle runner, so
the schedule's fresh/cached steps and the caches follow that client's steps only, whatever other
sequences run in between. The runner is onnxruntime (CUDA provider when present) or TensorRT
(`runner` parameter of config.pbtxt). The server's Python environment needs tokencache installed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

try:                                      # provided by Triton's Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:                       # importable outside Triton (tests install a stand-in)
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args):
        import tokencache
        from tokencache.exporters.manifest import load_manifest

        global pb_utils
        if pb_utils is None:
            import triton_python_backend_utils as pb_utils      # noqa: F811 (a stand-in, in tests)
        config = json.loads(args["model_config"])
        bundle = Path(args["model_repository"]) / str(args["model_version"]) / "bundle"
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if parameters.get("runner", "onnxruntime") == "tensorrt":
            from tokencache.runtime.tensorrt_runner import TensorRTBundleRunner
            self.runner = TensorRTBundleRunner(bundle, cuda_graphs=parameters.get("cuda_graphs") == "true")
        else:
            from tokencache.runtime.bundle_runner import OnnxBundleRunner
            self.runner = OnnxBundleRunner(bundle)
        manifest = load_manifest(bundle, verify=False)
        self.inputs = [spec["name"] for spec in manifest["signature"]["inputs"]]
        self.outputs = [spec["name"] for spec in manifest["signature"]["outputs"]]
        self.steps = len(manifest["schedule"])
        # a sequence Triton drops (idle past max_sequence_idle_microseconds) never sends END: its
        # generation is freed once it has been idle that long here too
        self.idle_seconds = float(parameters.get("sequence_idle_seconds", 600))
        self.generations: dict = {}       # correlation id -> tokencache.generation handle
        self.last_seen: dict = {}         # correlation id -> time of its last request
        self._tokencache = tokencache

    def execute(self, requests):
        self._drop_idle(time.monotonic())
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as e:        # one bad request answers with its error, the others run
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    f"{type(e).__name__}: {e}")))
        return responses

    def _one(self, request):
        feeds = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing; the model takes {', '.join(self.inputs)}")
            feeds[name] = tensor.as_numpy()
        sequence = request.correlation_id()
        if self._flag(request, "START") or sequence not in self.generations:
            self._end(sequence)
            self.generations[sequence] = self._tokencache.generation(self.runner, steps=self.steps)
        handle = self.generations[sequence]
        self.last_seen[sequence] = time.monotonic()
        with handle.resumed():
            outputs = self.runner(**feeds)
        if self._flag(request, "END"):
            self._end(sequence)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(name, np.asarray(value.cpu() if hasattr(value, "cpu") else value))
            for name, value in zip(self.outputs, outputs)])

    def _end(self, sequence) -> None:
        handle = self.generations.pop(sequence, None)
        self.last_seen.pop(sequence, None)
        if handle is not None:
            with handle:                  # leaving the block frees its caches
                pass

    def _drop_idle(self, now: float) -> None:
        for sequence in [s for s, seen in self.last_seen.items() if now - seen > self.idle_seconds]:
            self._end(sequence)

    @staticmethod
    def _flag(request, name: str) -> bool:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return tensor is not None and bool(np.asarray(tensor.as_numpy()).reshape(-1)[0])

    def finalize(self):
        for sequence in list(self.generations):
            self._end(sequence)
