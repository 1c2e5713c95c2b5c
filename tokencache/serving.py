"""tokencache behind Ray Serve: `tokencache serve` (the `serve` extra: pip install -e ".[serve]").

A deployment of `replicas` replicas, each holding one shipped model (the embedded DiT or a
sibling) compiled with tokencache. A request is a JSON object:

    {"labels": [3, 7], "seed": 0, "steps": 20, "options": {"policy": "fora", "interval": 3},
     "format": "png" | "array"}

and the response {"images": [...], "report": {...}}: base64 PNGs (or nested lists in [0, 1]),
and what the generation cost (seconds, FLOPs cached and uncached, how many requests and images
shared its batch). Requests that arrive within `batch_wait_s` of each other are batched by Serve;
a batch runs one generation per (steps, options) group, inside `tokencache.generation`, so no two
groups, and no two batches, share caches. A request's images equal a local run of the same
labels, seed, steps and options. A bad request gets a 400 with the reason; the replica keeps
serving. Health is Serve's own (`check_health`).

The request handling (`parse_request`, `Generator`) is plain Python, usable and testable without Ray.
"""
from __future__ import annotations

import base64
import io
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .config import CacheConfig

MAX_STEPS = 250
MAX_IMAGES = 64
FORMATS = ("png", "array")
_KEYS = ("labels", "seed", "steps", "options", "format")
_SERVER_OPTIONS = ("num_steps", "inner", "cpu_matmul", "timestep_input")   # the server's to decide


@dataclass(frozen=True)
class Job:
    """One validated request."""
    labels: tuple[int, ...]
    seed: int
    steps: int
    options: tuple[tuple[str, object], ...]     # sorted CacheConfig options
    format: str = "png"


