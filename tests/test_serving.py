"""Serving behind Ray Serve: request validation and the batch runner without Ray (fast), and a
real local Ray cluster with 2 replicas answering concurrent HTTP requests (slow)."""
import base64
import io
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
import torch

import tokencache
from tokencache.models import load_embedded
from tokencache.models.data import to_image_space
from tokencache.models.sampling import make_noise, sample
from tokencache.serving import Generator, Job, parse_request

STEPS = 4
OPTIONS = {"policy": "fora", "interval": 2}


_LOCAL: dict = {}


def _local(labels, seed, steps=STEPS, options=OPTIONS) -> torch.Tensor:
    """What a user gets running the same request in their own process (one generation)."""
    key = tuple(sorted(options.items()))
    if key not in _LOCAL:
        _LOCAL[key] = tokencache.compile(load_embedded("embedded"), inner="eager", **options)
    model = _LOCAL[key]
    with tokencache.generation(model, steps=steps):
        x = sample(model, make_noise(len(labels), seed), torch.tensor(labels), steps=steps)
    return to_image_space(x)


def _decode(png: str) -> torch.Tensor:
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(png)))
    return torch.tensor(list(image.getdata()), dtype=torch.float32).reshape(1, image.height, image.width) / 255


@pytest.mark.parametrize("body, message", [
    ([1, 2], "must be a JSON object"),
    ({"labels": [1], "colour": "red"}, "unknown request key 'colour'"),
    ({"labels": []}, "'labels' must be a non-empty list"),
    ({"labels": [3, 12]}, "class label 12 is out of range; allowed: 0..9"),
    ({"labels": [1], "steps": 0}, r"'steps' must be an integer in 1..250, got 0"),
    ({"labels": [1], "steps": 9999}, r"'steps' must be an integer in 1..250"),
    ({"labels": [1], "seed": -1}, r"'seed' must be an integer in 0..2\*\*63-1"),
    ({"labels": [1], "seed": 2 ** 70}, r"'seed' must be an integer in 0..2\*\*63-1"),
    ({"labels": [1], "format": "jpeg"}, "'format' must be one of png, array"),
    ({"labels": [1], "options": {"policy": "magic"}}, "'policy' must be one of"),
    ({"labels": [1], "options": {"ratios": 0.5}}, "unknown tokencache option 'ratios'"),
    ({"labels": [1], "options": {"inner": "eager"}}, "'inner' is set by the server"),
])
def test_bad_requests_name_what_is_wrong(body, message):
    with pytest.raises(ValueError, match=message):
        parse_request(body)


def test_a_good_request_is_parsed_and_equivalent_options_group_together():
    job = parse_request({"labels": [1, 2], "seed": 3, "steps": 5, "options": {"policy": "toca", "ratio": 0.5}})
    assert job == Job((1, 2), 3, 5, (("policy", "toca"), ("ratio", 0.5)), "png")
    same = [parse_request({"labels": [1], "options": o}).options
            for o in ({}, {"policy": "toca"}, {"interval": 3}, {"policy": "toca", "ratio": 0.25})]
    assert len(set(same)) == 1
    assert parse_request({"labels": [1], "options": {"policy": "taylorseer", "warmup": 3}}).options == \
        (("policy", "taylorseer"),)


def test_batch_runner_groups_and_matches_local_runs():
    """Three requests in one batch: two share steps and options (one generation), one does not.
    Each request's images equal the same request run alone, locally."""
    generator = Generator("embedded", inner="eager")
    jobs = [Job((1, 2), 0, STEPS, tuple(sorted(OPTIONS.items())), "array"),
            Job((5,), 7, STEPS, tuple(sorted(OPTIONS.items())), "png"),
            Job((3,), 1, STEPS + 1, (("policy", "toca"),), "array")]
    out = generator.run(jobs)
    assert [r["report"]["batch_requests"] for r in out] == [2, 2, 1]
    assert out[0]["report"]["batch_images"] == 3
    torch.testing.assert_close(torch.tensor(out[0]["images"]).unsqueeze(1), _local([1, 2], 0), atol=1e-5, rtol=0)
    torch.testing.assert_close(_decode(out[1]["images"][0]), _local([5], 7)[0], atol=1 / 255 + 1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(out[2]["images"]).unsqueeze(1),
                               _local([3], 1, STEPS + 1, {"policy": "toca"}), atol=1e-5, rtol=0)
    assert out[0]["report"]["flops_per_generation"] < out[0]["report"]["flops_uncached_generation"]


def test_many_option_sets_keep_serving_and_ignored_options_are_reported():
    """Dynamo stops compiling a forward after 8 compiled variants, however many are still held: a
    replica seeing more option sets than it keeps resets Dynamo instead of failing (it did, from
    the 9th set on)."""
    generator = Generator("embedded", inner="eager", keep=3)
    jobs = [Job((1,), 0, 1, (("interval", i), ("policy", "fora"), ("ratio", 0.5)), "array") for i in range(1, 10)]
    out = generator.run(jobs)
    assert all("error" not in r for r in out), [r.get("error") for r in out if "error" in r]
    assert all(r["report"]["ignored_options"] == ["ratio"] for r in out)
    assert len(generator._compiled) <= 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow   # a local Ray cluster and two replicas: about a minute on 2 cores
def test_ray_serve_two_replicas_concurrent_requests():
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from tokencache.serving import build_app

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app("embedded", replicas=2, num_cpus=0.5, max_batch_size=8, batch_wait_s=0.5,
                            inner="eager"), name="tokencache", route_prefix="/")
        url = f"http://127.0.0.1:{port}/"
        bodies = [{"labels": [i % 10, (i + 3) % 10], "seed": i, "steps": STEPS, "options": OPTIONS, "format": "array"}
                  for i in range(6)]
        bodies.insert(3, {"labels": [42], "steps": STEPS})                 # a bad request among them
        results: list = [None] * len(bodies)

        def send(i):
            results[i] = _post(url, bodies[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        status, bad = results[3]
        assert status == 400 and "class label 42 is out of range" in bad["error"]
        good = [(b, r) for b, r in zip(bodies, results) if b is not bodies[3]]
        assert all(status == 200 for _, (status, _) in good), [r for _, r in good]
        for body, (_, answer) in good:
            local = _local(body["labels"], body["seed"])
            torch.testing.assert_close(torch.tensor(answer["images"]).unsqueeze(1), local, atol=1e-5, rtol=0)
        assert max(answer["report"]["batch_requests"] for _, (_, answer) in good) > 1     # batching happened
        status, answer = _post(url, bodies[0])                             # still serving after the bad one
        assert status == 200
    finally:
        serve.shutdown()
        ray.shutdown()
