"""Time to the first image with inductor's on-disk cache cold and warm: tokencache vs plain torch.compile.

    python benchmarks/bench_warm_start.py --steps 50 --samples 8 --rounds 3

Every measurement is a new Python process (imports, model load, Dynamo, inductor), so what is timed
is what a user restarting a service sees: the first generation (50 Euler steps of the embedded DiT,
CFG as a doubled batch) including every compile, then a second generation (steady). Per setting one
cold process on an empty cache directory fills that directory; then `--rounds` warm processes per
setting run interleaved (plain, tokencache A, tokencache B, plain, ...), each on its setting's warm
directory. The ratio is the median over rounds of (setting's warm first generation / plain's warm
first generation), paired round by round. Results: benchmarks/results/warm_start.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SETTINGS = {
    "plain torch.compile": None,
    "tokencache none": dict(policy="none"),
    "tokencache fora N=3": dict(policy="fora", interval=3),
    "tokencache taylorseer N=3": dict(policy="taylorseer", interval=3),
}

CHILD = r"""
import json, sys, time
start = time.perf_counter()
import torch
import tokencache
from tokencache.models import load_embedded
from tokencache.models.sampling import make_noise, sample
options, steps, samples = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
model = load_embedded("embedded").eval()
if options is None:
    compiled = torch.compile(model)
else:
    compiled = torch.compile(model, backend="tokencache", options=dict(options, num_steps=steps, inner="inductor"))
noise, labels = make_noise(samples, seed=0), torch.arange(samples) % 10
ready = time.perf_counter()
sample(compiled, noise, labels, steps=steps)
first = time.perf_counter()
sample(compiled, noise, labels, steps=steps)
second = time.perf_counter()
print(json.dumps({"setup_s": ready - start, "first_s": first - ready, "steady_s": second - first}))
"""


def run(options, cache_dir: str, steps: int, samples: int) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(options), str(steps), str(samples)],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({options}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="tokencache_warm_")
    dirs = {name: os.path.join(root, str(i)) for i, name in enumerate(SETTINGS)}
    cold, warm = {}, {name: [] for name in SETTINGS}
    for name, options in SETTINGS.items():
        print(f"cold: {name} ...", flush=True)
        cold[name] = run(options, dirs[name], args.steps, args.samples)
    for r in range(args.rounds):
        for name, options in SETTINGS.items():
            print(f"warm round {r + 1}/{args.rounds}: {name} ...", flush=True)
            warm[name].append(run(options, dirs[name], args.steps, args.samples))
    plain = "plain torch.compile"
    rows = []
    for name in SETTINGS:
        ratio = statistics.median(w["first_s"] / p["first_s"] for w, p in zip(warm[name], warm[plain]))
        rows.append({"setting": name, "cold_first_s": cold[name]["first_s"],
                     "warm_first_s": statistics.median(w["first_s"] for w in warm[name]),
                     "warm_first_vs_plain": ratio,
                     "steady_s": statistics.median(w["steady_s"] for w in warm[name]),
                     "setup_s": statistics.median(w["setup_s"] for w in warm[name])})
    print("\n| setting | cold first generation s | warm first generation s | warm first / plain's | steady s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['cold_first_s']:.2f} | {row['warm_first_s']:.2f} | "
              f"{row['warm_first_vs_plain']:.2f}x | {row['steady_s']:.3f} |")
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "warm_start.json")
    with open(path, "w") as f:
        json.dump({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
                   "processor": platform.processor(), "args": vars(args), "rows": rows, "cold": cold, "warm": warm},
                  f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
