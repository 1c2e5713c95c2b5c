"""`tokencache profile`: uncached vs tokencache settings on one model, measured side by side.

Every setting and the uncached baseline (policy "none", same inner backend) are compiled, run once
(compile time = first generation minus the median warm one), then run in interleaved rounds. The
result holds per-variant latency (median, p90), a per-step timeline, FLOPs per variant and per
generation, ideal (FLOP) vs measured speed-up and their ratio, fidelity against the baseline,
cache memory and peak memory.
"""
from __future__ import annotations

import resource
import statistics
import time

import torch

import tokencache

from ..compat import recompile_limits
from . import metrics
from .targets import Target
from .timing import interleaved, median_ratio, per_variant, step_times


class CannotCache(RuntimeError):
    """tokencache fell back to the uncached model; the message carries its reason."""


def _device(target: Target) -> torch.device:
    p = next(target.model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _generation(target: Target, fn, steps: int, device, keep: dict, name: str):
    def run():
        state = target.init()
        with torch.no_grad():
            times = step_times(lambda i: target.step(fn, state, i, steps), steps, device)
        keep[name] = state
        return times
    return run


def _peak_memory(device) -> dict:
    if device.type == "cuda":
        return {"kind": "cuda max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    return {"kind": "process peak RSS", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def run_profile(target: Target, settings: dict[str, dict], steps: int = 20, rounds: int = 5, inner: str = "inductor",
                trace: str | None = None, progress=None, keep_images: bool = False) -> dict:
    """Profile `settings` (name -> CacheConfig options) against the uncached model on `target`.
    With keep_images, result["images"] holds each setting's final images (not JSON-serialisable)."""
    # every setting is another torch.compile of the same forward(): keep Dynamo from giving up
    # after its default 8 compiles of one function and silently running the rest eagerly
    limit = 4 * (len(settings) + 1) + 8
    with recompile_limits(limit, accumulated=max(256, limit)):
        return _run_profile(target, settings, steps, rounds, inner, trace, progress, keep_images)


def _run_profile(target, settings, steps, rounds, inner, trace, progress, keep_images) -> dict:
    device = _device(target)
    compiled = {"uncached": tokencache.compile(target.model, policy="none", num_steps=steps, inner=inner)}
    for name, options in settings.items():
        compiled[name] = tokencache.compile(target.model, num_steps=steps, inner=inner, **options)
    finals: dict[str, dict] = {}
    gens = {name: _generation(target, fn, steps, device, finals, name) for name, fn in compiled.items()}
    first, peaks = {}, {}
    for name, gen in gens.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        gen()
        first[name] = time.perf_counter() - start
        peaks[name] = _peak_memory(device)
        if progress is not None:
            progress.update(1)
    reports = {name: tokencache.report(fn) for name, fn in compiled.items()}
    for name, rep in reports.items():
        if rep["fallback_reason"] and name != "uncached":
            raise CannotCache(f"setting {name!r}: tokencache could not cache this model: {rep['fallback_reason']}")
    timed = interleaved(gens, rounds, warmup=0, progress=progress)

    base_images = target.images(finals["uncached"])
    base_flops = reports["uncached"]["flops_per_generation"]
    results = {}
    for name, rep in reports.items():
        totals = [sum(r) for r in timed[name]]
        images = target.images(finals[name])
        measured = 1.0 / median_ratio(timed[name], timed["uncached"])
        ideal = base_flops / rep["flops_per_generation"]
        variants = per_variant(timed[name], rep["schedule"])
        for vname, v in variants.items():
            v["flops"] = rep["variants"][vname]["flops"]
        results[name] = {
            "options": settings.get(name, {"policy": "none"}),
            "compile_s": max(0.0, first[name] - statistics.median(totals)),
            "generation_s": {"median": statistics.median(totals), "min": min(totals), "max": max(totals)},
            "variants": variants,
            "timeline": [{"step": i, "variant": rep["schedule"][i],
                          "median_s": statistics.median(r[i] for r in timed[name])} for i in range(steps)],
            "flops_per_generation": rep["flops_per_generation"],
            "flop_speedup": ideal,
            "measured_speedup": measured,
            "efficiency": measured / ideal,
            "fidelity": {"psnr_db": metrics.psnr(base_images, images), "ssim": metrics.ssim(base_images, images),
                         "rel_l2": metrics.rel_l2(base_images, images)},
            "cache_bytes": rep["cache_bytes"],
            "peak_memory": peaks[name],
            "fallback_reason": rep["fallback_reason"],
            "regions": len(rep["regions"]),
        }
    out = {"model": target.name, "steps": steps, "rounds": rounds, "inner": inner, "device": str(device),
           "torch": torch.__version__, "settings": results}
    if trace:
        out["trace"] = _trace(target, compiled[list(settings)[0]], steps, device, trace)
    if keep_images:
        out["images"] = {name: target.images(state) for name, state in finals.items()}
    return out


def _trace(target: Target, fn, steps: int, device, path: str) -> str:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        _generation(target, fn, steps, device, {}, "trace")()
    prof.export_chrome_trace(path)
    return path


def format_table(result: dict) -> str:
    lines = [f"model {result['model']}, {result['steps']} steps, inner={result['inner']}, {result['rounds']} "
             f"interleaved rounds, device {result['device']}",
             f"{'setting':34}{'gen s':>8}{'speed-up':>10}{'FLOP x':>8}{'effic.':>8}{'PSNR dB':>9}{'SSIM':>8}"
             f"{'cache MB':>10}{'compile s':>11}"]
    for name, r in result["settings"].items():
        f = r["fidelity"]
        lines.append(f"{name:34}{r['generation_s']['median']:>8.3f}{r['measured_speedup']:>10.2f}{r['flop_speedup']:>8.2f}"
                     f"{r['efficiency']:>8.2f}{f['psnr_db']:>9.2f}{f['ssim']:>8.4f}{r['cache_bytes'] / 2**20:>10.2f}"
                     f"{r['compile_s']:>11.1f}")
    lines.append("")
    lines.append("per-variant latency (median / p90 ms, FLOPs):")
    for name, r in result["settings"].items():
        parts = [f"{v}: {d['median_s'] * 1e3:.1f}/{d['p90_s'] * 1e3:.1f} ms, {d['flops'] / 1e9:.3f} GFLOP"
                 for v, d in r["variants"].items()]
        lines.append(f"  {name}: " + "; ".join(parts))
    return "\n".join(lines)
