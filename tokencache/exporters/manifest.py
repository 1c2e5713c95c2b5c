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
import re
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


DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


def load_manifest(directory: Path | str, verify: bool = True) -> dict:
    """The bundle's manifest, checked: every field the runners use has the right type (a malformed
    one is a BundleError naming the file and the field), every file it names lies inside the bundle
    directory and exists, and (with `verify`) matches its sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path} not found: not a tokencache bundle (export one with `tokencache export`)")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    except OSError as e:
        raise BundleError(f"{path} cannot be read: {e.strerror or e}") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: the top level must be a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: unknown bundle format_version {version!r}; this tokencache reads {FORMAT_VERSION}")
    _check_fields(path, manifest)
    for name, variant in manifest["variants"].items():
        files = [(f"variants[{name!r}].file", variant["file"], variant["sha256"])]
        if "engine" in variant:                  # TensorRT plan, once `export --tensorrt` built it
            files.append((f"variants[{name!r}].engine.file", variant["engine"]["file"], variant["engine"]["sha256"]))
        for field, relative, digest in files:
            file = bundle_file(directory, relative, field)
            if not file.exists():
                raise BundleError(f"variant {name!r}: file {file} is missing")
            if verify and sha256(file) != digest:
                raise BundleError(f"variant {name!r}: sha256 of {file} does not match the manifest (file changed or corrupted)")
    _check_wiring(path, manifest)
    unknown = sorted(set(manifest["schedule"]) - set(manifest["variants"]))
    if unknown:
        raise BundleError(f"{path}: schedule names variant {unknown[0]!r} that the bundle does not contain")
    return manifest


def bundle_file(directory: Path, relative, field: str = "file") -> Path:
    """`relative` (a manifest's file name) inside `directory`; a BundleError if it leads outside."""
    inside = Path(directory).resolve()
    target = (Path(directory) / relative).resolve()
    if Path(relative).is_absolute() or (target != inside and inside not in target.parents):
        raise BundleError(f"{Path(directory) / MANIFEST}: field {field} = {relative!r} points outside the bundle "
                          f"directory {Path(directory)}")
    return Path(directory) / relative


class _Fields:
    """Type checks of manifest fields; each failure names the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, wanted: str, value) -> None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise BundleError(f"{self.path}: field {field} must be {wanted}, got {shown}")

    def has(self, obj: dict, key: str, field: str):
        if key not in obj:
            raise BundleError(f"{self.path}: missing field {field}")
        return obj[key]

    def string(self, value, field: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(field, "a non-empty string", value)
        return value

    def strings(self, value, field: str) -> list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(field, "a list of strings", value)
        return value

    def mapping(self, value, field: str, nonempty: bool = False) -> dict:
        if not isinstance(value, dict) or (nonempty and not value):
            self.fail(field, "a non-empty JSON object" if nonempty else "a JSON object", value)
        return value

    def spec(self, value, field: str) -> None:
        """{shape: [int >= 0, ...], dtype: one of DTYPES}"""
        self.mapping(value, field)
        shape = self.has(value, "shape", f"{field}.shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            self.fail(f"{field}.shape", "a list of non-negative integers", shape)
        if self.has(value, "dtype", f"{field}.dtype") not in DTYPES:
            self.fail(f"{field}.dtype", f"one of {', '.join(DTYPES)}", value["dtype"])


def _check_fields(path: Path, manifest: dict) -> None:
    from ..config import POLICIES, CacheConfig

    f = _Fields(path)
    for key in ("config", "policy", "schedule", "signature", "state", "variants"):
        f.has(manifest, key, key)
    try:
        CacheConfig.from_options(f.mapping(manifest["config"], "config"))
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: field config is not a tokencache configuration: {e}") from e
    if manifest["policy"] not in POLICIES:
        f.fail("policy", f"one of {', '.join(POLICIES)}", manifest["policy"])
    f.strings(manifest["schedule"], "schedule")
    if not manifest["schedule"]:
        f.fail("schedule", "a non-empty list of variant names", manifest["schedule"])
    if manifest.get("timestep_input") is not None:
        f.string(manifest["timestep_input"], "timestep_input")
    signature = f.mapping(manifest["signature"], "signature")
    for side in ("inputs", "outputs"):
        specs = f.has(signature, side, f"signature.{side}")
        if not isinstance(specs, list):
            f.fail(f"signature.{side}", "a list", specs)
        for i, spec in enumerate(specs):
            f.spec(spec, f"signature.{side}[{i}]")
            f.string(spec.get("name"), f"signature.{side}[{i}].name")
    for key, spec in f.mapping(manifest["state"], "state").items():
        f.spec(spec, f"state[{key!r}]")
    for name, variant in f.mapping(manifest["variants"], "variants", nonempty=True).items():
        where = f"variants[{name!r}]"
        if not re.fullmatch(r"\w[\w.-]*", name):        # names become file names (<variant>.plan)
            f.fail(f"variants key {name!r}", "a plain name (letters, digits, _ . -)", name)
        f.mapping(variant, where)
        for key in ("file", "sha256"):
            f.string(f.has(variant, key, f"{where}.{key}"), f"{where}.{key}")
        for key in ("inputs", "outputs", "state_in", "state_out", "host_in"):
            f.strings(f.has(variant, key, f"{where}.{key}"), f"{where}.{key}")
        for key, spec in f.mapping(variant.get("state_init", {}), f"{where}.state_init").items():
            f.spec(spec, f"{where}.state_init[{key!r}]")
        if "engine" in variant:
            engine = f.mapping(variant["engine"], f"{where}.engine")
            for key in ("file", "sha256"):
                f.string(f.has(engine, key, f"{where}.engine.{key}"), f"{where}.engine.{key}")


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
