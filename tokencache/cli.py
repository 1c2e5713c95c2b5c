"""The `tokencache` command: demo (and, as they land, profile and export)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# UsageError stays importable from here, as before
from .cli_args import UsageError, add_cache_flags, cache_flags, check_output_dir, check_output_file, non_negative, one_line, positive_int  # noqa: F401
from .config import INNER_BACKENDS, POLICIES, CacheConfig
from .models import EMBEDDED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokencache", description="Token-wise feature caching for diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="uncached vs tokencache on the embedded trained DiT (or a sibling)")
    demo.add_argument("--model", choices=list(EMBEDDED), default="embedded",
                      help="the shipped model: the DiT (default), its cross-attention (PixArt) or joint-attention (MMDiT) sibling")
    demo.add_argument("--policy", choices=POLICIES, default="toca")
    demo.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default 50; 20 with --quick)")
    demo.add_argument("--samples", type=positive_int, default=None, help="images per run (default 20; 10 with --quick)")
    demo.add_argument("--rounds", type=positive_int, default=None, help="timed interleaved rounds (default 3; 1 with --quick)")
    demo.add_argument("--inner", choices=INNER_BACKENDS, default=None, help="default inductor; eager with --quick")
    demo.add_argument("--out", type=Path, default=Path("demo_out"))
    demo.add_argument("--quick", action="store_true", help="small and eager: under a minute on 2 CPU cores")
    add_cache_flags(demo)

    prof = sub.add_parser("profile", help="latency, FLOPs and fidelity: uncached vs tokencache, interleaved")
    prof.add_argument("--model", default="embedded",
                      help="embedded (default), embedded-pixart, embedded-mmdit, dit-s, pixart-1k, or package.module:factory returning (model, forward kwargs)")
    prof.add_argument("--policy", default="toca",
                      help=f"one or more comma-separated policies to compare ({', '.join(p for p in POLICIES if p != 'none')})")
    prof.add_argument("--steps", type=positive_int, default=None, help="steps per generation (default 20; 8 with --quick)")
    prof.add_argument("--rounds", type=positive_int, default=None, help="interleaved timed rounds (default 5; 2 with --quick)")
    prof.add_argument("--inner", choices=INNER_BACKENDS, default=None, help="default inductor; eager with --quick")
    prof.add_argument("--json", dest="json_path", default=None, help="write the full result as JSON here")
    prof.add_argument("--plot", default=None, help="write a PNG: step timeline by variant, speed vs fidelity")
    prof.add_argument("--trace", default=None, help="write a torch.profiler (chrome) trace of one cached generation")
    prof.add_argument("--quick", action="store_true", help="few steps, eager, 2 rounds")
    add_cache_flags(prof)

    serve = sub.add_parser("serve", help="serve a shipped model behind Ray Serve (the 'serve' extra)")
    serve.add_argument("--model", choices=list(EMBEDDED), default="embedded", help="the shipped model served (default embedded)")
    serve.add_argument("--replicas", type=positive_int, default=1, help="Serve replicas (default 1)")
    serve.add_argument("--num-cpus", type=non_negative, default=1.0, help="CPUs per replica (default 1)")
    serve.add_argument("--num-gpus", type=non_negative, default=0.0, help="GPUs per replica (default 0)")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    serve.add_argument("--port", type=positive_int, default=8000, help="HTTP port (default 8000)")
    serve.add_argument("--max-batch-size", type=positive_int, default=8, help="requests per batch")
    serve.add_argument("--batch-wait-ms", type=non_negative, default=50.0, help="how long a batch waits to fill (default 50)")
    serve.add_argument("--max-steps", type=positive_int, default=250, help="the most steps a request may ask for")
    serve.add_argument("--inner", choices=INNER_BACKENDS, default="inductor", help="inner backend (default inductor)")

    from .exporters.cli import add_export_parser
    add_export_parser(sub)
    return parser


def main(argv=None) -> int:
    """Exit codes: 0 done, 2 a user error (one line on stderr: bad option, path, model, bundle;
    tokencache or TensorRT unavailable for what was asked), 3 `profile`: the model cannot be cached."""
    args = build_parser().parse_args(argv)
    from .errors import TokenCacheError
    from .exporters.tensorrt import TensorRTUnavailable
    from .models.data import DataMissing
    from .models.fashion_dit import WeightsError

    try:
        return _run(args)
    except (ValueError, OSError, TokenCacheError, TensorRTUnavailable, DataMissing, WeightsError) as e:
        print(f"tokencache {args.command}: {one_line(e)}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "demo":
        from .demo import format_table, run_demo

        quick = args.quick
        check_output_dir(args.out, "--out")
        result = run_demo(policy=args.policy, steps=args.steps or (20 if quick else 50),
                          samples=args.samples or (10 if quick else 20), rounds=args.rounds or (1 if quick else 3),
                          inner=args.inner or ("eager" if quick else "inductor"), out=args.out, model=args.model,
                          options=cache_flags(args))
        print(format_table(result))
        print("wrote " + ", ".join(result["files"]))
    elif args.command == "profile":
        return _profile(args)
    elif args.command == "serve":
        return _serve(args)
    elif args.command == "export":
        from .exporters.cli import run_export
        return run_export(args)
    return 0


def _serve(args) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValueError("tokencache serve needs Ray Serve: pip install -e \".[serve]\"") from None
    from .serving import build_app

    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(args.model, replicas=args.replicas, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                        max_batch_size=args.max_batch_size, batch_wait_s=args.batch_wait_ms / 1000,
                        inner=args.inner, max_steps=args.max_steps), name="tokencache", route_prefix="/")
    print(f"serving {args.model} on http://{args.host}:{args.port}/ with {args.replicas} replica(s); Ctrl-C stops")
    try:
        import time
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def _profile(args) -> int:
    import json

    from tqdm import tqdm

    from .exporters.tensorrt import TensorRTUnavailable
    from .profiling.profile import CannotCache, format_table, run_profile
    from .profiling.targets import TargetError, load_target

    for flag, path in (("--json", args.json_path), ("--plot", args.plot), ("--trace", args.trace)):
        if path:
            check_output_file(path, flag)
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    bad = [p for p in policies if p not in POLICIES or p == "none"]
    if bad or not policies:
        print(f"tokencache profile: unknown policy {bad[0] if bad else args.policy!r}; allowed: "
              f"{', '.join(p for p in POLICIES if p != 'none')}", file=sys.stderr)
        return 2
    try:
        target = load_target(args.model)
    except TargetError as e:
        print(f"tokencache profile: {e}", file=sys.stderr)
        return 2
    steps, rounds = args.steps or (8 if args.quick else 20), args.rounds or (2 if args.quick else 5)
    inner = args.inner or ("eager" if args.quick else "inductor")
    extra = cache_flags(args)
    interval, ratio = extra.pop("interval", CacheConfig.interval), extra.pop("ratio", CacheConfig.ratio)
    settings = {f"{p} N={interval}" + (f" r={ratio}" if p in ("toca", "duca") else ""):
                {"policy": p, "interval": interval, "ratio": ratio, **extra} for p in policies}
    try:
        with tqdm(total=(1 + len(settings)) * (1 + rounds), desc="profiling (first pass compiles)") as bar:
            result = run_profile(target, settings, steps=steps, rounds=rounds, inner=inner, trace=args.trace, progress=bar)
    except CannotCache as e:
        print(f"tokencache profile: {e}", file=sys.stderr)
        return 3
    except TensorRTUnavailable as e:
        print(f"tokencache profile: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json_path}")
    if args.plot:
        from .profiling.plots import plot_profile
        print(f"wrote {plot_profile(result, args.plot)}")
    if args.trace:
        print(f"wrote {args.trace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
