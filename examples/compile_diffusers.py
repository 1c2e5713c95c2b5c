"""Compile a diffusers transformer with the tokencache backend inside a denoising loop with
classifier-free guidance, then print what tokencache did.

    python examples/compile_diffusers.py [--policy toca] [--steps 20]

A tiny PixArt-style transformer with random weights, built from its config (no download), so the
example runs offline in seconds; swap in `PixArtTransformer2DModel.from_pretrained(...)` for real use.
"""
import argparse
import json

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--policy", default="toca", choices=["none", "fora", "toca"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--inner", default="eager", choices=["eager", "inductor"])
    args = p.parse_args()

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, num_layers=4,
        sample_size=16, patch_size=2, cross_attention_dim=64, caption_channels=32, norm_num_groups=1).eval()

    # No `import tokencache` is needed for this line: the backend is an installed entry point.
    compiled = torch.compile(transformer, backend="tokencache", dynamic=False,
                             options={"policy": args.policy, "num_steps": args.steps, "interval": 3,
                                      "ratio": 0.25, "inner": args.inner})

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(args.steps)
    prompt, empty = torch.randn(1, 8, 32), torch.zeros(1, 8, 32)    # stand-ins for text embeddings
    text = torch.cat([prompt, empty])                               # [cond; uncond]: one doubled batch
    latents = torch.randn(1, 4, 16, 16)
    guidance = 4.5
    with torch.no_grad():
        for t in scheduler.timesteps:
            batch = torch.cat([latents, latents])
            noise_pred = compiled(batch, encoder_hidden_states=text, timestep=t.expand(2),
                                  added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                                  return_dict=False)[0]
            cond, uncond = noise_pred.chunk(2)
            latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample

    import tokencache
    report = tokencache.report(compiled)
    print(json.dumps({k: report[k] for k in ("policy", "fallback_reason", "timestep_input", "variants",
                                              "flops_per_generation", "flops_uncached_generation",
                                              "cache_bytes")}, indent=1))
    print("regions:", [(r["region"], r["kind"], r["computed_tokens"]) for r in report["regions"]])
    print("schedule:", " ".join(v[0].upper() for v in report["schedule"]))
    print(f"FLOP speed-up: {report['flops_uncached_generation'] / report['flops_per_generation']:.2f}x")


if __name__ == "__main__":
    main()
