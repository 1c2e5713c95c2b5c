"""Dependencies between tokencache's packages point one way (issue 15, part 2):

    config, errors, compat, switches, cli_args, version, docs  <-  compiler (analysis)  <-  ops, passes  <-  policies
        <-  backends (inner compilers)  <-  runtime  <-  backend (the torch.compile entry)  <-  exporters  <-  API (tokencache, introspect, pipeline), profiling, models
        <-  cli, demo

Every import counts, including those inside functions (a lazy import hides a cycle from Python,
not from the next reader). An import that points up this order is a cycle in the making: it fails
unless it is one of today's, listed in KNOWN_UPWARD until the layering work removes it; a listed one
that is gone fails too, so the list only shrinks.
"""
from __future__ import annotations

import ast
from pathlib import Path

import tokencache

PACKAGE = Path(tokencache.__file__).parent
LAYERS = [
    {"config", "errors", "compat", "switches", "cli_args", "version", "docs"},
    {"compiler"},
    {"ops", "passes"},
    {"policies"},
    {"backends"},
    {"runtime"},
    {"backend"},                     # the torch.compile backend entry: analysis -> policy -> runtime
    {"exporters"},
    {"", "introspect", "pipeline", "profiling", "models", "distributed"},     # "": tokencache/__init__.py
    {"cli", "demo", "serving"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}

# Today's imports against the order (issue 15, part 2), each to be removed by moving code down.
KNOWN_UPWARD = {
    ("backends", "exporters"), ("backends", "runtime"),   # the onnxruntime/TensorRT inner backends export a
                                    # variant as `tokencache.export` does and run it with the bundle runners' executors
    ("ops", "runtime"),             # ops/linear.py reads runtime/packed_weights.py
    ("runtime", "exporters"),       # bundle runners read the manifest
    ("exporters", "profiling"), ("exporters", ""),   # exporters/cli.py, the export subcommand: a CLI module
    ("", "pipeline"), ("pipeline", ""),   # __init__ re-exports compile_pipeline, which calls tokencache.compile
}


def _unit(module: str) -> str:
    """tokencache.passes.partial -> "passes"; tokencache.config -> "config"; tokencache -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def imports() -> set[tuple[str, str, str]]:
    """(importing unit, imported unit, file) for every import of tokencache code in tokencache."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
                names = subs if len(subs) == len(node.names) else [base]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "tokencache" and _is_module(name) and _unit(name) != _unit(module):
                    found.add((_unit(module), _unit(name), str(path.relative_to(PACKAGE.parent))))
    return found


def test_every_package_has_a_layer():
    units = {_unit(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in PACKAGE.rglob("*.py")}
    units = {u if u != "__init__" else "" for u in units}
    assert units <= set(LAYER), f"give these a layer in LAYERS: {sorted(units - set(LAYER))}"


def test_imports_point_down_the_layers():
    upward = {}
    for source, target, path in imports():
        if LAYER[target] > LAYER[source] or (LAYER[target] == LAYER[source] and (target, source) in
                                              {(s, t) for s, t, _ in imports()}):
            upward.setdefault((source, target), []).append(path)
    new = {edge: files for edge, files in upward.items() if edge not in KNOWN_UPWARD}
    gone = KNOWN_UPWARD - set(upward)
    assert not new, f"imports against the layer order (or a cycle within a layer): {new}"
    assert not gone, f"these no longer exist: remove them from KNOWN_UPWARD: {sorted(gone)}"
