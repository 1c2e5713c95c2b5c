"""`tokencache export`: the parser and the command, kept beside the exporters so that the top-level
cli.py only wires them in (`add_export_parser(sub)`, then `run_export(args)`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_args import add_cache_flags, cache_flags, positive_int
from ..config import POLICIES
from .onnx import EXPORTERS, OPSETS
from .tensorrt import PRECISIONS


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    exp = subparsers.add_parser("export", help="ONNX bundle (+ TensorRT engines) of every graph variant, with manifest")
    exp.add_argument("--model", default="embedded",
                     help="embedded (default), embedded-pixart, embedded-mmdit, dit-s, pixart-1k, or package.module:factory")
    exp.add_argument("--policy", choices=POLICIES, default="toca")
    exp.add_argument("--steps", type=positive_int, default=50, help="steps per generation of the schedule")
    exp.add_argument("--out", type=Path, default=Path("bundle"))
    exp.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                     help="torch.onnx exporter: dynamo (default) or the older TorchScript one as a fallback")
    exp.add_argument("--opset", type=int, choices=OPSETS, default=18)
    exp.add_argument("--check", action="store_true",
                     help="compare every variant's ONNX with PyTorch (polygraphy's onnxruntime runner)")
    exp.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (needs tensorrt and a GPU)")
    exp.add_argument("--precision", choices=PRECISIONS, default="fp16")
    exp.add_argument("--opt-level", type=int, choices=range(6), default=3, metavar="{0..5}",
                     help="TensorRT builder optimisation level")
    exp.add_argument("--timing-cache", type=Path, default=None,
                     help="TensorRT timing cache to read and update (default: <out>/timing.cache)")
    exp.add_argument("--triton", type=Path, default=None, metavar="DIR",
                     help="also write a Triton Inference Server model repository for the bundle into DIR")
    exp.add_argument("--triton-name", default="tokencache", help="the model's name in that repository")
    add_cache_flags(exp)
    return exp


def run_export(args) -> int:
    from . import export
    from .tensorrt import TensorRTUnavailable, build_engines, tensorrt_missing
    from ..profiling.targets import TargetError, load_target

    from ..cli_args import check_output_dir, check_output_file, one_line
    from .bundle import check_bundle_target

    try:                                        # output paths first: a bad one costs no work
        check_bundle_target(args.out)
        if args.triton:
            check_output_dir(args.triton, "--triton")
        if args.timing_cache:
            check_output_file(args.timing_cache, "--timing-cache")
    except ValueError as e:
        print(f"tokencache export: {one_line(e)}", file=sys.stderr)
        return 2
    reason = tensorrt_missing() if args.tensorrt else None
    if reason:                                  # fail before spending minutes on the export
        print(f"tokencache export --tensorrt: {reason}", file=sys.stderr)
        return 2
    try:
        target = load_target(args.model)
    except TargetError as e:
        print(f"tokencache export: {e}", file=sys.stderr)
        return 2
    import torch

    from .. import compile as tc_compile

    compiled = tc_compile(target.model, policy=args.policy, num_steps=args.steps, inner="eager", **cache_flags(args))
    with torch.no_grad():
        target.step(compiled, target.init(), 0, args.steps)      # one call captures the graphs
    out = export(compiled, args.out, exporter=args.exporter, opset=args.opset)
    print(f"wrote bundle {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    if args.check:
        from .check import check_bundle, format_errors

        print(format_errors(check_bundle(compiled, out)))
    if args.tensorrt:
        try:
            build_engines(out, precision=args.precision, timing_cache=args.timing_cache,
                          optimization_level=args.opt_level)
        except TensorRTUnavailable as e:
            print(f"tokencache export --tensorrt: {e}", file=sys.stderr)
            return 2
        print(f"built TensorRT engines ({args.precision}) into {out}")
    if args.triton:
        from .triton import write_triton_repository

        model_dir = write_triton_repository(out, args.triton, name=args.triton_name,
                                            runner="tensorrt" if args.tensorrt else "onnxruntime")
        print(f"wrote Triton model repository {args.triton} (model {model_dir.name}: config.pbtxt, 1/model.py, 1/bundle)")
    return 0
