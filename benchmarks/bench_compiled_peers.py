"""tokencache vs diffusers' cache hooks and cache-dit, everything compiled: what a user choosing
between them would run. The compiled sibling of bench_peers.py (same models, sampler, seeds, peer
settings, metrics, table and Pareto plot; only how each is compiled and what is timed differ).

    python benchmarks/bench_compiled_peers.py --config embedded --samples 100 --steps 50 --rounds 3
    python benchmarks/bench_compiled_peers.py --config 1k --steps 20 --rounds 3           # speed only
    python benchmarks/bench_compiled_peers.py --config embedded-mmdit --samples 100 --steps 50 --rounds 3
    python benchmarks/bench_compiled_peers.py --config embedded --samples 2 --steps 4 --rounds 1 --quick  # smoke

Needs cache-dit for its rows (`pip install cache-dit==1.5.3`; check with `pip install --dry-run` first
that it keeps torch 2.13.0+cpu, else `--no-deps` plus its missing light dependencies); without it
those rows say it is not installed.

How each setting is compiled:
* uncached: plain `torch.compile(transformer)` (inductor, defaults): the baseline of every speed-up.
* tokencache: `tokencache.compile(transformer, inner="inductor", ...)` (default kernels).
* diffusers hooks (FirstBlockCache, PAB, TaylorSeerCache, FasterCache, MagCache): the hooks are applied
  as in bench_peers, then the hooked transformer is compiled as diffusers recommends:
  `transformer.compile_repeated_blocks()` where its class declares `_repeated_blocks`, otherwise
  `transformer.compile()` (torch.compile in place; DiTTransformer2DModel and SD3Transformer2DModel
  declare no `_repeated_blocks` in diffusers 0.42.1).
* cache-dit DBCache (+ TaylorSeer): `cache_dit.enable_cache(...)` as in bench_peers, then its recipe,
  `cache_dit.set_compile_configs()` and `torch.compile(transformer)` (in place). set_compile_configs
  changes global inductor/Dynamo settings; here they are applied only around the cache-dit models'
  calls, so the other settings in the timing process keep the defaults.
A setting whose compiled form fails runs the way its docs say without compiling (eagerly), and its row
says so and why.

What is measured, per setting:
1. Cold process (one subprocess per setting, `TORCHINDUCTOR_CACHE_DIR` a fresh empty directory, Dynamo's
   default recompile limit unless --cold-recompile-limit; cache-dit's set_compile_configs raises it to 1024
   for its own rows): build + compile + first generation of the timing batch = *time to first
   image* (also from interpreter start, imports included); two more generations of the same batch
   (the second may still carry one-off work, e.g. tokencache's FLOP check after a first generation);
   *compile time* = first - third generation; Dynamo's graphs, graph breaks (with reasons) and
   recompiles (with their guard failures) in the first and in the later generations; then the quality
   images (`--samples` images, seed 0, made as generations of the timed batch size so nothing new is
   compiled and data-dependent peers decide on the batch that is timed), and the FLOPs (tokencache: its
   report; the others: one eager generation of the timing batch with the same hooks under tokencache's
   FLOP counter, since compiled code cannot run under a FLOP-counting dispatch mode).
   MagCache's calibration run (eager, other seeds) happens before the clock starts.
2. One timing process: every setting built and compiled again (the children's inductor caches are
   copied into this process's cache directory first, so this is mostly cache hits), two untimed
   warm-up rounds, then `--rounds` interleaved rounds (uncached, setting 1, setting 2, ... per round);
   measured speed-up = median over rounds of (uncached seconds / setting seconds), paired round by
   round; *steady* = the median generation seconds. Every cache is reset before each generation.
   Dynamo's recompile limit is raised here (every setting compiles the same forward()), so a peer that
   hit the default limit in its cold run (marked in the table) may run compiled code here where the cold
   process fell back to eager frames; Dynamo compiling anything during the timed rounds is warned about
   and recorded (meta "dynamo_during_timed_rounds").

Quality (embedded configs): PSNR/SSIM/FD_clf/class accuracy of each setting's quality images against
the uncached (torch.compile) images of the same noise. 1k: rel. L2 of the first timing generation.
Compiled graphs differ by float rounding, so "no effect" means within rounding (PSNR > 100 dB, rel. L2
< 1e-5). embedded-mmdit: diffusers' FirstBlockCache cannot run on SD3Transformer2DModel (its last
block returns no encoder_hidden_states; the row says so); the other peers hook `model.mmdit`.
Writes benchmarks/results/compiled_peers[_1k|_mmdit][_quick].json (+ _pareto.png) and prints the table.

Known problem (2026-12-08 run, BENCHMARKS.md): in the shared timing process tokencache's graphs came
out split at the timestep embedder (after the peers had hooked and compiled the same model), so its
rows timed 0.87-0.93x of plain torch.compile against 2.19x in `tokencache profile`. Until tokencache
is timed in a process of its own, only the cold-process columns are trustworthy.
"""
from __future__ import annotations

