"""manifest.json of a bundle: everything needed to replay the cache schedule without PyTorch.

    format_version, tokencache_version, config (CacheConfig fields), policy, schedule (variant per
    step), timestep_input, signature {inputs, outputs: [{name, shape, dtype}]}, state {key: {shape,
    dtype}}, variants {name: {file, sha256, inputs, outputs, state_in, state_out, host_in,
    state_init, engine?}}. State flows by name: a variant's output "new_state.<key>" is the next
    variant's input "state.<key>"; state a variant does not output keeps its value; state listed in
    `state_init` may start as zeros. `engine` {file, sha256, precision, optimization_level,
    tensorrt_version} appears once `tokencache export --tensorrt` has built the variant's plan.
    State is kept per call position (a model called twice per step, e.g. for CFG halves, has two).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle on disk is incomplete, altered or from an unknown format; the message names what."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=1))
    return path


def load_manifest(directory: Path | str, verify: bool = True) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise BundleError(f"{path} not found: not a tokencache bundle (export one with `tokencache export`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: unknown bundle format_version {version!r}; this tokencache reads {FORMAT_VERSION}")
    for key in ("config", "schedule", "signature", "state", "variants"):
        if key not in manifest:
            raise BundleError(f"{path}: missing field {key!r}")
    for name, variant in manifest["variants"].items():
        files = [(variant["file"], variant["sha256"])]
        if "engine" in variant:                  # TensorRT plan, once `export --tensorrt` built it
            files.append((variant["engine"]["file"], variant["engine"]["sha256"]))
        for relative, digest in files:
            file = directory / relative
            if not file.exists():
                raise BundleError(f"variant {name!r}: file {file} is missing")
            if verify and sha256(file) != digest:
                raise BundleError(f"variant {name!r}: sha256 of {file} does not match the manifest (file changed or corrupted)")
    _check_wiring(path, manifest)
    unknown = sorted(set(manifest["schedule"]) - set(manifest["variants"]))
    if unknown:
        raise BundleError(f"{path}: schedule names variant {unknown[0]!r} that the bundle does not contain")
    return manifest


def _check_wiring(path: Path, manifest: dict) -> None:
    """Every state tensor a variant reads or writes is declared, and every one it reads is written
    by some variant or may start as zeros: otherwise the schedule cannot be replayed."""
    written = {k for v in manifest["variants"].values() for k in v["state_out"]}
    for name, variant in manifest["variants"].items():
        for key in variant["state_in"] + variant["state_out"]:
            if key not in manifest["state"] and key not in variant.get("state_init", {}):
                raise BundleError(f"{path}: variant {name!r} uses state tensor {key!r} that the manifest does not declare")
        for key in variant["state_in"]:
            if key not in written and key not in variant.get("state_init", {}):
                raise BundleError(f"{path}: variant {name!r} reads state tensor {key!r} that no variant writes")


def check_state(manifest: dict, key: str, shape, dtype: str) -> None:
    """Raise if a state tensor does not have the shape/dtype the manifest declares."""
    expected = manifest["state"].get(key)
    if expected is None:
        raise BundleError(f"state tensor {key!r} is not declared in the manifest")
    if list(shape) != expected["shape"] or dtype != expected["dtype"]:
        raise BundleError(f"state tensor {key!r} has shape {list(shape)} {dtype}; the manifest declares "
                          f"{expected['shape']} {expected['dtype']}")
