"""Every tokencache policy at a few settings on a shipped trained model: FLOP speed-up, measured
speed-up (interleaved against the uncached model, same inner backend), PSNR/SSIM against the
uncached images, FD_clf against the uncached samples and class accuracy.

    python benchmarks/bench_policies.py --samples 100 --steps 50 --rounds 3 --inner inductor
    python benchmarks/bench_policies.py --model embedded-mmdit --samples 100 --steps 50 --rounds 3

The joint-attention sibling (embedded-mmdit) runs its own set: every policy at two intervals, and
the token-wise ones (toca, duca, clusca) with the text tokens recomputed and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date

import torch
from tqdm import tqdm

from tokencache.models import EMBEDDED
from tokencache.models.classifier import load_classifier
from tokencache.profiling import metrics
from tokencache.profiling.profile import run_profile
from tokencache.profiling.targets import embedded_target

SETTINGS = {
    "fora N=2": dict(policy="fora", interval=2),
    "fora N=3": dict(policy="fora", interval=3),
    "toca r=0.25 N=3": dict(policy="toca", interval=3, ratio=0.25),
    "toca r=0.25 N=5": dict(policy="toca", interval=5, ratio=0.25),
    "toca r=0.5 N=5 attn=tokens": dict(policy="toca", interval=5, ratio=0.5, attention="tokens"),
    "duca r=0.25 N=4": dict(policy="duca", interval=4, ratio=0.25),
    "duca r=0.25 N=4 skip": dict(policy="duca", interval=4, ratio=0.25, aggressive="skip"),
    "taylorseer N=3": dict(policy="taylorseer", interval=3),        # defaults: order 1, 3 warm-up steps
    "taylorseer N=5": dict(policy="taylorseer", interval=5),
    "taylorseer N=3 o=2 w=1": dict(policy="taylorseer", interval=3, order=2, warmup=1),   # the defaults before
    "taylorseer N=5 o=2 w=1": dict(policy="taylorseer", interval=5, order=2, warmup=1),
    "clusca N=5 K=16": dict(policy="clusca", interval=5, clusters=16),
    "clusca N=5 K=16 o=2 w=1": dict(policy="clusca", interval=5, clusters=16, order=2, warmup=1),
    # DaTo: pruned self-attention in fresh steps (prune 0.4 = its reference default), reuse between
    "dato N=1 p=0.4": dict(policy="dato", interval=1, prune_ratio=0.4),
    "dato N=2 p=0.4": dict(policy="dato", interval=2, prune_ratio=0.4),
    "dato N=3 p=0.4": dict(policy="dato", interval=3, prune_ratio=0.4),
    "dato N=3 p=0.2": dict(policy="dato", interval=3, prune_ratio=0.2),
    "dato N=3 p=0.1": dict(policy="dato", interval=3, prune_ratio=0.1),
}


def _joint_settings() -> dict:
    """toca under attention="reuse" reuses each joint attention whole, text outputs included, so
    the text stream feeds nothing in a cached step and context_tokens changes neither output nor
    FLOPs there: it is compared where the image queries attend to the text keys and values
    (attention="tokens") and under duca and clusca."""
    settings = {"fora N=2": dict(policy="fora", interval=2), "fora N=3": dict(policy="fora", interval=3),
                "taylorseer N=3": dict(policy="taylorseer", interval=3),
                "taylorseer N=5": dict(policy="taylorseer", interval=5),
                "toca r=0.25 N=3": dict(policy="toca", interval=3, ratio=0.25)}   # the defaults
    for name, options in {"toca r=0.5 N=3 attn=tokens": dict(policy="toca", interval=3, ratio=0.5, attention="tokens"),
                          "toca r=0.5 N=5 attn=tokens": dict(policy="toca", interval=5, ratio=0.5, attention="tokens"),
                          "duca r=0.25 N=3": dict(policy="duca", interval=3, ratio=0.25),
                          "duca r=0.25 N=5": dict(policy="duca", interval=5, ratio=0.25),
                          "clusca N=3 K=16": dict(policy="clusca", interval=3, clusters=16),
                          "clusca N=5 K=16": dict(policy="clusca", interval=5, clusters=16)}.items():
        for text in ("recompute", "reuse"):
            settings[f"{name} text={text}"] = dict(options, context_tokens=text)
    return settings


SETTINGS_BY_MODEL = {"embedded": SETTINGS, "embedded-pixart": SETTINGS, "embedded-mmdit": _joint_settings()}


def quality_only(target, settings: dict, steps: int, inner: str, progress) -> dict:
    """One generation per setting, no timing (for a machine too busy to time on): final images and
    FLOPs per generation, uncached first."""
    import tokencache

    found = {}
    for name, options in {"uncached": {"policy": "none"}, **settings}.items():
        torch._dynamo.reset()
        compiled = tokencache.compile(target.model, num_steps=steps, inner=inner, **options)
        state = target.init()
        with torch.no_grad():
            for i in range(steps):
                target.step(compiled, state, i, steps)
        found[name] = (target.images(state), tokencache.report(compiled)["flops_per_generation"])
        progress.update(1)
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inner", default="inductor", choices=["inductor", "eager"])
    p.add_argument("--model", default="embedded", choices=list(EMBEDDED))
    p.add_argument("--only", default="", help="comma-separated setting names (default: all)")
    p.add_argument("--quality-only", action="store_true",
                   help="one generation per setting, no timing: FLOP speed-up and quality only")
    args = p.parse_args(argv)
    settings = SETTINGS_BY_MODEL[args.model]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        unknown = [w for w in wanted if w not in settings]
        if unknown:
            p.error(f"unknown setting {unknown[0]!r}; the settings of {args.model}: {', '.join(settings)}")
        settings = {w: settings[w] for w in wanted}
    target = embedded_target(samples=args.samples, name=args.model)
    if args.quality_only:
        return print_quality(args, quality_only(target, settings, args.steps, args.inner,
                                                tqdm(total=1 + len(settings), desc="generating")))
    with tqdm(total=(1 + len(settings)) * (1 + args.rounds), desc="profiling") as bar:
        result = run_profile(target, settings, steps=args.steps, rounds=args.rounds, inner=args.inner,
                             progress=bar, keep_images=True)
    classifier = load_classifier()
    labels = torch.arange(args.samples) % 10
    images = result.pop("images")
    machine = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"\n### {args.model}, {args.samples} samples, {args.steps} steps, inner={args.inner}, {args.rounds} "
          f"interleaved rounds ({date.today()}, {machine})\n")
    print("| setting | FLOP speed-up | measured speed-up | efficiency | PSNR dB | SSIM | FD_clf vs uncached | class acc |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in result["settings"].items():
        r["fd_clf_vs_uncached"] = metrics.fd_clf(classifier, images["uncached"], images[name])
        r["class_accuracy"] = metrics.class_accuracy(classifier, images[name], labels)
        f = r["fidelity"]
        print(f"| {name} | {r['flop_speedup']:.2f}x | {r['measured_speedup']:.2f}x | {r['efficiency']:.2f} | "
              f"{f['psnr_db']:.2f} | {f['ssim']:.4f} | {r['fd_clf_vs_uncached']:.2f} | {r['class_accuracy']:.3f} |")
    suffix = "" if args.model == "embedded" else "_" + args.model.split("-", 1)[1]
    out = os.path.join(os.path.dirname(__file__), "results", f"policies_embedded{suffix}.json")
    with open(out, "w") as fh:
        json.dump(dict(result, machine=machine, date=str(date.today())), fh, indent=1, default=str)


def print_quality(args, found: dict) -> None:
    classifier = load_classifier()
    labels = torch.arange(args.samples) % 10
    base, base_flops = found["uncached"]
    machine = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"\n### {args.model}, {args.samples} samples, {args.steps} steps, inner={args.inner}, quality only "
          f"({date.today()}, {machine})\n")
    print("| setting | FLOP speed-up | PSNR dB | SSIM | class acc |")
    print("|---|---|---|---|---|")
    rows = {}
    for name, (images, flops) in found.items():
        rows[name] = dict(flop_speedup=base_flops / flops, psnr_db=metrics.psnr(base, images),
                          ssim=metrics.ssim(base, images), class_accuracy=metrics.class_accuracy(classifier, images, labels))
        r = rows[name]
        print(f"| {name} | {r['flop_speedup']:.2f}x | {r['psnr_db']:.2f} | {r['ssim']:.4f} | {r['class_accuracy']:.3f} |")
    suffix = "" if args.model == "embedded" else "_" + args.model.split("-", 1)[1]
    out = os.path.join(os.path.dirname(__file__), "results", f"quality_embedded{suffix}.json")
    with open(out, "w") as fh:
        json.dump(dict(settings=rows, samples=args.samples, steps=args.steps, machine=machine, date=str(date.today())),
                  fh, indent=1, default=float)


if __name__ == "__main__":
    main()
