"""Inner backends: what compiles each variant graph once the passes have built it (inductor,
eager, inductor + CUDA graphs, ONNX through onnxruntime or TensorRT). `compile_variant` is the
entry point (inner.py)."""
from .inner import compile_variant, cpu_matmul_for, parameter_key

__all__ = ["compile_variant", "cpu_matmul_for", "parameter_key"]
