"""Export the variants a compiled model runs as a bundle: ONNX files + manifest.json."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import torch
from tqdm import tqdm

from ..policies import FRESH
from .manifest import FORMAT_VERSION, MANIFEST, sha256, write_manifest
from .onnx import check_exporter, export_variant, io_names


def _dtype(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _spec(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": _dtype(t)}


def _main_runtime(compiled):
    from ..runtime.registry import runtimes_of

    found = runtimes_of(compiled)
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


def check_bundle_target(out_dir) -> Path:
    """`out_dir` may receive a bundle: it does not exist, or is an empty directory or a bundle (then
    replaced whole), and its parent can be written; otherwise a ValueError saying why, before any work."""
    out = Path(os.path.abspath(out_dir))
    if out.exists() and not out.is_dir():
        raise ValueError(f"bundle directory {out_dir}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"bundle directory {out_dir}: a non-empty directory that is not a tokencache bundle (no "
                         f"{MANIFEST}); refusing to replace it")
    parent = out.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"bundle directory {out_dir}: {existing or parent} is not a writable directory")
    return out


def _replace(staging: Path, out: Path) -> None:
    """Move the finished bundle into place; an older bundle at `out` is removed only afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(compiled, out_dir, exporter: str = "dynamo", opset: int = 18, progress: bool = True) -> Path:
    """Write one ONNX file per variant of `compiled` (after one call) and manifest.json to `out_dir`.

    The bundle is written into a temporary directory beside `out_dir` and renamed into place when
    complete: an interrupted export leaves no half bundle, and an existing bundle at `out_dir` is
    replaced whole (no stale files of an earlier export remain)."""
    check_exporter(exporter, opset)
    runtime = _main_runtime(compiled)
    out = check_bundle_target(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)       # mkdtemp makes it private; a bundle gets the usual mode
        _write_bundle(runtime, staging, exporter, opset, progress)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_bundle(runtime, out: Path, exporter: str, opset: int, progress: bool) -> None:
    from ..version import __version__

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
