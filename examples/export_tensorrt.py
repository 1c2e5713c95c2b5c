"""Export the embedded model's tokencache variants as an ONNX bundle, replay a whole generation with
onnxruntime, and — where TensorRT and an NVIDIA GPU exist — build engines and replay them too.

    python examples/export_tensorrt.py [--policy toca] [--steps 20] [--out bundle_demo]
"""
import argparse

import torch

import tokencache
from tokencache.exporters.tensorrt import build_engines, tensorrt_missing
from tokencache.models.fashion_dit import NULL_LABEL, load_default_model
from tokencache.models.sampling import make_noise, sample
from tokencache.runtime.bundle_runner import OnnxBundleRunner, bind_like


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--policy", default="toca")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="bundle_demo")
    args = p.parse_args()

    model = load_default_model()
    compiled = tokencache.compile(model, policy=args.policy, num_steps=args.steps, inner="eager")
    noise, labels = make_noise(4), torch.tensor([0, 3, 5, 9])
    expected = sample(compiled, noise, labels, steps=args.steps)            # also captures the graphs
    bundle = tokencache.export(compiled, args.out)
    print("bundle:", sorted(p.name for p in bundle.iterdir()))

    runner = OnnxBundleRunner(bundle)
    replayed = sample(bind_like(runner, model), noise, labels, steps=args.steps)
    err = ((replayed - expected).norm() / expected.norm()).item()
    print(f"onnxruntime replay of {args.steps} steps: relative error {err:.2e} vs the PyTorch runtime; "
          f"variant calls {dict(runner.session.calls)}")

    reason = tensorrt_missing()
    if reason:
        print(f"TensorRT skipped: {reason}")
        return
    from tokencache.runtime.tensorrt_runner import TensorRTBundleRunner
    build_engines(bundle, precision="fp16")
    trt = TensorRTBundleRunner(bundle)
    x = noise.clone()
    sigmas = torch.linspace(1, 0, args.steps + 1)
    for i in range(args.steps):
        t = (sigmas[i] * 1000).expand(8).contiguous()
        v = trt(hidden_states=torch.cat([x, x]), timestep=t,
                class_labels=torch.cat([labels, torch.full_like(labels, NULL_LABEL)]))[0].cpu()
        cond, uncond = v.chunk(2)
        x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + 2.0 * (cond - uncond))
    print(f"TensorRT replay: relative error {((x - expected).norm() / expected.norm()).item():.2e}")


if __name__ == "__main__":
    main()
