"""`tokencache export --check`: every variant's ONNX file against the PyTorch graph it came from,
run through polygraphy's onnxruntime runner on the same example inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .bundle import _main_runtime, example_values
from .manifest import load_manifest
from .onnx import FrozenVariant, io_names


def check_bundle(compiled, bundle: str | Path) -> dict[str, dict[str, float]]:
    """Variant -> output name -> max absolute error (ONNX via onnxruntime vs PyTorch)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    runtime = _main_runtime(compiled)
    manifest = load_manifest(bundle)
    examples, _ = example_values(runtime)
    errors: dict[str, dict[str, float]] = {}
    for name, spec in manifest["variants"].items():
        module = FrozenVariant(runtime.variants[name], [gi.kind for gi in runtime.inputs], runtime.example_inputs).eval()
        with torch.no_grad():
            expected = module(*examples[name])
        inputs, outputs = io_names(runtime, name)
        with OnnxrtRunner(SessionFromOnnx(str(Path(bundle) / spec["file"]))) as runner:
            wanted = set(runner.get_input_metadata().keys())
            got = runner.infer({k: v.numpy() for k, v in zip(inputs, examples[name]) if k in wanted})
        errors[name] = {out: float(np.abs(got[out].astype(np.float64) - exp.numpy().astype(np.float64)).max())
                        for out, exp in zip(outputs, expected)}
    return errors


def format_errors(errors: dict[str, dict[str, float]]) -> str:
    """One line per variant: its worst output, then every output's max absolute error."""
    lines = []
    for variant, per_output in errors.items():
        worst = max(per_output, key=per_output.get)
        lines.append(f"  {variant}: max abs error {per_output[worst]:.2e} ({worst}) over {len(per_output)} outputs")
        lines += [f"    {name:<48} {err:.2e}" for name, err in per_output.items()]
    return "\n".join(lines)