def parse_request(body, max_steps: int = MAX_STEPS, max_images: int = MAX_IMAGES, classes: int = 10) -> Job:
    """A Job from a request body; ValueError naming the bad field and what is allowed."""
    if not isinstance(body, dict):
        raise ValueError(f"the request must be a JSON object with keys {', '.join(_KEYS)}")
    unknown = sorted(set(body) - set(_KEYS))
    if unknown:
        raise ValueError(f"unknown request key {unknown[0]!r}; allowed: {', '.join(_KEYS)}")
    labels = body.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(v, int) and not isinstance(v, bool)
                                                             for v in labels):
        raise ValueError(f"'labels' must be a non-empty list of class numbers 0..{classes - 1}, got {labels!r}")
    if len(labels) > max_images:
        raise ValueError(f"'labels' asks for {len(labels)} images; at most {max_images} per request")
    bad = [v for v in labels if not 0 <= v < classes]
    if bad:
        raise ValueError(f"class label {bad[0]} is out of range; allowed: 0..{classes - 1}")
    seed, steps = body.get("seed", 0), body.get("steps", 20)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"'seed' must be an integer in 0..2**63-1, got {seed!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= max_steps:
        raise ValueError(f"'steps' must be an integer in 1..{max_steps}, got {steps!r}")
    fmt = body.get("format", "png")
    if fmt not in FORMATS:
        raise ValueError(f"'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise ValueError(f"'options' must be an object of tokencache options, got {options!r}")
    fixed = sorted(set(options) & set(_SERVER_OPTIONS))
    if fixed:
        raise ValueError(f"option {fixed[0]!r} is set by the server, not per request")
    return Job(tuple(labels), seed, steps, canonical_options(options), fmt)


def canonical_options(options: dict) -> tuple:
    """The options that differ from their defaults under the chosen policy, sorted: equivalent
    requests ({} and {"policy": "toca"}) share a compiled model and a batch group. Unknown keys
    and bad values: ValueError naming them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # options the policy ignores: reported per response
        config = CacheConfig.from_options(options)
    return tuple(sorted(config.changed_options().items()))


def _png(image: torch.Tensor) -> str:
    """(1, H, W) in [0, 1] -> base64 PNG (8-bit grey)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy(), mode="L").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Generator:
    """Runs batches of Jobs on one shipped model; a compiled model per distinct option set (the
    last `keep` of them)."""

    def __init__(self, model: str = "embedded", inner: str = "inductor", guidance: float | None = None,
                 keep: int = 4):
        from .models import EMBEDDED, load_embedded
        from .models.sampling import DEFAULT_GUIDANCE

        if model not in EMBEDDED:
            raise ValueError(f"unknown model {model!r}; allowed: {', '.join(EMBEDDED)}")
        self.model_name, self.model = model, load_embedded(model)
        self.inner, self.guidance = inner, DEFAULT_GUIDANCE if guidance is None else guidance
        self.keep = keep
        self._compiled: OrderedDict = OrderedDict()

    def compiled(self, options: tuple):
        """The model compiled with `options`. Dynamo keeps every compiled variant of the model's
        forward and stops compiling it at its recompile limit (8), however many of them this
        replica still holds; so when a new option set would exceed `keep`, every compiled model
        is dropped and Dynamo reset (the replica recompiles what it needs next)."""
        import tokencache

        from .compat import reset_dynamo

        if options not in self._compiled:
            if len(self._compiled) >= self.keep:
                self._compiled.clear()
                reset_dynamo()
            self._compiled[options] = tokencache.compile(self.model, inner=self.inner, **dict(options))
        self._compiled.move_to_end(options)
        return self._compiled[options]

    def run(self, jobs: list[Job]) -> list[dict]:
        """One response per job, in order. Jobs with the same steps and options share a generation."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.steps, job.options), []).append(i)
        out: list[dict] = [{} for _ in jobs]
        for (steps, options), members in groups.items():
            try:
                for i, result in zip(members, self._generate([jobs[i] for i in members], steps, options)):
                    out[i] = result
            except Exception as e:      # a failure costs this group, never the replica
                for i in members:
                    out[i] = {"error": f"generation failed: {type(e).__name__}: {e}"}
        return out

    def _generate(self, jobs: list[Job], steps: int, options: tuple) -> list[dict]:
        import tokencache

        from .models.data import to_image_space
        from .models.sampling import make_noise, sample

        noise = torch.cat([make_noise(len(j.labels), j.seed) for j in jobs])
        labels = torch.tensor([v for j in jobs for v in j.labels])
        compiled = self.compiled(options)
        start = time.perf_counter()
        with tokencache.generation(compiled, steps=steps):
            x = sample(compiled, noise, labels, steps=steps, guidance=self.guidance)
        seconds = time.perf_counter() - start
        report = tokencache.report(compiled)
        images = to_image_space(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ignored = CacheConfig.from_options(dict(options)).ignored_options()
        shared = {"seconds": seconds, "batch_requests": len(jobs), "batch_images": len(labels),
                  "policy": report["policy"], "fallback_reason": report["fallback_reason"],
                  "ignored_options": ignored,
                  "flops_per_generation": report["flops_per_generation"],
                  "flops_uncached_generation": report["flops_uncached_generation"]}
        results, at = [], 0
        for job in jobs:
            mine = images[at:at + len(job.labels)]
            at += len(job.labels)
            encoded = [_png(im) for im in mine] if job.format == "png" else mine[:, 0].tolist()
            results.append({"images": encoded, "report": dict(shared)})
        return results


def build_app(model: str = "embedded", replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0,
              max_batch_size: int = 8, batch_wait_s: float = 0.05, inner: str = "inductor",
              max_steps: int = MAX_STEPS):
    """The Serve application: `serve.run(build_app(...))`."""
    from ray import serve
    from starlette.responses import JSONResponse

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus})
    class TokenCacheServer:
        def __init__(self):
            self.generator = Generator(model, inner=inner)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)
        async def _batch(self, jobs: list[Job]) -> list[dict]:
            return self.generator.run(jobs)

        async def __call__(self, request):
            try:
                job = parse_request(await request.json(), max_steps=max_steps)
            except ValueError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            result = await self._batch(job)
            return JSONResponse(result, status_code=500 if "error" in result else 200)

        def check_health(self):
            if self.generator.model is None:
                raise RuntimeError("the model is not loaded")

    return TokenCacheServer.bind()
