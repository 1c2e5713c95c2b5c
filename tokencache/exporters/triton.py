"""`tokencache export --triton DIR`: a Triton Inference Server model repository for a bundle.

    DIR/<name>/config.pbtxt          backend "python", the bundle's inputs and outputs, a sequence
                                     batcher (one client generation = one sequence, START/END)
    DIR/<name>/1/model.py            exporters/triton_model.py: replays the schedule over the bundle
    DIR/<name>/1/bundle/             the bundle (manifest.json, ONNX files, TensorRT plans)

Written against Triton's documented layout and model-config fields; not run inside a Triton
server here (no GPU, and its Python stub needs a matching libpython).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .manifest import BundleError, load_manifest

# manifest dtype -> Triton data_type
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
RUNNERS = ("onnxruntime", "tensorrt")


def _tensor(spec: dict) -> str:
    dtype = TRITON_TYPES.get(spec["dtype"])
    if dtype is None:
        raise BundleError(f"tensor {spec['name']!r} has dtype {spec['dtype']!r}, which Triton has no type for")
    dims = ", ".join(str(int(d)) for d in spec["shape"]) or "1"
    return f'  {{\n    name: "{spec["name"]}"\n    data_type: {dtype}\n    dims: [ {dims} ]\n  }}'


def model_config(manifest: dict, name: str, runner: str, gpu: bool, idle_seconds: int = 600) -> str:
    """config.pbtxt text (protobuf text format of Triton's ModelConfig)."""
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    inputs = ",\n".join(_tensor(s) for s in manifest["signature"]["inputs"])
    outputs = ",\n".join(_tensor(s) for s in manifest["signature"]["outputs"])
    control = "\n".join(
        f'    {{\n      name: "{flag}"\n      control [ {{ kind: CONTROL_SEQUENCE_{flag} fp32_false_true: [ 0, 1 ] }} ]\n    }}'
        + ("," if flag == "START" else "") for flag in ("START", "END"))
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"sequence_batching {{\n  max_sequence_idle_microseconds: {idle_seconds * 1_000_000}\n"
            f"  control_input [\n{control}\n  ]\n}}\n"
            f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]\n"
            f'parameters {{\n  key: "runner"\n  value: {{ string_value: "{runner}" }}\n}}\n'
            f'parameters {{\n  key: "sequence_idle_seconds"\n  value: {{ string_value: "{idle_seconds}" }}\n}}\n')


def write_triton_repository(bundle: str | Path, out: str | Path, name: str = "tokencache",
                            runner: str = "onnxruntime", gpu: bool | None = None) -> Path:
    """Write DIR/<name>/ for `bundle`; returns the model directory. `gpu`: instance kind (default:
    GPU for the TensorRT runner, CPU otherwise)."""
    bundle, out = Path(bundle), Path(out)
    manifest = load_manifest(bundle)
    if runner == "tensorrt" and any("engine" not in v for v in manifest["variants"].values()):
        raise BundleError(f"{bundle}: runner 'tensorrt' needs engines; run `tokencache export --tensorrt` first")
    model_dir = out / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version = model_dir / "1"
    version.mkdir(parents=True)
    config = model_config(manifest, name, runner, runner == "tensorrt" if gpu is None else gpu)
    (model_dir / "config.pbtxt").write_text(config)
    shutil.copy(Path(__file__).with_name("triton_model.py"), version / "model.py")
    shutil.copytree(bundle, version / "bundle")
    return model_dir
