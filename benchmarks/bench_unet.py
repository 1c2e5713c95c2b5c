"""A diffusers U-Net (UNet2DConditionModel) at a tiny config, random weights: which policies cache
its transformer blocks (nested at down_blocks.N.attentions.M.transformer_blocks.K), the FLOP
fraction of a generation, and the exactness checks (none; toca at K=N; dato at prune 0, interval 1).

    python benchmarks/bench_unet.py

Random weights say nothing about quality: the relative error is only for the exactness checks.
"""
from __future__ import annotations

import warnings

import torch

import tokencache
from tokencache.models.zoo import tiny_unet

SETTINGS = {
    "none": dict(policy="none"),
    "toca r=0.25 N=3": dict(policy="toca"),
    "fora N=3": dict(policy="fora"),
    "dato N=3 p=0.4": dict(policy="dato"),
    "toca K=N (exact)": dict(policy="toca", ratio=1.0, attention="tokens"),
    "dato p=0 N=1 (exact)": dict(policy="dato", prune_ratio=0.0, interval=1),
}



def main():
    model = tiny_unet()
    x0, context = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 16)

    def run(m, steps=6):
        x = x0
        with torch.no_grad():
            for i in range(steps):
                x = x - 0.1 * m(x, torch.full((2,), 999.0 * (1 - i / steps)), encoder_hidden_states=context).sample
        return x

    expected = run(model)
    print("| setting | regions cached | FLOP fraction | relative error vs uncompiled | fallback |")
    print("|---|---|---|---|---|")
    for name, options in SETTINGS.items():
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="tokencache", dynamic=False,
                                 options={"num_steps": 6, "inner": "eager", "interval": 3, **options})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = run(compiled)
            report = tokencache.report(compiled)
        err = ((got - expected).norm() / expected.norm()).item()
        fraction = report["flops_per_generation"] / report["flops_uncached_generation"]
        print(f"| {name} | {len(report['regions'])} | {fraction:.2f} | {err:.1e} | {report['fallback_reason'] or '-'} |")


if __name__ == "__main__":
    main()
