"""Core compiler benchmark: uncached vs tokencache on random-weight DiTs, interleaved.

    python benchmarks/bench_core.py --config dit-s --rounds 5
    python benchmarks/bench_core.py --config 1k --rounds 5
    python benchmarks/bench_core.py --config dit-s --device cuda --dtype bfloat16 --inner cudagraphs

For each configuration: per-variant latency (median), end-to-end speed-up over the uncached
model compiled with the same inner backend (median of paired rounds), FLOP speed-up, and their
ratio (efficiency). Prints a markdown table and writes JSON next to this file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date

import torch
from tqdm import tqdm

import tokencache
from tokencache.config import CPU_MATMULS, INNER_BACKENDS
from tokencache.models.reference_dit import ReferenceDiT
from tokencache.profiling.timing import interleaved, median_ratio, per_variant, step_times

CONFIGS = {
    "dit-s": dict(image=32, patch=2, channels=4, hidden=384, depth=12, heads=6),   # 256 tokens
    "1k": dict(image=64, patch=2, channels=4, hidden=384, depth=12, heads=6),      # 1024 tokens
}
SETTINGS = {
    "toca r=0.25 N=3 attn=reuse": dict(policy="toca", ratio=0.25, interval=3, attention="reuse"),
    "toca r=0.25 N=3 attn=tokens": dict(policy="toca", ratio=0.25, interval=3, attention="tokens"),
    "fora N=3": dict(policy="fora", interval=3),
}


def make_generation(model, x0, labels, steps):
    sigmas = torch.linspace(1.0, 0.0, steps + 1, device=x0.device)

    def generation():
        x = x0.clone()

        def step(i):
            nonlocal x
            t = (sigmas[i] * 1000).expand(x.shape[0]).contiguous()
            x = x + (sigmas[i + 1] - sigmas[i]) * model(x, t, labels)
        with torch.no_grad():
            return step_times(step, steps, x0.device)
    return generation


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=list(CONFIGS), default="dit-s")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--inner", default="inductor", choices=list(INNER_BACKENDS))
    p.add_argument("--cpu-matmul", default="auto", choices=list(CPU_MATMULS),
                   help="CacheConfig.cpu_matmul: kernels for the linear layers on the CPU")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), help="subset of: " + ", ".join(SETTINGS))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = ReferenceDiT(**CONFIGS[args.config]).eval().to(device, dtype)
    cfg = CONFIGS[args.config]
    x0 = torch.randn(args.batch, cfg["channels"], cfg["image"], cfg["image"]).to(device, dtype)
    labels = (torch.arange(args.batch) % 10).to(device)

    common = dict(num_steps=args.steps, inner=args.inner, cpu_matmul=args.cpu_matmul)
    compiled = {"uncached": tokencache.compile(model, policy="none", **common)}
    for name in args.settings:
        compiled[name] = tokencache.compile(model, **common, **SETTINGS[name])
    gens = {name: make_generation(m, x0, labels, args.steps) for name, m in compiled.items()}

    compile_s = {}
    for name, gen in gens.items():       # first generation compiles every variant
        start = time.perf_counter()
        gen()
        compile_s[name] = time.perf_counter() - start
    reports = {name: tokencache.report(m) for name, m in compiled.items()}
    with tqdm(total=args.rounds * len(gens), desc="interleaved generations") as bar:
        rounds = interleaved(gens, args.rounds, warmup=0, progress=bar)

    base = rounds["uncached"]
    base_flops = reports["uncached"]["flops_per_generation"]
    rows = []
    for name in compiled:
        rep = reports[name]
        variants = per_variant(rounds[name], rep["schedule"])
        speedup = 1.0 / median_ratio(rounds[name], base)
        flop_speedup = base_flops / rep["flops_per_generation"]
        fresh_ms = variants.get("fresh", variants.get("plain"))["median_s"] * 1e3
        row = {"setting": name, "speedup": speedup, "flop_speedup": flop_speedup,
               "efficiency": speedup / flop_speedup, "first_generation_s": compile_s[name],
               "variants": {}}
        for vname, v in variants.items():
            flops = rep["variants"][vname]["flops"]
            fresh_flops = rep["variants"].get("fresh", rep["variants"].get("plain"))["flops"]
            row["variants"][vname] = {**v, "flops": flops, "flop_fraction": flops / fresh_flops,
                                      "latency_fraction": v["median_s"] * 1e3 / fresh_ms}
        rows.append(row)

    machine = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    matmul = reports["uncached"]["variants"]["plain"]["cpu_matmul"]
    print(f"\n### {args.config}: {cfg}, batch {args.batch}, {args.steps} steps, inner={args.inner}, cpu_matmul={matmul}, "
          f"{args.device} {args.dtype}, {args.rounds} interleaved rounds ({date.today()}, {machine})\n")
    print("| setting | measured speed-up | FLOP speed-up | efficiency | variant latencies (median ms; latency/FLOP fraction of fresh) |")
    print("|---|---|---|---|---|")
    for row in rows:
        parts = []
        for vname, v in row["variants"].items():
            parts.append(f"{vname} {v['median_s'] * 1e3:.1f} ms" + (
                "" if vname in ("fresh", "plain") else
                f" ({v['latency_fraction']:.3f} vs {v['flop_fraction']:.3f} = {v['latency_fraction'] / v['flop_fraction']:.2f}x)"))
        print(f"| {row['setting']} | {row['speedup']:.2f}x | {row['flop_speedup']:.2f}x | {row['efficiency']:.2f} | {'; '.join(parts)} |")
    out = os.path.join(os.path.dirname(__file__), "results", f"core_{args.config}" + (
        "" if (device.type, args.inner, args.dtype) == ("cpu", "inductor", "float32")
        else f"_{device.type}_{args.inner}_{args.dtype}") + ("" if args.cpu_matmul == "auto" else f"_{args.cpu_matmul}") + ".json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"config": args.config, "model": cfg, "args": vars(args), "machine": machine, "cpu_matmul": matmul,
                   "date": str(date.today()), "rows": rows}, f, indent=1)
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
