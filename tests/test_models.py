"""The embedded model: data, weights, sampling, classifier, training smoke test, error cases."""
from pathlib import Path

import pytest
import torch

from tokencache.models import data
from tokencache.models.fashion_dit import WeightsError, build_model, load_default_model
from tokencache.models.sampling import make_noise, sample

needs_data = pytest.mark.skipif(not data.DATA_DIR.exists(), reason="needs `apt-get install dataset-fashion-mnist`")


def test_missing_data_names_the_package(tmp_path):
    with pytest.raises(data.DataMissing, match="apt-get install dataset-fashion-mnist"):
        data.load("test", data_dir=tmp_path)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.load_raw("validation")


@needs_data
def test_data_shapes_and_range():
    x, y = data.load("test")
    assert x.shape == (10000, 1, 32, 32) and y.shape == (10000,)
    assert x.min() == -1 and x.max() == 1 and set(y.unique().tolist()) == set(range(10))
    assert data.to_image_space(x[:2]).shape == (2, 1, 28, 28)


def test_weights_load_and_sample_deterministically():
    model = load_default_model()
    labels = torch.tensor([0, 5, 9])
    a = sample(model, make_noise(3, seed=7), labels, steps=4)
    b = sample(model, make_noise(3, seed=7), labels, steps=4)
    assert torch.equal(a, b) and a.shape == (3, 1, 32, 32)
    assert not torch.equal(a, sample(model, make_noise(3, seed=8), labels, steps=4))


def test_two_call_cfg_matches_batched_cfg():
    model = load_default_model()
    labels = torch.tensor([1, 2])
    a = sample(model, make_noise(2), labels, steps=3, cfg_mode="batch")
    b = sample(model, make_noise(2), labels, steps=3, cfg_mode="two_calls")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_unknown_label_is_a_clear_error():
    with pytest.raises(ValueError, match="class label 11"):
        sample(build_model().eval(), make_noise(1), torch.tensor([11]), steps=1)


def test_corrupted_weights_are_a_clear_error(monkeypatch, tmp_path):
    from tokencache.models import fashion_dit

    class Broken:
        def __truediv__(self, other):
            return self

        def read_bytes(self):
            return b"not a checkpoint"

        def __str__(self):
            return "weights/fashion_dit.pt"
    monkeypatch.setattr(fashion_dit.resources, "files", lambda _: Broken())
    with pytest.raises(WeightsError, match="corrupted"):
        load_default_model()


@needs_data
def test_classifier_accuracy_on_real_test_images():
    from tokencache.models.classifier import accuracy, load_classifier

    x, y = data.load("test")
    assert accuracy(load_classifier(), data.to_image_space(x), y) >= 0.85


@pytest.mark.slow      # 36 s on the shared 2-core box
def test_training_smoke(tmp_path):
    from tokencache.models.train import train

    images = torch.rand(64, 1, 32, 32) * 2 - 1
    labels = torch.arange(64) % 10
    log = train(tmp_path, minutes=5, max_steps=3, batch=8, data=(images, labels), progress=False)
    assert log["steps"] == 3 and (tmp_path / "fashion_dit.pt").exists()
    resumed = train(tmp_path, minutes=5, max_steps=5, batch=8, data=(images, labels), progress=False)
    assert resumed["steps"] == 5                                   # resumed from the checkpoint
    state = torch.load(tmp_path / "fashion_dit.pt", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in state.values())



@pytest.mark.slow      # 22 s
def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    """The checkpoint restores every RNG, the label dropout's global one included."""
    from tokencache.models.train import train

    images = torch.rand(32, 1, 32, 32) * 2 - 1
    labels = torch.arange(32) % 10
    kw = dict(minutes=5, batch=16, data=(images, labels), progress=False)
    train(tmp_path / "once", max_steps=4, **kw)
    train(tmp_path / "twice", max_steps=2, **kw)
    train(tmp_path / "twice", max_steps=4, **kw)
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["model"] for d in ("once", "twice"))
    assert all(torch.equal(a[k], b[k]) for k in a)

pixart_weights = pytest.mark.skipif(
    not (Path(__file__).parents[1] / "tokencache/models/weights/fashion_pixart.pt").exists(),
    reason="the PixArt sibling's weights are not shipped in this checkout")


@pixart_weights
def test_pixart_sibling_samples_and_caches_cross_attention():
    import tokencache
    from tokencache.models.fashion_pixart import load_pixart_model

    model = load_pixart_model()
    labels = torch.tensor([0, 7])
    a = sample(model, make_noise(2, seed=3), labels, steps=4)
    assert torch.equal(a, sample(model, make_noise(2, seed=3), labels, steps=4))
    compiled = tokencache.compile(model, policy="toca", ratio=1.0, attention="tokens", num_steps=4, inner="eager")
    b = sample(compiled, make_noise(2, seed=3), labels, steps=4)
    assert ((a - b).norm() / a.norm()).item() <= 1e-4
    kinds = {r["kind"] for r in tokencache.report(compiled)["regions"]}
    assert kinds == {"self_attention", "cross_attention", "feed_forward"}
