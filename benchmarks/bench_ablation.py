"""Ablations of the CPU kernel choices, each against the default, interleaved in one process.

    python benchmarks/bench_ablation.py --rounds 9

The machine's speed drifts over a day by more than these effects, so they are measured side by
side: every setting is the same DiT-S-shaped model with toca r=0.25 N=3 (attention reuse),
compiled once with one choice switched off, and the rounds run the settings in turn. Switches:
  no GELU fusion   passes/onednn_linear.py leaves GELUs as separate kernels
  no W @ x^T       2-4-row linears (adaLN) go through oneDNN like the others
  no in-place      passes/inplace_cache.py is skipped: partial steps build new caches
  no early gather  passes/partial.py gathers the region input's rows, not the residual stream's
                   (the N-row LayerNorm + modulation output is written out for the score and gather)
  no packed weights  cpu_matmul="onednn": oneDNN reorders each live weight on every call instead
                   of using the packed copies that "auto" keeps (and checks once per generation)
  cpu_matmul=aten  MKL for every linear (inductor's default kernels)
and one switched on:
  dict-tag guards  torch._dynamo.config.use_recursive_dict_tags_for_guards=True while compiling:
                   Dynamo skips the guards of module subtrees whose dicts did not change (a
                   user-side Dynamo setting, not something the backend can choose)
The first four are tokencache.switches (pipeline passes, and choices inside passes and ops, turned
off inside a `with switches(...)` block); the next two are options.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys

import torch
from tqdm import tqdm

import tokencache
from tokencache.models.reference_dit import ReferenceDiT
from tokencache.profiling.timing import interleaved, per_variant
from tokencache.switches import switches

sys.path.insert(0, os.path.dirname(__file__))
from bench_core import CONFIGS, make_generation  # noqa: E402


# name -> (extra options, context active while compiling, context active while running)
ABLATIONS = {
    "default": ({}, contextlib.nullcontext, contextlib.nullcontext),
    "no GELU fusion": ({}, lambda: switches(fuse_gelu=False), contextlib.nullcontext),
    "no W @ x^T": ({}, contextlib.nullcontext, lambda: switches(small_rows_transposed=False)),
    "no in-place": ({}, lambda: switches(disabled={"inplace_cache"}), contextlib.nullcontext),
    "no early gather": ({}, lambda: switches(early_gather=False), contextlib.nullcontext),
    "no packed weights": ({"cpu_matmul": "onednn"}, contextlib.nullcontext, contextlib.nullcontext),
    "cpu_matmul=aten": ({"cpu_matmul": "aten"}, contextlib.nullcontext, contextlib.nullcontext),
    "dict-tag guards": ({}, lambda: torch._dynamo.config.patch(use_recursive_dict_tags_for_guards=True),
                        contextlib.nullcontext),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = CONFIGS["dit-s"]
    model = ReferenceDiT(**cfg).eval()
    x0 = torch.randn(2, cfg["channels"], cfg["image"], cfg["image"])
    labels = torch.arange(2) % 10

    gens, schedules, packed_mb = {}, {}, {}
    for name, (options, at_compile, at_run) in tqdm(ABLATIONS.items(), desc="compiling"):
        # a copy per setting, so each holds only its own packed weight copies
        compiled = tokencache.compile(copy.deepcopy(model), policy="toca", ratio=0.25, interval=3, num_steps=args.steps,
                                      inner="inductor", **options)
        generation = make_generation(compiled, x0, labels, args.steps)
        with at_compile(), at_run():
            generation()                      # compiles every variant

        def run(generation=generation, at_run=at_run):
            with at_run():
                return generation()
        gens[name] = run
        report = tokencache.report(compiled)     # counts FLOPs by running each variant once
        schedules[name], flops = report["schedule"], report["variants"]
        packed_mb[name] = report["packed_weight_bytes"] / 2**20
    flop_fraction = flops["partial"]["flops"] / flops["fresh"]["flops"]
    with tqdm(total=args.rounds * len(gens), desc="interleaved generations") as bar:
        rounds = interleaved(gens, args.rounds, warmup=0, progress=bar)

    print(f"\n### DiT-S toca r=0.25 N=3, batch 2, {args.steps} steps, {args.rounds} interleaved rounds\n")
    print("| setting | generation (median ms) | fresh (ms) | partial (ms) | partial / FLOP fraction "
          "| packed weight copies (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, times in rounds.items():
        v = per_variant(times, schedules[name])
        fresh, part = v["fresh"]["median_s"] * 1e3, v["partial"]["median_s"] * 1e3
        total = statistics.median(sum(r) for r in times) * 1e3
        print(f"| {name} | {total:.1f} | {fresh:.2f} | {part:.2f} | {part / fresh / flop_fraction:.3f}x "
              f"| {packed_mb[name]:.0f} |")


if __name__ == "__main__":
    main()