import time

_T0 = time.time()       # interpreter start (about): the cold "time to first image" counts imports too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import torch  # noqa: E402

import tokencache  # noqa: E402
from tokencache.models.sampling import sample  # noqa: E402
from tokencache.profiling.timing import interleaved  # noqa: E402
from tokencache.runtime.flops import flop_counter  # noqa: E402

from bench_peers import (  # noqa: E402
    MODELS,
    SUBSET_1K,
    TOKENCACHE,
    DiffusersCall,
    cache_dit_peer,
    cache_dit_quiet,
    diffusers_peers,
    family,
    hook_spec,
    load_classifier,
    model_setup,
    short_error,
    versions,
)
from peers_report import ROUNDING_PSNR_DB, fmt, mark_pareto, plot, table  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# tokencache settings compiled here (each compiles several variant graphs: fewer than bench_peers')
TC_NAMES = ["fora N=3", "toca r=0.25 N=3", "duca r=0.25 N=3", "taylorseer N=3", "taylorseer N=5"]
CACHE_DIT = [(0.08, 0), (0.08, 1), (0.2, 0), (0.2, 1)]
# --quick: one setting per peer kind
QUICK = ["uncached", "tokencache taylorseer N=3", "diffusers FirstBlockCache t=0.1", "diffusers PAB skip=2",
         "diffusers TaylorSeerCache N=3 o=1", "diffusers FasterCache", "diffusers MagCache t=0.06",
         "cache-dit DBCache F1B0 r=0.08 + TaylorSeer o=1"]
SUFFIX = {"embedded": "", "1k": "_1k", "embedded-mmdit": "_mmdit"}


# ----------------------------------------------------------------------------------------------
# the settings and how each is compiled
# ----------------------------------------------------------------------------------------------

def settings(make_model, steps, calib, spec, config, quick, only):
    """name -> build(compiled) returning (callable, reset, context factory, how it was compiled)."""
    def baseline(compiled):
        model = make_model()
        if not compiled:
            return model, lambda: None, contextlib.nullcontext, "eager"
        return torch.compile(model), lambda: None, contextlib.nullcontext, "torch.compile"

    def tc(options):
        def build(compiled):
            # tokencache has no eager form to fall back to here: its rows are compiled or an error
            model = tokencache.compile(make_model(), num_steps=steps, inner="inductor", **options)
            return model, lambda: tokencache.new_generation(model), contextlib.nullcontext, \
                "tokencache.compile(inner=inductor)"
        return build

    def peer(eager_build, kind):
        def build(compiled):
            obj, reset = eager_build()
            cache_dit_quiet()
            if not compiled:
                return obj, reset, contextlib.nullcontext, "eager"
            target = spec["target"](obj.model if isinstance(obj, DiffusersCall) else obj)
            if kind == "cache-dit":
                ctx = cache_dit_compile_configs
                target.compile()
                how = "cache_dit.set_compile_configs(); torch.compile(transformer)"
            elif getattr(target, "_repeated_blocks", None):
                ctx = contextlib.nullcontext
                target.compile_repeated_blocks()
                how = "transformer.compile_repeated_blocks()"
            else:
                ctx = contextlib.nullcontext
                target.compile()
                how = f"torch.compile(transformer) ({type(target).__name__}: no _repeated_blocks)"
            return obj, reset, ctx, how
        return build

    out = {"uncached": baseline}
    out.update({f"tokencache {n}": tc(TOKENCACHE[n]) for n in TC_NAMES})
    out.update({n: peer(b, "diffusers") for n, b in diffusers_peers(make_model, steps, calib, spec).items()})
    for threshold, order in CACHE_DIT:
        name = f"cache-dit DBCache F1B0 r={threshold}" + (" + TaylorSeer o=1" if order else "")
        out[name] = peer(cache_dit_peer(make_model, steps, threshold, order, spec), "cache-dit")
    if config == "1k":
        out = {k: v for k, v in out.items() if k in SUBSET_1K}
    if quick:
        out = {k: v for k, v in out.items() if k in QUICK}
    if only:
        keys = [s.strip() for s in only.split(",")]
        out = {k: v for k, v in out.items() if k == "uncached" or any(s in k for s in keys)}
    return out


