"""tokencache vs diffusers' cache hooks and cache-dit's DBCache, on the same model, sampler and seeds.

    python benchmarks/bench_peers.py --config embedded --samples 200 --steps 50 --rounds 3
    python benchmarks/bench_peers.py --config 1k --steps 20 --rounds 3          # speed only

`--config embedded`: the shipped Fashion-MNIST DiT (diffusers `DiTTransformer2DModel`, 64 tokens).
Quality: one generation of `--samples` images per method (Euler flow matching, CFG 2.0 as a doubled
batch, noise seed 0, labels i % 10), compared with the uncached model's images of the same noise:
PSNR/SSIM, FD_clf (Fréchet distance in the in-project classifier's features) against the uncached
samples, and class accuracy. `--config 1k`: random weights, 1024 tokens (sample 64, patch 2, 6
layers of hidden 384), speed only.

FLOP speed-up: the peers run eagerly, so one whole generation is counted under
tokencache's FLOP counter (torch's FlopCounterMode with the CPU attention kernel counted; skipped work is not executed, hence not counted);
tokencache counts FLOPs per variant graph and reports per-generation totals (`tokencache.report`).
Measured speed-up: `--time-samples` images per generation, one untimed warm-up round, then
`--rounds` interleaved rounds (uncached, method 1, method 2, ... per round); the ratio is the median
over rounds of (uncached seconds / method seconds), paired round by round. Every cache is reset
between generations (tokencache.new_generation, diffusers' reset_stateful_hooks, cache-dit's
refresh_context).

`--inner` picks tokencache's inner backend and the uncached baseline's: "eager" (default; the
baseline is then the plain module, which is also how every hook-based peer runs) or "inductor"
(baseline = the same model compiled through tokencache with policy="none"; the hook-based peers stay
eager, so only the tokencache rows are then compared like with like).

Where a method cannot run on a model, the table says why instead of giving numbers; a method that
runs but changes nothing is reported as such.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import platform
import statistics
import time
import traceback
from datetime import datetime, timezone

import torch

import tokencache
from tokencache.models.fashion_dit import CONFIG, build_model, load_default_model
from tokencache.models.sampling import make_noise, sample
from tokencache.profiling.timing import interleaved
from tokencache.runtime.flops import flop_counter

from peers_report import mark_pareto, plot, table

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIG_1K = dict(CONFIG, sample_size=64, patch_size=2, num_attention_heads=6, attention_head_dim=64, num_layers=6)

TOKENCACHE = {
    "fora N=2": dict(policy="fora", interval=2),
    "fora N=3": dict(policy="fora", interval=3),
    "toca r=0.25 N=3": dict(policy="toca", interval=3, ratio=0.25),
    "toca r=0.25 N=5": dict(policy="toca", interval=5, ratio=0.25),
    "duca r=0.25 N=3": dict(policy="duca", interval=3, ratio=0.25),
    "taylorseer N=2": dict(policy="taylorseer", interval=2),          # defaults: order 1, 3 warm-up steps
    "taylorseer N=3": dict(policy="taylorseer", interval=3),
    "taylorseer N=5": dict(policy="taylorseer", interval=5),
    "taylorseer N=5 o=2 w=1": dict(policy="taylorseer", interval=5, order=2, warmup=1),   # the defaults before
    "clusca N=5": dict(policy="clusca", interval=5),
}
# a representative subset for the speed-only 1024-token table (one generation there costs ~20x more)
SUBSET_1K = ["uncached", "tokencache fora N=3", "tokencache toca r=0.25 N=3", "tokencache taylorseer N=3",
             "tokencache duca r=0.25 N=3", "diffusers FirstBlockCache t=0.1", "diffusers PAB skip=2",
             "diffusers TaylorSeerCache N=3 o=1", "diffusers FasterCache", "diffusers MagCache t=0.06",
             "cache-dit DBCache F1B0 r=0.08", "cache-dit DBCache F1B0 r=0.08 + TaylorSeer o=1"]


# ----------------------------------------------------------------------------------------------
# diffusers' hooks: called the way a diffusers pipeline calls a CacheMixin transformer
# ----------------------------------------------------------------------------------------------

class DiffusersCall(torch.nn.Module):
    """Calls a model carrying diffusers cache hooks as a pipeline would: inside a cache context
    (`CacheContext`, what `CacheMixin.cache_context` sets; DiTTransformer2DModel is not a CacheMixin)
    naming the call and the step, with the current timestep available to the hooks' callbacks.

    `uncond_first`: FasterCache assumes diffusers' batch order [uncond; cond]; our sampler passes
    [cond; uncond], so the halves are swapped on the way in and back on the way out."""

    def __init__(self, model, steps, uncond_first=False):
        super().__init__()
        self.model, self.steps, self.uncond_first = model, steps, uncond_first
        self.calls, self.timestep = 0, 1000.0

    def reset(self):
        from diffusers.hooks import HookRegistry
        self.calls = 0
        HookRegistry.check_if_exists_or_initialize(self.model).reset_stateful_hooks(recurse=True)

    @staticmethod
    def _swap(x):
        a, b = x.chunk(2)
        return torch.cat([b, a])

    def forward(self, **kwargs):
        from diffusers.hooks.hooks import CacheContext, _set_cache_context
        self.timestep = float(kwargs["timestep"].reshape(-1)[0])
        if self.uncond_first:
            kwargs = {k: self._swap(v) if torch.is_tensor(v) else v for k, v in kwargs.items()}
        step = self.calls % self.steps
        self.calls += 1
        _set_cache_context(self.model, CacheContext("cfg_batch", step_index=step, num_inference_steps=self.steps,
                                                    timestep=self.timestep))
        try:
            out = self.model(**kwargs)
        finally:
            _set_cache_context(self.model, None)
        if self.uncond_first:
            out = (self._swap(out[0]), *out[1:])
        return out


def hook_spec(model):
    """Where the peers hook a model and what they need to know about it.

    The DiT is the diffusers transformer itself. The MMDiT sibling (`CaptionMMDiT`) wraps an
    `SD3Transformer2DModel` behind the DiT's call (caption lookup outside it): the peers hook the
    inner transformer (`model.mmdit`), whose blocks and inputs have SD3's names."""
    if hasattr(model, "mmdit"):
        return {"target": lambda m: m.mmdit,
                "taylor_ids": [r"transformer_blocks\.\d+\.attn", r"transformer_blocks\.\d+\.ff",
                               r"transformer_blocks\.\d+\.ff_context"],
                "uncond_cond_kwargs": ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"],
                "cache_dit_pattern": "Pattern_1", "cache_dit_functor": None}      # cache-dit's "StableDiffusion3"
    # DiT's attention modules are named transformer_blocks.<i>.attn1: the TaylorSeerCache default
    # identifiers (re.fullmatch of "^transformer_blocks.*attn") match none of them, so it would be a
    # no-op; we name the attention and feed-forward outputs as the TaylorSeer paper caches them.
    return {"target": lambda m: m,
            "taylor_ids": [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"],
            "uncond_cond_kwargs": ["hidden_states", "timestep", "class_labels"],
            "cache_dit_pattern": "Pattern_3", "cache_dit_functor": "DiTPatchFunctor"}   # cache-dit's "DiT"


def mag_ratios(make_model, steps, noise, labels, spec=None):
    """MagCache's own calibration mode (no skipping) on calibration noise; it prints the ratios."""
    from diffusers import hooks
    model = make_model()
    wrapper = DiffusersCall(model, steps)
    hooks.apply_mag_cache((spec or hook_spec(model))["target"](model),
                          hooks.MagCacheConfig(calibrate=True, num_inference_steps=steps))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        sample(wrapper, noise, labels, steps=steps)
    lines = [l for l in buf.getvalue().splitlines() if l.startswith("[") and not l.startswith("[MagCache]")]
    if not lines:
        raise RuntimeError("MagCache calibration printed no ratios")
    return [float(r) for r in ast.literal_eval(lines[-1])]


def diffusers_peers(make_model, steps, calib, spec=None):
    """name -> build() returning (callable, reset); the hooks sit on spec["target"](model)."""
    from diffusers import hooks
    spec = spec or hook_spec(make_model())

    def make(apply, uncond_first=False):
        def build():
            model = make_model()
            wrapper = DiffusersCall(model, steps, uncond_first)
            apply(spec["target"](model), wrapper)
            return wrapper, wrapper.reset
        return build

    taylor_ids = spec["taylor_ids"]
    ratios = {}

    def mag(threshold):
        def apply(m, w):
            if "r" not in ratios:
                ratios["r"] = mag_ratios(make_model, steps, *calib, spec=spec)
            hooks.apply_mag_cache(m, hooks.MagCacheConfig(threshold=threshold, num_inference_steps=steps,
                                                          mag_ratios=ratios["r"]))
        return apply

    peers = {f"diffusers FirstBlockCache t={t}": make(lambda m, w, t=t: hooks.apply_first_block_cache(
        m, hooks.FirstBlockCacheConfig(threshold=t))) for t in (0.05, 0.1, 0.2)}
    peers.update({f"diffusers PAB skip={s}": make(lambda m, w, s=s: hooks.apply_pyramid_attention_broadcast(
        m, hooks.PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=s,
                                                 spatial_attention_timestep_skip_range=(100, 800),
                                                 current_timestep_callback=lambda: w.timestep))) for s in (2, 3)})
    peers.update({f"diffusers TaylorSeerCache N={n} o=1": make(lambda m, w, n=n: hooks.apply_taylorseer_cache(
        m, hooks.TaylorSeerCacheConfig(cache_interval=n, disable_cache_before_step=3, max_order=1,
                                       taylor_factors_dtype=torch.float32, cache_identifiers=taylor_ids)))
        for n in (3, 5)})
    peers["diffusers FasterCache"] = make(lambda m, w: hooks.apply_faster_cache(m, hooks.FasterCacheConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
        unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 641),
        current_timestep_callback=lambda: w.timestep, attention_weight_callback=lambda _: 0.5,
        tensor_format="BCHW",
        _unconditional_conditional_input_kwargs_identifiers=spec["uncond_cond_kwargs"])),
        uncond_first=True)
    peers.update({f"diffusers MagCache t={t}": make(mag(t)) for t in (0.06, 0.12)})
    return peers


