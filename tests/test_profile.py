"""`tokencache profile`: JSON fields, plot, and clear messages for bad models."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokencache.cli import main

TESTS = str(Path(__file__).parent)
FIELDS = {"compile_s", "generation_s", "variants", "timeline", "flops_per_generation", "flop_speedup",
          "measured_speedup", "efficiency", "fidelity", "cache_bytes", "peak_memory", "fallback_reason"}


def _cli(*args):
    env_path = f"import sys; sys.path.insert(0, {TESTS!r}); from tokencache.cli import main; sys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", env_path], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_profile_embedded_quick(tmp_path):
    out, plot = tmp_path / "p.json", tmp_path / "p.png"
    code = main(["profile", "--quick", "--steps", "6", "--policy", "toca,taylorseer", "--json", str(out), "--plot", str(plot)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model"] == "embedded" and set(result["settings"]) == {"uncached", "toca N=3 r=0.25", "taylorseer N=3"}
    for name, setting in result["settings"].items():
        assert FIELDS <= set(setting), FIELDS - set(setting)
        assert len(setting["timeline"]) == 6
        assert {"median_s", "p90_s", "flops"} <= set(next(iter(setting["variants"].values())))
        assert {"psnr_db", "ssim", "rel_l2"} <= set(setting["fidelity"])
    toca = result["settings"]["toca N=3 r=0.25"]
    assert toca["flop_speedup"] > 1.3 and toca["cache_bytes"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_user_factory(tmp_path):
    out = tmp_path / "f.json"
    run = _cli("profile", "--model", "profile_factories:good", "--quick", "--steps", "4", "--rounds", "1",
               "--policy", "fora", "--json", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(out.read_text())["settings"]["fora N=3"]["flop_speedup"] > 1.0


@pytest.mark.parametrize("factory, message", [
    ("raises", "raised RuntimeError: weights not found"),
    ("not_a_module", "must return (torch.nn.Module, dict"),
    ("cannot_cache", "could not cache this model: no transformer blocks"),
    ("missing", "cannot load factory"),
])
def test_profile_bad_factories_give_a_message_not_a_traceback(factory, message):
    run = _cli("profile", "--model", f"profile_factories:{factory}", "--quick", "--steps", "2", "--rounds", "1")
    assert run.returncode in (2, 3)
    assert message in run.stderr and "Traceback" not in run.stderr


def test_profile_unknown_policy():
    run = _cli("profile", "--policy", "toca,magic", "--quick")
    assert run.returncode == 2 and "unknown policy 'magic'" in run.stderr


def test_profile_tensorrt_inner_without_tensorrt_gives_a_message():
    from tokencache.exporters.tensorrt import tensorrt_missing
    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present here")
    run = _cli("profile", "--model", "profile_factories:good", "--quick", "--steps", "2", "--rounds", "1",
               "--policy", "fora", "--inner", "tensorrt")
    assert run.returncode == 2 and "inner='tensorrt' cannot run here" in run.stderr and "Traceback" not in run.stderr