_CACHE_DIT_PATCH = None


def cache_dit_config_changes():
    """What cache_dit.set_compile_configs() changes in inductor's and Dynamo's config (learned by
    calling it and restoring the previous values)."""
    global _CACHE_DIT_PATCH
    if _CACHE_DIT_PATCH is None:
        import cache_dit
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config
        mods = (inductor_config, dynamo_config)
        before = [m.get_config_copy() for m in mods]
        cache_dit.set_compile_configs()
        after = [m.get_config_copy() for m in mods]
        changes = []
        for m, b, a in zip(mods, before, after):
            diff = {k: v for k, v in a.items() if k in b and not _same(b[k], v)}
            for k in diff:
                setattr(m, k, b[k])
            changes.append(diff)
        _CACHE_DIT_PATCH = changes
    return _CACHE_DIT_PATCH


def _same(a, b):
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values without a plain ==
        return a is b


@contextlib.contextmanager
def cache_dit_compile_configs():
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config
    ind, dyn = cache_dit_config_changes()
    with inductor_config.patch(ind), dynamo_config.patch(dyn):
        yield


# ----------------------------------------------------------------------------------------------
# Dynamo's account of a compiled run: graphs, graph breaks, recompiles
# ----------------------------------------------------------------------------------------------

class DynamoLog(logging.Handler):
    """Collects Dynamo's recompile messages (the "recompiles" log artifact) and recompile-limit
    warnings."""

    def __init__(self):
        super().__init__()
        self.recompiles, self.limit_hit, self._seen = [], [], None

    def emit(self, record):
        if record is self._seen:        # torch re-initialises its loggers (propagation) at the first compile:
            return                      # one record may reach this handler through two loggers
        self._seen = record
        msg = record.getMessage()
        if "__recompiles" in record.name:
            self.recompiles.append(recompile_reason(msg))
        elif "recompile_limit" in msg or "cache_size_limit" in msg:
            self.limit_hit.append(msg.splitlines()[0][:300])

    def install(self):
        """In the cold runs (their output goes to a log file: torch also prints the messages)."""
        torch._logging.set_logs(recompiles=True)
        logging.getLogger("torch._dynamo.guards.__recompiles").addHandler(self)
        logging.getLogger("torch._dynamo.convert_frame").addHandler(self)     # the recompile-limit warning
        return self


class NoLog:
    """The timing process counts graphs only (any recompile is a new graph), without Dynamo's log."""
    recompiles, limit_hit = (), ()


def recompile_reason(msg):
    """'function (file:line): first guard failure' from Dynamo's recompile message."""
    lines = [l.strip() for l in msg.splitlines() if l.strip()]
    head = lines[0].replace("Recompiling function ", "") if lines else msg
    head = head.split(" in ")[0] + " (" + os.path.basename(head.split(" in ")[-1]) + ")" if " in " in head else head
    guard = next((l[2:] for l in lines[1:] if l.startswith("- ") and "User stack" not in l), "")
    guard = guard.split(": ", 1)[-1].split("  #")[0].strip()
    # numbers (guarded values, object ids) as N, so that one guard failing for each value groups as one
    return re.sub(r"(?<![\w.])\d+(\.\d+)?(?![\w.])", "N", f"{head}: {guard}")[:240]


def dynamo_snapshot(log):
    from torch._dynamo.utils import counters
    breaks = dict(counters["graph_break"])
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(breaks.values()),
            "break_reasons": breaks, "recompiles": list(log.recompiles), "limit_hit": list(log.limit_hit)}