# ----------------------------------------------------------------------------------------------
# cache-dit: a transformer-only BlockAdapter with its own DiT patch functor
# ----------------------------------------------------------------------------------------------

def cache_dit_peer(make_model, steps, threshold, order, spec=None):
    """build() returning (model, reset); cache-dit's blocks are those of spec["target"](model)."""
    def build():
        import logging

        import cache_dit
        from cache_dit import (
            BlockAdapter,
            DBCacheConfig,
            ForwardPattern,
            TaylorSeerCalibratorConfig,
        )
        from cache_dit.caching.patch_functors import DiTPatchFunctor
        logging.getLogger("cache_dit").setLevel(logging.WARNING)
        model = make_model()
        sp = spec or hook_spec(model)
        transformer = sp["target"](model)
        kwargs = {"calibrator_config": TaylorSeerCalibratorConfig(taylorseer_order=order)} if order else {}
        # the adapter cache-dit registers for the model's pipeline, minus the pipeline. DiT ("DiT"):
        # Pattern_3 blocks and DiTPatchFunctor (diffusers' DiT forward reads transformer_blocks[0].norm1,
        # which the swapped-in cached block list does not have); SD3 ("StableDiffusion3"): Pattern_1.
        # CFG is one batched call, so no separate-CFG context.
        functor = {"DiTPatchFunctor": DiTPatchFunctor, None: lambda: None}[sp["cache_dit_functor"]]()
        adapter = BlockAdapter(transformer=transformer, blocks=transformer.transformer_blocks,
                               forward_pattern=getattr(ForwardPattern, sp["cache_dit_pattern"]),
                               patch_functor=functor)
        cache_dit.enable_cache(adapter, cache_config=DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
            num_inference_steps=steps, enable_separate_cfg=False), **kwargs)
        # without a pipeline nothing resets the context between generations: refresh it explicitly
        return model, lambda: cache_dit.refresh_context(transformer, num_inference_steps=steps)
    return build


