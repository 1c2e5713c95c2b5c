"""tokencache vs diffusers' cache hooks and cache-dit on the embedded trained DiT.

    python benchmarks/bench_peers.py --samples 16 --steps 50 --rounds 2

Everything runs eagerly (the hook-based peers are Python-level and are not compiled), same sampler,
steps, seeds and CFG. FLOPs: one generation under FlopCounterMode for the peers (their skipped work
is not executed, so it is not counted), tokencache's per-variant graph counts for tokencache.
Measured speed-up: interleaved rounds against the uncached model, median. Peers that cannot run on
this model are listed with the reason instead of numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import traceback
from datetime import date

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import tokencache
from tokencache.models.classifier import load_classifier
from tokencache.models.data import to_image_space
from tokencache.models.fashion_dit import load_default_model
from tokencache.models.sampling import make_noise, sample
from tokencache.profiling import metrics
from tokencache.profiling.timing import interleaved, median_ratio

TOKENCACHE = {
    "tokencache fora N=3": dict(policy="fora", interval=3),
    "tokencache toca r=0.25 N=3": dict(policy="toca", interval=3, ratio=0.25),
    "tokencache duca r=0.25 N=4": dict(policy="duca", interval=4, ratio=0.25),
    "tokencache taylorseer N=3 o=2": dict(policy="taylorseer", interval=3, order=2),
    "tokencache taylorseer N=5 o=2": dict(policy="taylorseer", interval=5, order=2),
}


class WithCacheContext(torch.nn.Module):
    """Calls a model with diffusers' cache hooks the way a pipeline would: inside a cache context
    that names the call and the step, and with the current timestep available to callbacks."""

    def __init__(self, model, steps):
        super().__init__()
        self.model, self.steps, self.calls, self.timestep = model, steps, 0, 1000.0

    def reset(self):
        from diffusers.hooks import HookRegistry
        self.calls = 0
        HookRegistry.check_if_exists_or_initialize(self.model).reset_stateful_hooks(recurse=True)

    def forward(self, **kwargs):
        from diffusers.hooks.hooks import CacheContext, _set_cache_context
        self.timestep = float(kwargs["timestep"].reshape(-1)[0])
        step = self.calls % self.steps
        self.calls += 1
        _set_cache_context(self.model, CacheContext("cfg", step_index=step, num_inference_steps=self.steps,
                                                    timestep=self.timestep))
        try:
            return self.model(**kwargs)
        finally:
            _set_cache_context(self.model, None)


def diffusers_peers(steps):
    from diffusers import hooks

    def make(apply):
        def build():
            model = load_default_model()
            wrapper = WithCacheContext(model, steps)
            apply(model, wrapper)
            return wrapper
        return build
    return {
        "diffusers FirstBlockCache t=0.05": make(lambda m, w: hooks.apply_first_block_cache(m, hooks.FirstBlockCacheConfig(threshold=0.05))),
        "diffusers FirstBlockCache t=0.15": make(lambda m, w: hooks.apply_first_block_cache(m, hooks.FirstBlockCacheConfig(threshold=0.15))),
        "diffusers PAB skip=2": make(lambda m, w: hooks.apply_pyramid_attention_broadcast(m, hooks.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(0, 1000),
            current_timestep_callback=lambda: w.timestep))),
        "diffusers TaylorSeerCache N=3 o=1": make(lambda m, w: hooks.apply_taylorseer_cache(m, hooks.TaylorSeerCacheConfig(
            cache_interval=3, disable_cache_before_step=1, max_order=1))),
        "diffusers FasterCache": make(lambda m, w: hooks.apply_faster_cache(m, hooks.FasterCacheConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=lambda: w.timestep))),
        "diffusers MagCache": make(lambda m, w: hooks.apply_mag_cache(m, hooks.MagCacheConfig(num_inference_steps=steps))),
    }


def cache_dit_peer(threshold, calibrate):
    def build():
        import cache_dit
        from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern
        model = load_default_model()
        kwargs = {}
        if calibrate:
            from cache_dit import TaylorSeerCalibratorConfig
            kwargs["calibrator_config"] = TaylorSeerCalibratorConfig(taylorseer_order=1)
        cache_dit.enable_cache(BlockAdapter(transformer=model, blocks=model.transformer_blocks,
                                            forward_pattern=ForwardPattern.Pattern_3),
                               cache_config=DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
                                                          residual_diff_threshold=threshold), **kwargs)
        return model
    return build


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    torch._dynamo.config.recompile_limit = 64      # several tokencache compilations of one forward()
    noise, labels = make_noise(args.samples, 7), torch.arange(args.samples) % 10
    base_model = load_default_model()
    candidates = {"uncached": lambda: base_model}
    candidates.update({name: (lambda o=o: tokencache.compile(load_default_model(), num_steps=args.steps, inner="eager", **o))
                       for name, o in TOKENCACHE.items()})
    candidates.update(diffusers_peers(args.steps))
    candidates["cache-dit DBCache F1B0 r=0.08"] = cache_dit_peer(0.08, False)
    candidates["cache-dit DBCache F1B0 r=0.08 + TaylorSeer"] = cache_dit_peer(0.08, True)

    models, images, flops, failures = {}, {}, {}, {}
    for name, build in tqdm(candidates.items(), desc="building and checking"):
        try:
            model = build()
            getattr(model, "reset", lambda: None)()
            if name.startswith("tokencache"):
                # not under FlopCounterMode: Dynamo runs compiled code eagerly inside dispatch modes
                images[name] = to_image_space(sample(model, noise, labels, steps=args.steps))
                report = tokencache.report(model)
                flops[name] = report["flops_per_generation"] / report["flops_uncached_generation"]
            else:
                with FlopCounterMode(display=False) as counter:
                    images[name] = to_image_space(sample(model, noise, labels, steps=args.steps))
                flops[name] = counter.get_total_flops()
            models[name] = model
        except Exception as e:
            failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            traceback.print_exc(limit=1)
    base_flops = flops["uncached"]

    def generation(name):
        def run():
            import time
            getattr(models[name], "reset", lambda: None)()
            start = time.perf_counter()
            sample(models[name], noise, labels, steps=args.steps)
            return [time.perf_counter() - start]
        return run
    with tqdm(total=args.rounds * len(models), desc="interleaved generations") as bar:
        timed = interleaved({n: generation(n) for n in models}, args.rounds, warmup=1, progress=bar)

    classifier = load_classifier()
    rows = []
    for name in candidates:
        if name in failures:
            rows.append({"method": name, "error": failures[name]})
            continue
        flop_speedup = 1 / flops[name] if name.startswith("tokencache") else base_flops / flops[name]
        psnr = metrics.psnr(images["uncached"], images[name])
        note = "no effect on this model: output identical, no work skipped" if (
            name != "uncached" and flop_speedup < 1.01 and psnr == float("inf")) else ""
        rows.append({"method": name, "flop_speedup": flop_speedup, "note": note,
                     "measured_speedup": 1 / median_ratio(timed[name], timed["uncached"]),
                     "psnr_db": psnr,
                     "ssim": metrics.ssim(images["uncached"], images[name]),
                     "class_accuracy": metrics.class_accuracy(classifier, images[name], labels)})
    machine = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"\n### peers on the embedded DiT: {args.samples} samples, {args.steps} steps, CFG 2, all eager, "
          f"{args.rounds} interleaved rounds ({date.today()}, {machine})\n")
    print("| method | FLOP speed-up | measured speed-up | PSNR dB | SSIM | class acc | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | – | – | – | – | – | cannot run on this model: {r['error']} |")
        else:
            print(f"| {r['method']} | {r['flop_speedup']:.2f}x | {r['measured_speedup']:.2f}x | {r['psnr_db']:.2f} | "
                  f"{r['ssim']:.4f} | {r['class_accuracy']:.3f} | {r['note']} |")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "peers.json"), "w") as f:
        json.dump({"rows": rows, "args": vars(args), "machine": machine, "date": str(date.today())}, f, indent=1)
    plot(rows, os.path.join(os.path.dirname(__file__), "results", "peers_pareto.png"))


def plot(rows, path):
    import math

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    families = {"tokencache": "tab:blue", "diffusers": "tab:orange", "cache-dit": "tab:green", "uncached": "black"}
    for r in rows:
        if "error" in r:
            continue
        family = r["method"].split()[0]
        psnr = 60.0 if math.isinf(r["psnr_db"]) else r["psnr_db"]
        ax.scatter(r["measured_speedup"], psnr, color=families.get(family, "gray"), label=family)
        ax.annotate(r["method"].replace("tokencache ", "").replace("diffusers ", ""), (r["measured_speedup"], psnr),
                    fontsize=6, xytext=(3, 2), textcoords="offset points")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xlabel("measured speed-up vs uncached (eager, x)")
    ax.set_ylabel("PSNR vs uncached images (dB; identical at 60)")
    ax.set_title("embedded DiT: speed vs fidelity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
