"""ONNX bundles: round trips against the PyTorch runtime, manifest validation, runner input checks,
TensorRT settings (engines themselves need TensorRT and a GPU)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import tokencache
from tokencache.exporters import BundleError, load_manifest
from tokencache.exporters.cli import add_export_parser, run_export
from tokencache.exporters.tensorrt import (TensorRTUnavailable, build_engines, builder_settings, engine_jobs,
                                           tensorrt_missing)
from tokencache.runtime.bundle_runner import BundleInputError, OnnxBundleRunner, bind_like
from tiny_models import ALL_CASES, generate, noise, rel_err

STEPS = 6
ROUND_TRIPS = [("reference", dict(policy="none")), ("reference", dict(policy="fora")),
               ("reference", dict(policy="toca")), ("reference", dict(policy="duca", aggressive="skip")),
               ("reference", dict(policy="taylorseer")), ("reference", dict(policy="clusca", clusters=4)),
               ("diffusers_dit", dict(policy="none")), ("diffusers_dit", dict(policy="fora")),
               ("diffusers_dit", dict(policy="toca", attention="tokens")),
               ("pixart", dict(policy="none")), ("pixart", dict(policy="fora")), ("pixart", dict(policy="toca"))]


def _exported(case_name, options, directory, **export_options):
    case = ALL_CASES[case_name]()
    model = case.build()
    compiled = tokencache.compile(model, num_steps=STEPS, inner="eager", interval=2, **options)
    x0 = noise(case)
    expected = generate(case, compiled, x0, steps=STEPS)
    tokencache.export(compiled, directory, progress=False, **export_options)
    return case, model, x0, expected


@pytest.mark.parametrize("case_name, options", ROUND_TRIPS, ids=[f"{c}-{o['policy']}" for c, o in ROUND_TRIPS])
def test_bundle_replays_the_generation(case_name, options, tmp_path):
    case, model, x0, expected = _exported(case_name, options, tmp_path)
    runner = OnnxBundleRunner(tmp_path)
    got = generate(case, bind_like(runner, model, tuple_output=case_name != "reference"), x0, steps=STEPS)
    assert rel_err(got, expected) <= 1e-4
    second = generate(case, bind_like(runner, model, tuple_output=case_name != "reference"), x0, steps=STEPS)
    assert rel_err(second, expected) <= 1e-4                       # a new generation resets the replay
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["schedule"]) == STEPS
    assert sum(runner.session.calls.values()) == 2 * STEPS


EMBEDDED_WEIGHTS = Path(tokencache.__file__).parent / "models" / "weights" / "fashion_dit.pt"


@pytest.mark.skipif(not EMBEDDED_WEIGHTS.exists(), reason=f"embedded model weights not shipped yet ({EMBEDDED_WEIGHTS})")
def test_embedded_model_bundle_replays_cfg_sampling(tmp_path):
    from tokencache.models.fashion_dit import load_default_model
    from tokencache.models.sampling import make_noise, sample

    model = load_default_model()
    compiled = tokencache.compile(model, policy="toca", num_steps=STEPS, inner="eager")
    noise_, labels = make_noise(2), torch.tensor([1, 7])
    expected = sample(compiled, noise_, labels, steps=STEPS)
    tokencache.export(compiled, tmp_path, progress=False)
    got = sample(bind_like(OnnxBundleRunner(tmp_path), model), noise_, labels, steps=STEPS)
    assert rel_err(got, expected) <= 1e-4


def test_torchscript_exporter_fallback_at_opset_20(tmp_path):
    case, model, x0, expected = _exported("reference", dict(policy="toca"), tmp_path, exporter="torchscript", opset=20)
    assert load_manifest(tmp_path)["exporter"] == "torchscript"
    got = generate(case, bind_like(OnnxBundleRunner(tmp_path), model, tuple_output=False), x0, steps=STEPS)
    assert rel_err(got, expected) <= 1e-4


def test_bad_exporter_or_opset_named_before_any_work(tmp_path):
    compiled = tokencache.compile(ALL_CASES["reference"]().build(), policy="toca")   # never called
    with pytest.raises(ValueError, match="opset must be one of 18, 19, 20, got 13"):
        tokencache.export(compiled, tmp_path, opset=13)
    with pytest.raises(ValueError, match="exporter .* got 'legacy'"):
        tokencache.export(compiled, tmp_path, exporter="legacy")


def test_schedule_and_wiring_rebuildable_from_manifest(tmp_path):
    _exported("reference", dict(policy="toca"), tmp_path)
    manifest = load_manifest(tmp_path)
    assert manifest["schedule"] == ["fresh", "partial"] * 3
    partial = manifest["variants"]["partial"]
    produced = set(manifest["variants"]["fresh"]["state_out"])
    assert set(partial["state_in"]) <= produced                    # state flows fresh -> partial by key
    assert all(f"state.{k}" in partial["inputs"] for k in partial["state_in"])
    assert all(f"new_state.{k}" in partial["outputs"] for k in partial["state_out"])
    assert manifest["config"]["ratio"] == 0.25 and manifest["timestep_input"] == "timestep"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bundle")
    torch._dynamo.reset()
    _exported("reference", dict(policy="toca"), directory)
    return directory


def _copy(bundle, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def test_missing_file_is_named(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    (copy / "partial.onnx").unlink()
    with pytest.raises(BundleError, match="partial.onnx is missing"):
        load_manifest(copy)


def test_sha256_mismatch_is_named(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    with open(copy / "fresh.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256 of .*fresh.onnx"):
        load_manifest(copy)


def test_unknown_format_version(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99"):
        load_manifest(copy)


def test_state_shape_mismatch_is_named(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["state"]["cache:blocks.0.mlp"]["shape"] = [2, 64, 65]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    runner = OnnxBundleRunner(copy)
    inputs = {"hidden_states": torch.randn(2, 4, 16, 16), "timestep": torch.tensor([999.0, 999.0]),
              "class_labels": torch.tensor([1, 2])}
    with pytest.raises(BundleError, match="cache:blocks.0.mlp"):
        runner(**inputs)


def test_undeclared_state_is_named(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["state"]["cache:blocks.0.mlp"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="state tensor 'cache:blocks.0.mlp'.*not declare"):
        load_manifest(copy)


def test_engine_files_are_verified_too(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["variants"]["partial"]["engine"] = {"file": "partial.plan", "sha256": "0" * 64}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="partial.plan is missing"):
        load_manifest(copy)
    (copy / "partial.plan").write_bytes(b"not an engine")
    with pytest.raises(BundleError, match="sha256 of .*partial.plan"):
        load_manifest(copy)


def test_runner_rejects_wrong_shapes_and_dtypes(bundle):
    runner = OnnxBundleRunner(bundle)
    good = {"hidden_states": torch.randn(2, 4, 16, 16), "timestep": torch.tensor([999.0, 999.0]),
            "class_labels": torch.tensor([1, 2])}
    with pytest.raises(BundleInputError, match="hidden_states.*\\[3, 4, 16, 16\\]"):
        runner(**dict(good, hidden_states=torch.randn(3, 4, 16, 16)))
    with pytest.raises(BundleInputError, match="class_labels.*int32"):
        runner(**dict(good, class_labels=torch.tensor([1, 2], dtype=torch.int32)))
    with pytest.raises(BundleInputError, match="missing \\['timestep'\\]"):
        runner(hidden_states=good["hidden_states"], class_labels=good["class_labels"])
    assert np.isfinite(runner(**good)[0]).all()


def test_tensorrt_builder_settings():
    assert builder_settings("fp16") == {"fp16": True, "bf16": False, "tf32": True, "builder_optimization_level": 3}
    s = builder_settings("fp32", timing_cache="/tmp/t.cache", optimization_level=5)
    assert s["fp16"] is False and s["tf32"] is False and s["load_timing_cache"] == "/tmp/t.cache"
    with pytest.raises(ValueError, match="precision"):
        builder_settings("int4")
    with pytest.raises(ValueError, match="optimisation level"):
        builder_settings("fp16", optimization_level=9)
    from polygraphy.backend.trt import CreateConfig
    CreateConfig(**builder_settings("bf16"))          # polygraphy accepts every key (lazy: no TensorRT needed)


def test_engine_jobs_without_tensorrt(bundle, tmp_path):
    jobs, cache = engine_jobs(bundle)
    assert [(n, o.name, p.name) for n, o, p in jobs] == [("fresh", "fresh.onnx", "fresh.plan"),
                                                         ("partial", "partial.onnx", "partial.plan")]
    assert cache == bundle / "timing.cache"
    assert engine_jobs(bundle, tmp_path / "shared.cache")[1] == tmp_path / "shared.cache"
    with pytest.raises(ValueError, match="precision .* got 'int4'"):
        build_engines(bundle, precision="int4")            # flags are checked before TensorRT is looked for


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and a GPU are present: the unavailable path does not apply")
def test_tensorrt_unavailable_is_a_clear_error(bundle):
    with pytest.raises(TensorRTUnavailable, match="TensorRT|GPU"):
        build_engines(bundle)
    from tokencache.runtime.tensorrt_runner import TensorRTBundleRunner
    with pytest.raises(TensorRTUnavailable, match="TensorRT|GPU"):
        TensorRTBundleRunner(bundle)


def _parse_export(*argv):
    import argparse
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["export", *argv])


def test_export_cli_with_check(tmp_path, capsys):
    args = _parse_export("--model", "profile_factories:good", "--steps", "4", "--interval", "2",
                         "--out", str(tmp_path / "b"), "--check")
    assert run_export(args) == 0
    out = capsys.readouterr().out
    assert "fresh: max abs error" in out and "partial: max abs error" in out and "new_state.cache:" in out
    worst = [float(line.split("error ")[1].split()[0]) for line in out.splitlines() if "max abs error" in line]
    assert max(worst) < 1e-4
    assert load_manifest(tmp_path / "b")["schedule"] == ["fresh", "partial"] * 2


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and a GPU are present")
def test_export_cli_tensorrt_fails_clearly(tmp_path, capsys):
    assert run_export(_parse_export("--model", "profile_factories:good", "--out", str(tmp_path), "--tensorrt")) == 2
    assert "tokencache export --tensorrt:" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()          # failed before exporting anything
    with pytest.raises(SystemExit):
        _parse_export("--opset", "13")


@pytest.mark.skipif(tensorrt_missing() is not None, reason=f"needs TensorRT and an NVIDIA GPU: {tensorrt_missing()}")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_tensorrt_engines_replay(bundle, tmp_path, cuda_graphs):
    from tokencache.runtime.tensorrt_runner import TensorRTBundleRunner
    copy = _copy(bundle, tmp_path)
    build_engines(copy, precision="fp32")
    trt, ort = TensorRTBundleRunner(copy, cuda_graphs=cuda_graphs), OnnxBundleRunner(copy)
    inputs = {"hidden_states": torch.randn(2, 4, 16, 16), "timestep": torch.tensor([999.0, 999.0]),
              "class_labels": torch.tensor([1, 2])}
    for t in (999.0, 800.0, 600.0, 400.0, 200.0, 100.0):
        inputs["timestep"] = torch.tensor([t, t])
        a, b = trt(**inputs)[0].cpu().numpy(), ort(**inputs)[0]
        assert np.abs(a - b).max() / np.abs(b).max() < 1e-3


def test_export_takes_every_cache_option():
    from tokencache.cli_args import cache_flags

    args = _parse_export("--policy", "dato", "--prune-ratio", "0.2", "--interval", "2", "--out", "x")
    assert cache_flags(args) == {"prune_ratio": 0.2, "interval": 2}
    with pytest.raises(SystemExit):
        _parse_export("--prune-ratio", "1.5")