def cache_dit_quiet():
    import logging
    for name in list(logging.root.manager.loggerDict):
        if "cache_dit" in name.lower() or "cache-dit" in name.lower():
            logging.getLogger(name).setLevel(logging.ERROR)


# ----------------------------------------------------------------------------------------------

MODELS = {
    "embedded": "embedded trained Fashion-MNIST DiT (64 tokens, 6 layers, hidden 128)",
    "embedded-mmdit": "embedded trained Fashion-MNIST MMDiT (SD3Transformer2DModel, 64 image + 4 caption tokens, "
                      "6 layers, hidden 128)",
    "1k": "random-weight DiTTransformer2DModel, 1024 tokens (sample 64, patch 2), 6 layers, hidden 384",
}


def model_setup(config):
    """(make_model, noise_of(n, seed), description) of a --config: the trained embedded models
    (32x32 Fashion-MNIST noise) or the random-weight 1024-token DiT (64x64 latents)."""
    if config == "1k":
        def noise_of(n, seed):
            return torch.randn(n, 1, 64, 64, generator=torch.Generator().manual_seed(seed))
        return (lambda: build_model(CONFIG_1K).eval()), noise_of, MODELS[config]
    if config == "embedded":
        return load_default_model, make_noise, MODELS[config]
    from tokencache.models import load_embedded
    return (lambda: load_embedded(config)), make_noise, MODELS[config]


