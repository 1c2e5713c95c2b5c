"""The `tokencache` command: demo (and, as they land, profile and export)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import POLICIES


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokencache", description="Token-wise feature caching for diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="uncached vs tokencache on the embedded trained DiT")
    demo.add_argument("--policy", choices=POLICIES, default="toca")
    demo.add_argument("--interval", type=_positive_int, default=3)
    demo.add_argument("--ratio", type=_ratio, default=0.25)
    demo.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (default 50; 20 with --quick)")
    demo.add_argument("--samples", type=_positive_int, default=None, help="images per run (default 20; 10 with --quick)")
    demo.add_argument("--rounds", type=_positive_int, default=None, help="timed interleaved rounds (default 3; 1 with --quick)")
    demo.add_argument("--inner", choices=["inductor", "eager"], default=None, help="default inductor; eager with --quick")
    demo.add_argument("--out", type=Path, default=Path("demo_out"))
    demo.add_argument("--quick", action="store_true", help="small and eager: under a minute on 2 CPU cores")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import format_table, run_demo
        from .models.data import DataMissing
        from .models.fashion_dit import WeightsError

        quick = args.quick
        try:
            result = run_demo(policy=args.policy, interval=args.interval, ratio=args.ratio,
                              steps=args.steps or (20 if quick else 50), samples=args.samples or (10 if quick else 20),
                              rounds=args.rounds or (1 if quick else 3), inner=args.inner or ("eager" if quick else "inductor"),
                              out=args.out)
        except (WeightsError, DataMissing) as e:
            print(f"tokencache demo: {e}", file=sys.stderr)
            return 2
        print(format_table(result))
        print("wrote " + ", ".join(result["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
