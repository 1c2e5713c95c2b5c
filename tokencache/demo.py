"""`tokencache demo`: a shipped trained model (the embedded DiT by default), uncached vs tokencache, same seeds.

Prints time, measured and FLOP speed-up, PSNR/SSIM against the uncached images and class accuracy
of both; writes a PNG grid (uncached row above cached row) and a JSON of the numbers.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

import tokencache

from .models.classifier import load_classifier
from .models.data import CLASSES, to_image_space
from .models import EMBEDDED, load_embedded
from .models.sampling import DEFAULT_GUIDANCE, make_noise, sample
from .profiling import metrics
from .profiling.timing import interleaved, median_ratio, median_total


def run_demo(policy: str = "toca", steps: int = 50, samples: int = 20, rounds: int = 3, inner: str = "inductor",
             out: Path = Path("demo_out"), seed: int = 0, guidance: float = DEFAULT_GUIDANCE, model: str = "embedded",
             options: dict | None = None) -> dict:
    """Uncached vs cached generations of a shipped model; `options`: the cached run's other
    CacheConfig options (interval, ratio, ...; their defaults otherwise)."""
    model_name, model = model, load_embedded(model)
    noise = make_noise(samples, seed)
    labels = torch.arange(samples) % 10
    common = dict(num_steps=steps, inner=inner)
    runs = {"uncached": tokencache.compile(model, policy="none", **common),
            "tokencache": tokencache.compile(model, policy=policy, **common, **(options or {}))}
    images = {}

    def generation(name):
        def run():
            start = time.perf_counter()
            images[name] = sample(runs[name], noise, labels, steps=steps, guidance=guidance)
            return [time.perf_counter() - start]
        return run

    with tqdm(total=2 * (rounds + 1), desc="generating (first round compiles)") as bar:
        first = {}
        for name in runs:                       # the first generation also compiles every variant
            first[name] = generation(name)()[0]
            bar.update(1)
        timed = interleaved({name: generation(name) for name in runs}, rounds, warmup=0, progress=bar)

    reports = {name: tokencache.report(m) for name, m in runs.items()}
    classifier = load_classifier()
    pictures = {name: to_image_space(x) for name, x in images.items()}
    result = {
        "model": EMBEDDED[model_name].description,
        "settings": dict(model=model_name, steps=steps, samples=samples, rounds=rounds, inner=inner,
                         guidance=guidance, seed=seed),
        # the cached run's options that matter: those its policy reads, where they differ from its defaults
        "options": _options_read(reports["tokencache"]["config"]),
        "uncached_s": median_total(timed["uncached"]),
        "tokencache_s": median_total(timed["tokencache"]),
        "first_generation_s": first,
        "measured_speedup": 1.0 / median_ratio(timed["tokencache"], timed["uncached"]),
        "flop_speedup": reports["uncached"]["flops_per_generation"] / reports["tokencache"]["flops_per_generation"],
        "psnr_db": metrics.psnr(pictures["uncached"], pictures["tokencache"]),
        "ssim": metrics.ssim(pictures["uncached"], pictures["tokencache"]),
        "rel_l2": metrics.rel_l2(images["uncached"], images["tokencache"]),
        "class_accuracy": {name: metrics.class_accuracy(classifier, p, labels) for name, p in pictures.items()},
        "fallback_reason": reports["tokencache"]["fallback_reason"],
        "schedule": "".join(v[0].upper() for v in reports["tokencache"]["schedule"]),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_grid(pictures["uncached"], pictures["tokencache"], out / "demo.png")
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    result["files"] = [str(out / "demo.png"), str(out / "demo.json")]
    return result


def save_grid(top: torch.Tensor, bottom: torch.Tensor, path: Path, scale: int = 3,
              labels: tuple[str, str] = ("uncached", "tokencache")) -> None:
    """Two labelled rows of 28x28 images: uncached above, cached below."""
    from PIL import Image, ImageDraw

    n = min(len(top), 10)
    canvas = torch.ones(2 * 28 + 2, n * 30)
    for row, batch in enumerate((top, bottom)):
        for i in range(n):
            canvas[row * 30: row * 30 + 28, i * 30: i * 30 + 28] = batch[i, 0]
    pixels = (canvas.clamp(0, 1) * 255).byte().numpy()
    grid = Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST)
    margin = 80
    out = Image.new("L", (grid.width + margin, grid.height), 255)
    out.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(out)
    for row, text in enumerate(labels):
        draw.text((4, row * 30 * scale + 14 * scale - 6), text, fill=0)
    out.save(path)


def _options_read(config: dict) -> dict:
    """Non-default options of a reported config that its policy reads (num_steps, inner: shown apart)."""
    from .config import CacheConfig

    with warnings.catch_warnings():         # the ignored options were warned about at compile time
        warnings.simplefilter("ignore")
        config = CacheConfig(**config)
    ignored = set(config.ignored_options()) | {"num_steps", "inner"}
    return {k: v for k, v in config.changed_options().items() if k not in ignored}


def format_table(result: dict) -> str:
    s = result["settings"]
    acc = result["class_accuracy"]
    lines = [
        f"{result['model']}\n{s['samples']} samples, {s['steps']} steps, CFG {s['guidance']}, inner={s['inner']}; "
        "tokencache " + " ".join(f"{k}={v}" for k, v in result["options"].items()),
        f"schedule: {result['schedule']}",
        "",
        f"{'':14}{'time (s)':>10}{'speed-up':>10}{'FLOP x':>8}{'PSNR dB':>9}{'SSIM':>8}{'class acc':>11}",
        f"{'uncached':14}{result['uncached_s']:>10.2f}{1.0:>10.2f}{1.0:>8.2f}{'-':>9}{'-':>8}{acc['uncached']:>11.3f}",
        f"{'tokencache':14}{result['tokencache_s']:>10.2f}{result['measured_speedup']:>10.2f}"
        f"{result['flop_speedup']:>8.2f}{result['psnr_db']:>9.2f}{result['ssim']:>8.4f}{acc['tokencache']:>11.3f}",
    ]
    if result["fallback_reason"]:
        lines.append(f"note: caching fell back: {result['fallback_reason']}")
    lines.append("classes: " + ", ".join(f"{i}={c}" for i, c in enumerate(CLASSES)))
    return "\n".join(lines)