def candidates(make_model, steps, inner, calib):
    def tc(options):
        def build():
            model = tokencache.compile(make_model(), num_steps=steps, inner=inner, **options)
            return model, lambda: tokencache.new_generation(model)
        return build

    if inner == "eager":
        out = {"uncached": lambda: (make_model(), lambda: None)}
    else:
        out = {"uncached": tc(dict(policy="none"))}
    out.update({f"tokencache {name}": tc(o) for name, o in TOKENCACHE.items()})
    out.update(diffusers_peers(make_model, steps, calib))
    for threshold in (0.08, 0.2):
        out[f"cache-dit DBCache F1B0 r={threshold}"] = cache_dit_peer(make_model, steps, threshold, 0)
        out[f"cache-dit DBCache F1B0 r={threshold} + TaylorSeer o=1"] = cache_dit_peer(make_model, steps, threshold, 1)
    return out


def family(name):
    return name.split()[0]


def short_error(e):
    lines = [l for l in str(e).splitlines() if l.strip()]
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:200]}"


def generate(model, reset, noise, labels, steps):
    reset()
    return sample(model, noise, labels, steps=steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["embedded", "1k"], default="embedded")
    p.add_argument("--samples", type=int, default=200, help="images for the quality metrics (embedded)")
    p.add_argument("--time-samples", type=int, default=None,
                   help="images per timed generation (default 16 embedded, 1 for 1k)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inner", choices=["eager", "inductor"], default="eager")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the 2-core machine is shared)")
    p.add_argument("--only", default="", help="comma-separated substrings: run only matching methods")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/peers[_1k].json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 256  # many tokencache compilations of the one forward()
    torch._dynamo.config.accumulated_recompile_limit = 4096
    embedded = args.config == "embedded"
    suffix = "" if embedded else "_1k"
    json_path = args.out or os.path.join(RESULTS, f"peers{suffix}.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    time_n = args.time_samples or (16 if embedded else 1)
    make_model, noise_of, _ = model_setup(args.config)
    calib = (noise_of(time_n, 1), torch.arange(time_n) % 10)       # MagCache calibration: other seeds
    time_noise, time_labels = noise_of(time_n, 2), torch.arange(time_n) % 10
    q_noise, q_labels = noise_of(args.samples, 0), torch.arange(args.samples) % 10

    cands = candidates(make_model, args.steps, args.inner, calib)
    if not embedded:
        cands = {k: v for k, v in cands.items() if k in SUBSET_1K}
    if args.only:
        keys = [s.strip() for s in args.only.split(",")]
        cands = {k: v for k, v in cands.items() if k == "uncached" or any(s in k for s in keys)}

    t_start = time.time()
    models, failures, flops, images, reports = {}, {}, {}, {}, {}
    # 1. build; quality generation (embedded) or one generation (1k) that also counts the FLOPs
    for name, build in cands.items():
        t0 = time.time()
        try:
            model, reset = build()
            cache_dit_quiet()
            noise, labels = (q_noise, q_labels) if embedded else (time_noise, time_labels)
            if name.startswith("tokencache") or (name == "uncached" and args.inner != "eager"):
                # tokencache counts its FLOPs per variant graph; not under FlopCounterMode (Dynamo
                # would run the compiled code eagerly inside a dispatch mode)
                out = generate(model, reset, noise, labels, args.steps)
                rep = tokencache.report(model)
                flops[name] = ("ratio", rep["flops_uncached_generation"] / rep["flops_per_generation"])
                reports[name] = {k: rep.get(k) for k in ("flops_per_generation", "flops_uncached_generation",
                                                         "fallback_reason", "recompiles")}
                if rep.get("fallback_reason"):
                    raise RuntimeError(f"tokencache fell back to uncached: {rep['fallback_reason']}")
            else:
                with flop_counter() as counter:
                    out = generate(model, reset, noise, labels, args.steps)
                flops[name] = ("count", counter.get_total_flops())
            if embedded:
                from tokencache.models.data import to_image_space
                images[name] = to_image_space(out)
            else:
                images[name] = out
            models[name] = (model, reset)
            print(f"{name}: ok ({time.time() - t0:.0f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run on this model: report why
            failures[name] = short_error(e)
            print(f"{name}: FAILED {failures[name]}", flush=True)
            traceback.print_exc(limit=-2)
    if "uncached" not in models:
        raise SystemExit(f"the uncached model failed: {failures.get('uncached')}")
    base_flops = flops["uncached"][1] if flops["uncached"][0] == "count" else None

    # 2. interleaved timing
    def timed(name):
        model, reset = models[name]

        def run():
            reset()
            start = time.perf_counter()
            sample(model, time_noise, time_labels, steps=args.steps, guidance=args.guidance)
            return [time.perf_counter() - start]
        return run
    t1 = time.time()
    # embedded: the quality generation used another batch size (a new tokencache graph): warm up.
    # 1k: the first generation above had the timing shape already.
    rounds = interleaved({n: timed(n) for n in models}, args.rounds, warmup=1 if embedded else 0)
    timing_s = time.time() - t1
    base_rounds = [r[0] for r in rounds["uncached"]]

    # 3. metrics
    rows = []
    classifier = load_classifier() if embedded else None
    for name in cands:
        if name in failures:
            rows.append({"method": name, "family": family(name), "error": failures[name]})
            continue
        kind, value = flops[name]
        if kind == "ratio":
            flop_speedup = value
        else:
            flop_speedup = base_flops / value if base_flops else float("nan")
        times = [r[0] for r in rounds[name]]
        row = {"method": name, "family": family(name), "flop_speedup": flop_speedup,
               "measured_speedup": statistics.median(b / t for b, t in zip(base_rounds, times)),
               "median_generation_s": statistics.median(times), "round_s": times}
        row["efficiency"] = row["measured_speedup"] / flop_speedup
        if name in reports:
            row["tokencache_report"] = reports[name]
        if embedded:
            from tokencache.profiling import metrics
            ref = images["uncached"]
            row.update(psnr_db=metrics.psnr(ref, images[name]), ssim=metrics.ssim(ref, images[name]),
                       fd_clf_vs_uncached=0.0 if name == "uncached" else abs(metrics.fd_clf(classifier, ref, images[name])),
                       class_accuracy=metrics.class_accuracy(classifier, images[name], q_labels))
            identical = torch.equal(images[name], ref)
            if name != "uncached" and identical:
                row["note"] = "no effect on this model: output identical to uncached"
        else:
            rel = (images[name] - images["uncached"]).norm() / images["uncached"].norm()
            row["rel_l2_random_weights"] = float(rel)
        rows.append(row)
    if embedded:
        mark_pareto(rows)
        try:
            from tokencache.models.data import load as load_data
            real, _ = load_data("test")
            from tokencache.models.data import to_image_space
            from tokencache.profiling import metrics
            real_ref = metrics.fd_clf(classifier, to_image_space(real[:args.samples * 5]), images["uncached"])
        except Exception as e:  # noqa: BLE001 - data package missing: not needed for the table
            real_ref = None
            print("no real-data reference:", short_error(e))
    else:
        real_ref = None

    meta = {
        "config": args.config, "args": vars(args), "time_samples": time_n,
        "model": MODELS[args.config],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({platform.processor() or 'cpu'}), "
                   f"torch {torch.__version__}, {args.threads} torch thread(s)",
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "runtime_s": round(time.time() - t_start), "timing_s": round(timing_s),
        "fd_clf_uncached_vs_real_test": real_ref,
        "versions": versions(),
    }
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    print(table(rows, embedded, meta))
    if embedded:
        plot(rows, os.path.splitext(json_path)[0] + "_pareto.png", meta)     # peers.json -> peers_pareto.png
    print(f"\nwrote {json_path} ({meta['runtime_s']} s)")


def load_classifier():
    from tokencache.models.classifier import load_classifier as load
    return load()


def versions():
    out = {}
    for mod in ("diffusers", "cache_dit"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    out["tokencache"] = tokencache.__version__
    return out


if __name__ == "__main__":
    main()
