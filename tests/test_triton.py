"""`tokencache export --triton`: the repository layout, its config.pbtxt parsed as Triton's
ModelConfig (tritonclient's protobuf), and the Python-backend model driven directly with a
stand-in for Triton's `triton_python_backend_utils`: interleaved client sequences each replay
their own generation, equal to the bundle runner run alone."""
import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch

import tokencache
from tokencache.exporters.triton import model_config, write_triton_repository
from tokencache.runtime.bundle_runner import OnnxBundleRunner
from tiny_models import ALL_CASES, generate, noise

STEPS = 6
OPTIONS = dict(policy="fora", interval=3, num_steps=STEPS, inner="eager")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch._dynamo.reset()
    case = ALL_CASES["reference"]()
    compiled = tokencache.compile(case.build(), **OPTIONS)
    generate(case, compiled, noise(case), steps=1)
    return case, tokencache.export(compiled, tmp_path_factory.mktemp("triton") / "bundle", progress=False)


def test_layout_and_config(bundle, tmp_path):
    _, path = bundle
    model_dir = write_triton_repository(path, tmp_path / "repo")
    files = [p.relative_to(model_dir) for p in model_dir.rglob("*") if p.is_file()]
    assert sorted(f.as_posix() for f in files if "bundle" not in f.parts) == ["1/model.py", "config.pbtxt"]
    assert (model_dir / "1" / "bundle" / "manifest.json").is_file()
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    manifest = json.loads((path / "manifest.json").read_text())
    assert config.name == "tokencache" and config.backend == "python" and config.max_batch_size == 0
    assert [i.name for i in config.input] == [s["name"] for s in manifest["signature"]["inputs"]]
    assert [list(i.dims) for i in config.input] == [s["shape"] for s in manifest["signature"]["inputs"]]
    assert [o.name for o in config.output] == [s["name"] for s in manifest["signature"]["outputs"]]
    assert [c.name for c in config.sequence_batching.control_input] == ["START", "END"]
    assert config.parameters["runner"].string_value == "onnxruntime"
    assert config.parameters["sequence_idle_seconds"].string_value == "600"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_config_refuses_what_triton_cannot_take():
    manifest = {"signature": {"inputs": [{"name": "x", "shape": [2], "dtype": "complex64"}], "outputs": []}}
    with pytest.raises(ValueError, match="complex64"):
        model_config(manifest, "m", "onnxruntime", gpu=False)
    with pytest.raises(ValueError, match="runner must be one of onnxruntime, tensorrt"):
        model_config({"signature": {"inputs": [], "outputs": []}}, "m", "openvino", gpu=False)


class _Tensor:
    def __init__(self, name, value):
        self._name, self._value = name, np.asarray(value)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._value


class _Request:
    def __init__(self, sequence, tensors):
        self._sequence, self._tensors = sequence, {t.name(): t for t in tensors}

    def correlation_id(self):
        return self._sequence


def _stand_in() -> types.ModuleType:
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = _Tensor
    utils.get_input_tensor_by_name = lambda request, name: request._tensors.get(name)
    utils.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(
        output_tensors=lambda: output_tensors, error=lambda: error)
    utils.TritonError = lambda message: types.SimpleNamespace(message=lambda: message)
    return utils


def test_model_replays_interleaved_sequences(bundle, tmp_path, monkeypatch):
    case, path = bundle
    model_dir = write_triton_repository(path, tmp_path / "repo")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stand_in())
    spec = importlib.util.spec_from_file_location("tokencache_triton_model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = {"parameters": {"runner": {"string_value": "onnxruntime"}}}
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir), "model_version": "1"})

    def alone(x0, labels):
        """The bundle runner over one whole generation, as a client running it locally would."""
        runner, x = OnnxBundleRunner(path), x0.clone()
        sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
        with tokencache.generation(runner, steps=STEPS):
            for i in range(STEPS):
                t = (sigmas[i] * 1000).expand(x.shape[0]).contiguous()
                out = runner(hidden_states=x.numpy(), timestep=t.numpy(), class_labels=labels.numpy())[0]
                x = x + (sigmas[i + 1] - sigmas[i]) * torch.as_tensor(out)
        return x

    # two clients, their steps interleaved; client 2 also sends a request with an input missing
    x = {1: noise(case, seed=1), 2: noise(case, seed=2)}
    labels = {1: torch.tensor([1, 2]), 2: torch.tensor([3, 4])}
    expected = {c: alone(x[c], labels[c]) for c in (1, 2)}
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
    names = [s for s in model.inputs]
    for i in range(STEPS):
        t = (sigmas[i] * 1000).expand(2).contiguous()
        requests = []
        for c in (1, 2):
            values = {"hidden_states": x[c].numpy(), "timestep": t.numpy(), "class_labels": labels[c].numpy()}
            tensors = [_Tensor(n, values[n]) for n in names]
            tensors += [_Tensor("START", [float(i == 0)]), _Tensor("END", [float(i == STEPS - 1)])]
            requests.append(_Request(c, tensors))
        requests.append(_Request(2, [_Tensor("timestep", t.numpy())]))       # a bad request in the batch
        responses = model.execute(requests)
        assert "input 'hidden_states' is missing" in responses[2].error().message()
        for c, response in zip((1, 2), responses):
            assert response.error() is None
            out = torch.as_tensor(response.output_tensors()[0].as_numpy())
            x[c] = x[c] + (sigmas[i + 1] - sigmas[i]) * out
    for c in (1, 2):
        torch.testing.assert_close(x[c], expected[c], rtol=0, atol=1e-6)
    assert model.generations == {}          # END freed both sequences
    # a sequence that never sends END is freed once idle past sequence_idle_seconds
    values = {"hidden_states": x[1].numpy(), "timestep": torch.full((2,), 1000.0).numpy(),
              "class_labels": labels[1].numpy()}
    model.execute([_Request(9, [_Tensor(n, values[n]) for n in names] + [_Tensor("START", [1.0])])])
    assert 9 in model.generations
    model.idle_seconds = 0.0
    model.execute([])
    assert model.generations == {}
