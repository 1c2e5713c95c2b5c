"""Every tokencache policy at a few settings on the embedded trained DiT: FLOP speed-up, measured
speed-up (interleaved against the uncached model, same inner backend), PSNR/SSIM against the
uncached images, FD_clf against the uncached samples and class accuracy.

    python benchmarks/bench_policies.py --samples 100 --steps 50 --rounds 3 --inner inductor
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date

import torch
from tqdm import tqdm

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
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inner", default="inductor", choices=["inductor", "eager"])
    args = p.parse_args(argv)
    target = embedded_target(samples=args.samples)
    with tqdm(total=(1 + len(SETTINGS)) * (1 + args.rounds), desc="profiling") as bar:
        result = run_profile(target, SETTINGS, steps=args.steps, rounds=args.rounds, inner=args.inner,
                             progress=bar, keep_images=True)
    classifier = load_classifier()
    labels = torch.arange(args.samples) % 10
    images = result.pop("images")
    machine = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"\n### embedded DiT, {args.samples} samples, {args.steps} steps, inner={args.inner}, {args.rounds} "
          f"interleaved rounds ({date.today()}, {machine})\n")
    print("| setting | FLOP speed-up | measured speed-up | efficiency | PSNR dB | SSIM | FD_clf vs uncached | class acc |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in result["settings"].items():
        r["fd_clf_vs_uncached"] = metrics.fd_clf(classifier, images["uncached"], images[name])
        r["class_accuracy"] = metrics.class_accuracy(classifier, images[name], labels)
        f = r["fidelity"]
        print(f"| {name} | {r['flop_speedup']:.2f}x | {r['measured_speedup']:.2f}x | {r['efficiency']:.2f} | "
              f"{f['psnr_db']:.2f} | {f['ssim']:.4f} | {r['fd_clf_vs_uncached']:.2f} | {r['class_accuracy']:.3f} |")
    out = os.path.join(os.path.dirname(__file__), "results", "policies_embedded.json")
    with open(out, "w") as fh:
        json.dump(dict(result, machine=machine, date=str(date.today())), fh, indent=1, default=str)


if __name__ == "__main__":
    main()
