"""Issue 14, observed 11: errors. Malformed bundles are BundleErrors naming the file and the field;
manifest paths stay inside the bundle; export is atomic and replaces an old bundle whole; the CLI
checks output paths before any work and reports user errors in one line with exit code 2."""
import json
import shutil

import pytest
import torch

import tokencache
from tokencache import cli
from tokencache.exporters import BundleError, load_manifest
from tokencache.runtime.bundle_runner import OnnxBundleRunner
from tiny_models import ALL_CASES, generate, noise


def _export(directory, policy="toca"):
    case = ALL_CASES["reference"]()
    compiled = tokencache.compile(case.build(), policy=policy, num_steps=2, interval=2, inner="eager")
    generate(case, compiled, noise(case), steps=1)
    return tokencache.export(compiled, directory, progress=False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch._dynamo.reset()
    return _export(tmp_path_factory.mktemp("errors") / "bundle")


def _edit(bundle, tmp_path, change):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _set(path, value):
    def change(manifest):
        *keys, last = path
        target = manifest
        for k in keys:
            target = target[k]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return change


_DELETE = object()
CORRUPTIONS = {
    "top level a list": (lambda m: m.clear(), "top level"),       # replaced below by a list
    "variants a list": (_set(["variants"], ["fresh"]), "field variants must be"),
    "file not a string": (_set(["variants", "partial", "file"], 3), "variants['partial'].file"),
    "state_in missing": (_set(["variants", "partial", "state_in"], _DELETE), "variants['partial'].state_in"),
    "state_in not a list": (_set(["variants", "partial", "state_in"], "cache"), "variants['partial'].state_in"),
    "empty schedule": (_set(["schedule"], []), "field schedule"),
    "shape not a list": (_set(["signature", "inputs", 0, "shape"], "2x4"), "signature.inputs[0].shape"),
    "unknown dtype": (_set(["state", "cache:blocks.0.mlp", "dtype"], "float99"), "state['cache:blocks.0.mlp'].dtype"),
    "bad config": (_set(["config", "ratio"], 7), "field config"),
    "unknown policy": (_set(["policy"], "magic"), "field policy"),
    "engine not an object": (_set(["variants", "partial", "engine"], "partial.plan"), "variants['partial'].engine"),
    "path outside": (_set(["variants", "partial", "file"], "../../etc/passwd"), "outside the bundle directory"),
    "absolute path": (_set(["variants", "partial", "file"], "/etc/passwd"), "outside the bundle directory"),
    "variant name a path": (lambda m: m["variants"].update({"../x": m["variants"]["partial"]}), "variants key '../x'"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_malformed_manifest_is_a_bundle_error_naming_file_and_field(bundle, tmp_path, name):
    change, field = CORRUPTIONS[name]
    copy = _edit(bundle, tmp_path, change)
    if name == "top level a list":
        (copy / "manifest.json").write_text("[1, 2]")
    for load in (load_manifest, OnnxBundleRunner):
        with pytest.raises(BundleError) as info:
            load(copy)
        assert "manifest.json" in str(info.value) and field in str(info.value), str(info.value)


def test_manifest_that_is_not_utf8(bundle, tmp_path):
    copy = _edit(bundle, tmp_path, lambda m: None)
    (copy / "manifest.json").write_bytes(b'{"format_version": 1, "policy": "\xff\xfe"}')
    with pytest.raises(BundleError, match="manifest.json is not UTF-8"):
        load_manifest(copy)


def test_export_replaces_an_old_bundle_whole(tmp_path):
    out = tmp_path / "bundle"
    _export(out, policy="toca")
    assert (out / "partial.onnx").exists()
    _export(out, policy="fora")
    assert sorted(p.name for p in out.iterdir()) == ["fresh.onnx", "manifest.json", "reuse.onnx"]
    assert load_manifest(out)["policy"] == "fora"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]            # no temporary directories left


def test_interrupted_export_leaves_the_old_bundle(tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    _export(out, policy="toca")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from tokencache.exporters import bundle as bundle_module
    real = bundle_module.export_variant

    def fail_after_one(runtime, name, *args, **kwargs):       # the first variant's file is written
        if name != "fresh":
            raise KeyboardInterrupt
        return real(runtime, name, *args, **kwargs)
    monkeypatch.setattr(bundle_module, "export_variant", fail_after_one)
    with pytest.raises(KeyboardInterrupt):
        _export(out, policy="fora")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_export_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a tokencache bundle"):
        _export(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _no_work(*args, **kwargs):
    raise AssertionError("the command did work before checking its output path")


@pytest.mark.parametrize("argv, flag", [
    (["export", "--out", "{file}"], "bundle directory"),
    (["export", "--out", "{file}/sub"], "bundle directory"),
    (["demo", "--quick", "--out", "{file}"], "--out"),
    (["profile", "--json", "{file}/result.json"], "--json"),
    (["profile", "--plot", "{dir}"], "--plot"),
    (["profile", "--trace", "{missing}/trace.json"], "--trace"),
])
def test_cli_checks_output_paths_first(tmp_path, monkeypatch, capsys, argv, flag):
    import tokencache.demo
    import tokencache.profiling.targets
    monkeypatch.setattr(tokencache.demo, "run_demo", _no_work)
    monkeypatch.setattr(tokencache.profiling.targets, "load_target", _no_work)
    file = tmp_path / "a_file"
    file.write_text("x")
    paths = {"file": str(file), "dir": str(tmp_path), "missing": str(tmp_path / "missing")}
    assert cli.main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tokencache {argv[0]}: ") and flag in err and "Traceback" not in err


def test_cli_user_errors_are_one_line(capsys):
    assert cli.main(["profile", "--model", "no_such_module:factory", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tokencache profile: ")
