"""Export the embedded model's tokencache variants as an ONNX bundle, replay a whole generation with
onnxruntime, and — where TensorRT and an NVIDIA GPU exist — build engines and replay them too.

    python examples/export_tensorrt.py [--policy toca] [--steps 20] [--out bundle_demo] [--precision fp16]
"""
import argparse

import torch

import tokencache
from tokencache.exporters.tensorrt import build_engines, tensorrt_missing
from tokencache.models.fashion_dit import load_default_model
from tokencache.models.sampling import make_noise, sample
from tokencache.runtime.bundle_runner import OnnxBundleRunner, bind_like


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--policy", default="toca")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="bundle_demo")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    args = p.parse_args()

    model = load_default_model()
    compiled = tokencache.compile(model, policy=args.policy, num_steps=args.steps, inner="eager")
    noise, labels = make_noise(4), torch.tensor([0, 3, 5, 9])
    expected = sample(compiled, noise, labels, steps=args.steps)            # also captures the graphs
    bundle = tokencache.export(compiled, args.out)
    print("bundle:", sorted(p.name for p in bundle.iterdir()))

    runner = OnnxBundleRunner(bundle)
    replayed = sample(bind_like(runner, model), noise, labels, steps=args.steps)
    print(f"onnxruntime ({runner.providers[0]}) replay of {args.steps} steps: relative error "
          f"{rel(replayed, expected):.2e} vs the PyTorch runtime; variant calls {dict(runner.session.calls)}")

    reason = tensorrt_missing()
    if reason:
        print(f"TensorRT skipped: {reason}")
        return
    from tokencache.runtime.tensorrt_runner import TensorRTBundleRunner
    build_engines(bundle, precision=args.precision)
    for graphs in (False, True):
        trt = TensorRTBundleRunner(bundle, cuda_graphs=graphs)
        got = sample(bind_like(trt, model), noise.cuda(), labels.cuda(), steps=args.steps).cpu()
        print(f"TensorRT {args.precision} replay (CUDA graphs {graphs}): relative error {rel(got, expected):.2e}")


if __name__ == "__main__":
    main()
