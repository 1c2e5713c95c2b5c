"""CPU linear-layer kernels: plain torch.compile (inductor) vs tokencache with cpu_matmul="aten"
(MKL, inductor's default) and "onednn" (passes/onednn_linear.py), uncached and with a cache
policy, interleaved in one run.

    python benchmarks/bench_cpu_matmul.py --config dit-s --rounds 7

Every configuration runs the same random-weight DiT and the same 20-step Euler loop; the ratios
are medians over rounds of (plain inductor seconds / configuration seconds), paired round by round.
Prints a markdown table and writes benchmarks/results/cpu_matmul_<config>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from datetime import date

import torch
from tqdm import tqdm

import tokencache
from tokencache.models.reference_dit import ReferenceDiT
from tokencache.profiling.timing import interleaved, median_ratio

sys.path.insert(0, os.path.dirname(__file__))
from bench_core import CONFIGS, make_generation  # noqa: E402

POLICIES = {"uncached": dict(policy="none"), "toca r=0.25 N=3": dict(policy="toca", ratio=0.25, interval=3),
            "fora N=3": dict(policy="fora", interval=3)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=list(CONFIGS), default="dit-s")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = CONFIGS[args.config]
    model = ReferenceDiT(**cfg).eval()
    x0 = torch.randn(args.batch, cfg["channels"], cfg["image"], cfg["image"])
    labels = torch.arange(args.batch) % 10

    models = {"torch.compile inductor (no cache)": torch.compile(model, backend="inductor", dynamic=False)}
    for policy, options in POLICIES.items():
        for matmul in ("aten", "onednn", "onednn_packed"):
            models[f"tokencache {policy}, cpu_matmul={matmul}"] = tokencache.compile(
                model, num_steps=args.steps, inner="inductor", cpu_matmul=matmul, **options)
    # every configuration is another Dynamo cache entry of the same forward(); past the recompile
    # limit (8) Dynamo would run the rest eagerly, which once passed for a 0.91x "speed-up"
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(models) + 1)
    gens = {name: make_generation(m, x0, labels, args.steps) for name, m in models.items()}
    for gen in tqdm(gens.values(), desc="compiling (first generation)"):
        gen()
    for name, m in models.items():
        if name.startswith("tokencache"):
            tokencache.report(m)          # raises if the model never reached the tokencache backend
    with tqdm(total=args.rounds * len(gens), desc="interleaved generations") as bar:
        rounds = interleaved(gens, args.rounds, warmup=0, progress=bar)

    base_name = next(iter(gens))
    rows = []
    for name, times in rounds.items():
        rows.append({"setting": name, "median_s": statistics.median(sum(r) for r in times),
                     "speedup_vs_inductor": 1.0 / median_ratio(times, rounds[base_name])})
    machine = f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or 'cpu'}, torch {torch.__version__}"
    print(f"\n### {args.config}: {cfg}, batch {args.batch}, {args.steps} steps, {args.rounds} interleaved rounds "
          f"({date.today()}, {machine})\n")
    print("| setting | generation (median s) | speed-up vs plain inductor |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['median_s']:.3f} | {row['speedup_vs_inductor']:.2f}x |")
    out = os.path.join(os.path.dirname(__file__), "results", f"cpu_matmul_{args.config}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"config": args.config, "model": cfg, "args": vars(args), "machine": machine,
                   "date": str(date.today()), "rows": rows}, f, indent=1)
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
