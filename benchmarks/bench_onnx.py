"""onnxruntime (CPU) generation time: the uncached bundle (policy none) vs cached bundles, interleaved.

    python benchmarks/bench_onnx.py --model embedded --steps 50 --rounds 5
    python benchmarks/bench_onnx.py --model dit-s --steps 20 --rounds 5 --settings none,toca
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
from datetime import date

import torch
from tqdm import tqdm

import tokencache
from tokencache.profiling.targets import load_target
from tokencache.profiling.timing import interleaved, median_ratio, median_total, step_times
from tokencache.runtime.bundle_runner import OnnxBundleRunner, bind_like

SETTINGS = {"none": dict(policy="none"), "toca r=0.25 N=3": dict(policy="toca", ratio=0.25, interval=3),
            "fora N=3": dict(policy="fora", interval=3), "taylorseer N=3": dict(policy="taylorseer", interval=3)}


def _pick(text: str) -> dict:
    """Settings whose policy is listed (comma-separated); the uncached baseline is always timed."""
    wanted = {p.strip() for p in text.split(",") if p.strip()} | {"none"}
    unknown = wanted - {o["policy"] for o in SETTINGS.values()}
    if unknown:
        raise SystemExit(f"unknown setting {sorted(unknown)[0]!r}; choose from "
                         f"{', '.join(o['policy'] for o in SETTINGS.values())}")
    return {n: o for n, o in SETTINGS.items() if o["policy"] in wanted}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--settings", default=",".join(o["policy"] for o in SETTINGS.values()),
                   help="policies to time beside the uncached bundle (comma-separated)")
    args = p.parse_args(argv)
    settings = _pick(args.settings)
    target = load_target(args.model)
    work = tempfile.mkdtemp(prefix="tokencache_bench_onnx_")
    runners, flops = {}, {}
    for name, options in tqdm(settings.items(), desc="exporting bundles"):
        compiled = tokencache.compile(target.model, num_steps=args.steps, inner="eager", **options)
        with torch.no_grad():                    # tokencache caches inference only
            target.step(compiled, target.init(), 0, args.steps)
        report = tokencache.report(compiled)
        flops[name] = report["flops_per_generation"]
        runners[name] = OnnxBundleRunner(tokencache.export(compiled, os.path.join(work, name.replace(" ", "_")), progress=False))

    def generation(runner):
        fn = bind_like(runner, target.model)

        def run():
            runner.new_generation()
            state = target.init()
            return step_times(lambda i: target.step(fn, state, i, args.steps), args.steps)
        return run
    with tqdm(total=args.rounds * len(runners), desc="interleaved generations") as bar:
        timed = interleaved({n: generation(r) for n, r in runners.items()}, args.rounds, warmup=1, progress=bar)
    print(f"\n### onnxruntime CPU, model {args.model}, {args.steps} steps, {args.rounds} interleaved rounds "
          f"({date.today()}, {platform.machine()} {os.cpu_count()} cores, onnxruntime "
          f"{__import__('onnxruntime').__version__})\n")
    print("| bundle | generation (median s) | measured speed-up | FLOP speed-up | efficiency |")
    print("|---|---|---|---|---|")
    for name in runners:
        speedup = 1 / median_ratio(timed[name], timed["none"])
        ideal = flops["none"] / flops[name]
        print(f"| {name} | {median_total(timed[name]):.3f} | {speedup:.2f}x | {ideal:.2f}x | {speedup / ideal:.2f} |")


if __name__ == "__main__":
    main()