def dynamo_delta(a, b):
    reasons = {k: v - a["break_reasons"].get(k, 0) for k, v in b["break_reasons"].items()
               if v - a["break_reasons"].get(k, 0)}
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:5]
    recompiles = {}
    for r in b["recompiles"][len(a["recompiles"]):]:
        recompiles[r] = recompiles.get(r, 0) + 1
    return {"graphs": b["graphs"] - a["graphs"], "graph_breaks": b["graph_breaks"] - a["graph_breaks"],
            "break_reasons": [f"{n}x {r.splitlines()[0][:200]}" for r, n in top],
            "recompiles": len(b["recompiles"]) - len(a["recompiles"]),
            "recompile_reasons": [f"{n}x {r}" for r, n in sorted(recompiles.items(), key=lambda kv: -kv[1])[:5]],
            "recompile_limit_hit": b["limit_hit"][len(a["limit_hit"]):][:3]}


# ----------------------------------------------------------------------------------------------
# one setting in a cold process
# ----------------------------------------------------------------------------------------------

def generate(model, reset, ctx, noise, labels, args):
    reset()
    with ctx():
        return sample(model, noise, labels, steps=args.steps, guidance=args.guidance)


def child(args, name, out_path):
    torch.set_num_threads(args.threads)
    if args.cold_recompile_limit:
        torch._dynamo.config.recompile_limit = args.cold_recompile_limit
    log = DynamoLog().install()
    env = Env(args)
    build = env.settings[name]
    result = {"name": name, "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
    if "MagCache" in name:          # its calibration (an eager run on other seeds) is not part of the clock
        build(False)
    s0 = dynamo_snapshot(log)
    t_build = time.time()
    try:
        model, reset, ctx, how = build(True)
        build_s = time.time() - t_build
        t1 = time.time()
        first = generate(model, reset, ctx, env.time_noise, env.time_labels, args)
        first_s = time.time() - t1
    except Exception as e:  # noqa: BLE001 - compiled form fails: record why, run it as its docs say
        if name == "uncached" or name.startswith("tokencache"):
            raise
        result["compile_error"] = short_error(e)
        result["compile_error_dynamo"] = dynamo_delta(s0, dynamo_snapshot(log))
        print(f"{name}: compiled form failed ({result['compile_error']}); running it eagerly", flush=True)
        torch._dynamo.reset()
        s0 = dynamo_snapshot(log)
        t_build = time.time()
        model, reset, ctx, how = build(False)
        how = "eager (compiled form failed)"
        build_s = time.time() - t_build
        t1 = time.time()
        first = generate(model, reset, ctx, env.time_noise, env.time_labels, args)
        first_s = time.time() - t1
    t_first = time.time()
    s1 = dynamo_snapshot(log)
    later = []
    for _ in range(2):      # the second generation may still carry one-off work (tokencache's FLOP check)
        t2 = time.time()
        generate(model, reset, ctx, env.time_noise, env.time_labels, args)
        later.append(time.time() - t2)
    s2 = dynamo_snapshot(log)
    result.update(compiled_as=how, mode="eager" if how.startswith("eager") else "compiled",
                  build_s=build_s, first_generation_s=first_s, second_generation_s=later[0],
                  third_generation_s=later[1], ttfi_s=build_s + first_s, ttfi_process_s=t_first - _T0,
                  compile_s=max(0.0, first_s - later[1]),
                  dynamo_first=dynamo_delta(s0, s1), dynamo_second=dynamo_delta(s1, s2))
    # quality images (embedded) / the first generation (1k, rel. L2)
    if env.embedded:
        from tokencache.models.data import to_image_space
        out = torch.cat([generate(model, reset, ctx, env.q_noise[i:i + env.time_n], env.q_labels[i:i + env.time_n], args)
                         for i in range(0, env.q_n, env.time_n)])
        result["images"] = to_image_space(out[:env.samples])
        result["dynamo_quality"] = dynamo_delta(s2, dynamo_snapshot(log))
    else:
        result["images"] = first
    # FLOPs
    if name.startswith("tokencache"):
        rep = tokencache.report(model)
        if rep.get("fallback_reason"):
            raise RuntimeError(f"tokencache fell back to uncached: {rep['fallback_reason']}")
        result["flops"] = ("ratio", rep["flops_uncached_generation"] / rep["flops_per_generation"])
        result["tokencache_report"] = {k: rep.get(k) for k in ("flops_per_generation", "flops_uncached_generation",
                                                                 "fallback_reason", "recompiles")}
    else:
        eager, ereset, ectx, _ = build(False)
        with flop_counter() as counter:
            generate(eager, ereset, ectx, env.time_noise, env.time_labels, args)
        result["flops"] = ("count", counter.get_total_flops())
    torch.save(result, out_path)


def run_child(args, name, workdir, main_cache):
    """One setting in its own process with an empty inductor cache; returns its result dict."""
    cache = tempfile.mkdtemp(prefix="inductor_", dir=workdir)
    out = os.path.join(workdir, f"child_{abs(hash(name))}.pt")
    logf = os.path.join(workdir, f"child_{abs(hash(name))}.log")
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, HF_HUB_OFFLINE="1",
               TRITON_CACHE_DIR=os.path.join(cache, "triton"))
    cmd = [sys.executable, os.path.abspath(__file__), *child_argv(args), "--child", name, "--child-out", out]
    t = time.time()
    with open(logf, "w") as f:
        try:
            rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.child_timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.time() - t
    if rc != 0 or not os.path.exists(out):
        tail = open(logf).read().splitlines()
        err = next((l for l in reversed(tail) if "Error" in l or "error" in l), tail[-1] if tail else "")
        return {"name": name, "error": f"cold run failed (rc {rc}): {err.strip()[:300]}", "wall_s": wall,
                "log_tail": tail[-30:]}
    result = torch.load(out, weights_only=False)
    result["wall_s"] = wall
    if main_cache:      # the timing process then finds these graphs already compiled
        shutil.copytree(cache, main_cache, dirs_exist_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    return result


def child_argv(args):
    out = ["--config", args.config, "--samples", str(args.samples), "--steps", str(args.steps),
           "--guidance", str(args.guidance), "--threads", str(args.threads)]
    if args.time_samples:
        out += ["--time-samples", str(args.time_samples)]
    if args.quick:
        out.append("--quick")
    if args.only:
        out += ["--only", args.only]
    if args.cold_recompile_limit:
        out += ["--cold-recompile-limit", str(args.cold_recompile_limit)]
    return out


# ----------------------------------------------------------------------------------------------

class Env:
    """The model, inputs and settings of a run (the same in the timing process and every child)."""

    def __init__(self, args):
        self.embedded = args.config != "1k"
        self.time_n = args.time_samples or (16 if self.embedded else 1)
        make_model, noise_of, self.description = model_setup(args.config)
        spec = hook_spec(make_model())
        calib = (noise_of(self.time_n, 1), torch.arange(self.time_n) % 10)     # MagCache calibration
        self.time_noise, self.time_labels = noise_of(self.time_n, 2), torch.arange(self.time_n) % 10
        # quality: generations of the timed batch size (no new shapes to compile; data-dependent peers
        # decide on the batch size that is timed), the last one filled up with extra noise, cut off after
        self.q_n = -(-args.samples // self.time_n) * self.time_n
        self.samples = args.samples
        self.q_noise, self.q_labels = noise_of(self.q_n, 0), torch.arange(self.q_n) % 10
        self.settings = settings(make_model, args.steps, calib, spec, args.config, args.quick, args.only)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=list(MODELS), default="embedded")
    p.add_argument("--samples", type=int, default=100, help="images for the quality metrics (embedded configs)")
    p.add_argument("--time-samples", type=int, default=None,
                   help="images per timed generation (default 16 embedded, 1 for 1k)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the 2-core machine is shared)")
    p.add_argument("--quick", action="store_true", help="one setting per peer kind (smoke test)")
    p.add_argument("--only", default="", help="comma-separated substrings: run only matching settings")
    p.add_argument("--child-timeout", type=int, default=3600, help="seconds per cold-process run")
    p.add_argument("--cold-recompile-limit", type=int, default=None,
                   help="Dynamo's recompile_limit in the cold runs (default: Dynamo's own, 8; the timing process "
                        "raises it to 256): to see what a peer that hits the default limit costs to compile fully")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/compiled_peers[...].json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.child:
        return child(args, args.child, args.child_out)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    json_path = args.out or os.path.join(
        RESULTS, f"compiled_peers{SUFFIX[args.config]}{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="compiled_peers_")
    main_cache = os.path.join(workdir, "inductor_main")
    os.makedirs(main_cache)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = main_cache     # read lazily by inductor: set before any compile
    env = Env(args)
    with contextlib.suppress(ImportError):
        import cache_dit  # noqa: F401 - so that cache_dit_quiet finds its loggers
        cache_dit_quiet()
    names = list(env.settings)
    print(f"{len(names)} settings: {', '.join(names)}", flush=True)

    # 1. every setting cold, in its own process
    cold = {}
    for i, name in enumerate(names):
        r = run_child(args, name, workdir, main_cache)
        cold[name] = r
        done = time.time() - t_start
        eta = done / (i + 1) * (len(names) - i - 1)
        status = r["error"] if "error" in r else (
            f"{r['compiled_as']}; compile {r['compile_s']:.1f} s, first image {r['ttfi_s']:.1f} s, "
            f"graphs {r['dynamo_first']['graphs']}, breaks {r['dynamo_first']['graph_breaks']}, "
            f"recompiles {r['dynamo_first']['recompiles']}+{r['dynamo_second']['recompiles']}")
        print(f"[cold {i + 1}/{len(names)}] {name}: {status} ({r['wall_s']:.0f} s; cold runs ~{eta / 60:.0f} min left)",
              flush=True)
    if "error" in cold["uncached"]:
        raise SystemExit(f"the uncached model failed: {cold['uncached']['error']}\n" +
                         "\n".join(cold["uncached"].get("log_tail", [])))

    # 2. timing: every setting built again in this process as its cold run ended up (compiled or eager)
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    log = NoLog()
    t1 = time.time()
    models = {}
    for name in names:
        if "error" in cold[name]:
            continue
        models[name] = env.settings[name](cold[name]["mode"] == "compiled")
    args_ = args

    def timed(name):
        model, reset, ctx, _ = models[name]

        def run():
            reset()
            with ctx():
                start = time.perf_counter()
                sample(model, env.time_noise, env.time_labels, steps=args_.steps, guidance=args_.guidance)
                return [time.perf_counter() - start]
        return run
    print(f"timing: {len(models)} settings, 2 warm-up rounds (the first compiles, mostly from the copied "
          f"caches; the second takes one-off work after a first generation), {args.rounds} rounds", flush=True)
    t_warm = time.time()
    interleaved({n: timed(n) for n in models}, 0, warmup=2)
    print(f"warm-up: {time.time() - t_warm:.0f} s", flush=True)
    s0 = dynamo_snapshot(log)
    try:
        from tqdm import tqdm
        progress = tqdm(total=args.rounds * len(models), desc="interleaved rounds", file=sys.stdout)
    except ImportError:
        progress = None
    rounds = interleaved({n: timed(n) for n in models}, args.rounds, warmup=0, progress=progress)
    if progress is not None:
        progress.close()
    timing_dynamo = dynamo_delta(s0, dynamo_snapshot(log))
    if timing_dynamo["recompiles"] or timing_dynamo["graphs"]:
        print(f"warning: Dynamo compiled during the timed rounds: {timing_dynamo}", flush=True)
    timing_s = time.time() - t1
    base_rounds = [r[0] for r in rounds["uncached"]]

    # 3. rows
    rows = build_rows(args, env, names, cold, rounds, base_rounds)
    if env.embedded:
        mark_pareto(rows)
    meta = {
        "config": args.config, "args": vars(args), "time_samples": env.time_n, "model": env.description,
        "compiled_as": "compiled (uncached = plain torch.compile, inductor; 'compiled as' per row)",
        "baseline": "torch.compile", "model_short": {"embedded": "embedded DiT", "embedded-mmdit": "embedded MMDiT",
                                                      "1k": "1024-token DiT"}[args.config],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({platform.processor() or 'cpu'}), "
                   f"torch {torch.__version__}, {args.threads} torch thread(s)",
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "runtime_s": round(time.time() - t_start), "cold_runs_s": round(t1 - t_start), "timing_s": round(timing_s),
        "dynamo_during_timed_rounds": timing_dynamo,
        "cache_dit_compile_configs": changes_for_json(cold),
        "versions": versions(),
    }
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    print()
    print(table(rows, env.embedded, meta, extra=EXTRA))
    notes = [f"* {r['method']}: {r['compile_error']}" for r in rows if r.get("compile_error")]
    if notes:
        print("\ncompiled form failed, run eagerly:\n" + "\n".join(notes))
    if env.embedded:
        plot(rows, os.path.splitext(json_path)[0] + "_pareto.png", meta)
    print(f"\nwrote {json_path} ({meta['runtime_s']} s: cold runs {meta['cold_runs_s']} s, timing {meta['timing_s']} s)")
    shutil.rmtree(workdir, ignore_errors=True)


def changes_for_json(cold):
    if not any(n.startswith("cache-dit") and "error" not in r for n, r in cold.items()):
        return None
    ind, dyn = cache_dit_config_changes()
    return {"inductor": {k: str(v) for k, v in ind.items()}, "dynamo": {k: str(v) for k, v in dyn.items()}}


def dyn_cell(r):
    d1, d2 = r.get("dynamo_first") or {}, r.get("dynamo_second") or {}
    if not d1:
        return "–"
    cell = f"{d1['graphs']} / {d1['graph_breaks']} / {d1['recompiles']}+{d2.get('recompiles', 0)}"
    if d1.get("recompile_limit_hit") or d2.get("recompile_limit_hit"):
        cell += " (recompile limit hit)"
    return cell


EXTRA = [
    ("compiled as", lambda r: r.get("compiled_as", "–")),
    ("compile s", lambda r: fmt(r.get("compile_s"), ".1f")),
    ("first image s (cold)", lambda r: fmt(r.get("ttfi_s"), ".1f")),
    ("steady s", lambda r: fmt(r.get("median_generation_s"), ".3f")),
    ("graphs / breaks / recompiles (1st gen + 2nd, 3rd)", dyn_cell),
]


def build_rows(args, env, names, cold, rounds, base_rounds):
    rows = []
    base = cold["uncached"]
    base_flops = base["flops"][1]
    classifier = load_classifier() if env.embedded else None
    ref = base["images"]
    for name in names:
        c = cold[name]
        if "error" in c:
            rows.append({"method": name, "family": family(name), "error": c["error"]})
            continue
        kind, value = c["flops"]
        flop_speedup = value if kind == "ratio" else (base_flops / value if value else float("nan"))
        times = [r[0] for r in rounds[name]]
        row = {"method": name, "family": family(name), "flop_speedup": flop_speedup,
               "measured_speedup": statistics.median(b / t for b, t in zip(base_rounds, times)),
               "median_generation_s": statistics.median(times), "round_s": times}
        row["efficiency"] = row["measured_speedup"] / flop_speedup
        for k in ("compiled_as", "mode", "compile_s", "ttfi_s", "ttfi_process_s", "build_s", "first_generation_s",
                  "second_generation_s", "third_generation_s", "dynamo_first", "dynamo_quality", "dynamo_second", "compile_error", "compile_error_dynamo",
                  "tokencache_report", "wall_s"):
            if k in c:
                row[k] = c[k]
        if env.embedded:
            from tokencache.profiling import metrics
            img = c["images"]
            row.update(psnr_db=metrics.psnr(ref, img), ssim=metrics.ssim(ref, img),
                       fd_clf_vs_uncached=0.0 if name == "uncached" else abs(metrics.fd_clf(classifier, ref, img)),
                       class_accuracy=metrics.class_accuracy(classifier, img, env.q_labels[:env.samples]))
            if name != "uncached" and torch.equal(img, ref):
                row["note"] = "no effect on this model: output identical to uncached"
            elif name != "uncached" and row["psnr_db"] > ROUNDING_PSNR_DB:
                row["note"] = "no effect on this model: output within rounding of uncached"
        else:
            row["rel_l2_random_weights"] = float((c["images"] - ref).norm() / ref.norm())
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
