"""Export the variants a compiled model runs as a bundle: ONNX files + manifest.json."""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from ..policies import FRESH
from .manifest import FORMAT_VERSION, sha256, write_manifest
from .onnx import check_exporter, export_variant, io_names


def _dtype(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _spec(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": _dtype(t)}


def _main_runtime(compiled):
    from .. import _sessions

    found = _sessions(compiled)
    if not found:
        raise ValueError("call the compiled model once before exporting: the bundle is built from the "
                         "graphs and input shapes of that call")
    return max(found, key=lambda rs: rs[1].last_call)[0]


def example_values(runtime) -> dict[str, list]:
    """Per variant, example values of its non-parameter inputs (in io_names order), produced by
    replaying the schedule once on the captured example inputs so that state has real contents.
    The timestep moves from step to step, so cached steps see inputs that differ from the fresh
    step's (token scores then rank real changes, not rounding noise)."""
    state: dict = {}
    fresh_steps: list[int] = []
    examples: dict[str, list] = {}
    user = [gi.index for gi in runtime.inputs if gi.kind == "user"]
    with torch.no_grad():
        for step, name in enumerate(runtime.schedule):
            if name == FRESH:
                fresh_steps.append(step)
            inputs = list(runtime.example_inputs)
            if runtime.timestep is not None and torch.is_floating_point(inputs[runtime.timestep.index]):
                t = inputs[runtime.timestep.index]
                inputs[runtime.timestep.index] = t * (1 - step / len(runtime.schedule)) + 0.5 * step
            args = runtime.assemble(name, inputs, state, step, fresh_steps)
            if name not in examples:
                examples[name] = [args[i] for i in user] + list(args[len(runtime.inputs):])
            gm = runtime.variants[name]
            outs = gm(*args)
            state.update(zip(gm.meta["tokencache"]["state_out"], outs[gm.meta["tokencache"]["num_outputs"]:]))
            if len(examples) == len(runtime.variants):
                break
    return examples, state


def export(compiled, out_dir, exporter: str = "dynamo", opset: int = 18, progress: bool = True) -> Path:
    """Write one ONNX file per variant of `compiled` (after one call) and manifest.json to `out_dir`."""
    from .. import __version__

    check_exporter(exporter, opset)
    runtime = _main_runtime(compiled)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples, state = example_values(runtime)
    variants = {}
    for name in tqdm(list(examples), desc="exporting variants", disable=not progress):
        file = out / f"{name}.onnx"
        export_variant(runtime, name, examples[name], file, exporter, opset)
        wiring = runtime.variants[name].meta["tokencache"]
        inputs, outputs = io_names(runtime, name)
        variants[name] = {
            "file": file.name, "sha256": sha256(file), "inputs": inputs, "outputs": outputs,
            "state_in": wiring["state_in"], "state_out": wiring["state_out"], "host_in": wiring["host_in"],
            "state_init": {k: {"shape": list(shape), "dtype": str(dtype).replace("torch.", "")}
                           for k, (shape, dtype) in wiring.get("state_init", {}).items()},
        }
    users = [gi for gi in runtime.inputs if gi.kind == "user"]
    fresh_outputs = runtime.variants[runtime.schedule[0]](*runtime.assemble(runtime.schedule[0], runtime.example_inputs, {}, 0, [0]))
    num_outputs = runtime.variants[runtime.schedule[0]].meta["tokencache"]["num_outputs"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokencache_version": __version__,
        "exporter": exporter, "opset": opset,
        "policy": runtime.report_base["policy"],
        "config": runtime.config.to_dict(),
        "fallback_reason": runtime.report_base["fallback_reason"],
        "timestep_input": runtime.timestep.name if runtime.timestep else None,
        "schedule": list(runtime.schedule),
        "signature": {"inputs": [_spec(gi.name, runtime.example_inputs[gi.index]) for gi in users],
                      "outputs": [_spec(f"output.{i}", t) for i, t in enumerate(fresh_outputs[:num_outputs])]},
        "state": {k: {"shape": list(t.shape), "dtype": _dtype(t)} for k, t in state.items()},
        "variants": variants,
    }
    write_manifest(out, manifest)
    return out
