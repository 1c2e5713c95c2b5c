"""Exporters: the variants tokencache runs, as ONNX bundles and TensorRT engines."""
from .bundle import export
from .manifest import BundleError, load_manifest

__all__ = ["BundleError", "export", "load_manifest"]
