"""Train the embedded DiT (rectified flow) on Fashion-MNIST. Resumable; fixed seed.

    python -m tokencache.models.train --minutes 38 --out runs/dit
    python -m tokencache.models.train --arch pixart --minutes 25 --out runs/pixart
    python -m tokencache.models.train --arch mmdit --minutes 40 --out runs/mmdit

Every few minutes a checkpoint (model, EMA, optimiser, step, RNG) goes to OUT/checkpoint.pt; a rerun
with the same OUT resumes from it. At the end the EMA weights are written in fp16 to
OUT/<weights file> with a JSON training log; `--install` copies both into the package.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .data import load, sha256_of_files
from . import fashion_dit, fashion_mmdit, fashion_pixart

ARCHS = {"dit": fashion_dit, "pixart": fashion_pixart, "mmdit": fashion_mmdit}


def flow_batch(x1: torch.Tensor, generator: torch.Generator):
    """Noisy inputs, timesteps (sigma*1000) and velocity targets for one batch."""
    noise = torch.randn(x1.shape, generator=generator)
    sigma = torch.sigmoid(torch.randn(x1.shape[0], generator=generator))      # logit-normal
    s = sigma[:, None, None, None]
    return (1 - s) * x1 + s * noise, sigma * 1000, noise - x1


def train(out: Path, minutes: float, max_steps: int | None = None, batch: int = 128, lr: float = 1e-3,
          ema_decay: float = 0.999, seed: int = 0, threads: int = 2, checkpoint_every_s: float = 180,
          data=None, progress: bool = True, arch: str = "dit") -> dict:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    spec = ARCHS[arch]
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = data if data is not None else load("train")
    model = spec.build_model().train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    state = {"step": 0, "seconds": 0.0, "losses": []}
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["model"]); ema.load_state_dict(ckpt["ema"]); opt.load_state_dict(ckpt["opt"])
        gen.set_state(ckpt["rng"]); state = ckpt["state"]
        if "torch_rng" in ckpt:   # the label dropout draws from the global RNG (build_model reseeds it)
            torch.set_rng_state(ckpt["torch_rng"])
        print(f"resumed at step {state['step']} ({state['seconds'] / 60:.1f} min)")

    def save():
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "rng": gen.get_state(), "torch_rng": torch.get_rng_state(), "state": state}, ckpt_path)

    budget = minutes * 60
    start, last_save = time.perf_counter() - state["seconds"], time.perf_counter()
    bar = tqdm(total=int(budget), initial=int(state["seconds"]), unit="s", disable=not progress, desc=f"training {arch}")
    while state["seconds"] < budget and (max_steps is None or state["step"] < max_steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        xt, t, target = flow_batch(images[idx], gen)
        # both models drop 10% of labels to the null class themselves in train mode
        pred = model(xt, timestep=t, class_labels=labels[idx], return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (state["step"] + 1) / 200)
        opt.step()
        decay = min(ema_decay, (1 + state["step"]) / (10 + state["step"]))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        state["step"] += 1
        state["losses"].append(round(loss.item(), 5))
        now = time.perf_counter()
        state["seconds"] = now - start
        bar.n = int(state["seconds"])
        bar.refresh() if state["step"] % 10 == 0 else None
        if state["step"] % 50 == 0:
            bar.set_postfix(step=state["step"], loss=f"{sum(state['losses'][-50:]) / 50:.4f}",
                            img_s=f"{state['step'] * batch / state['seconds']:.0f}")
        if now - last_save > checkpoint_every_s:
            save(); last_save = now
    bar.close()
    save()
    log = {"arch": arch, "config": spec.CONFIG, "steps": state["step"], "images_seen": state["step"] * batch, "batch": batch,
           "lr": lr, "ema_decay": ema_decay, "seed": seed, "wall_minutes": round(state["seconds"] / 60, 2),
           "final_loss_mean_500": sum(state["losses"][-500:]) / max(1, len(state["losses"][-500:])),
           "loss_every_100": [sum(state["losses"][i:i + 100]) / len(state["losses"][i:i + 100])
                              for i in range(0, len(state["losses"]), 100)],
           "data_sha256": sha256_of_files() if data is None else "custom data"}
    torch.save({"config": spec.CONFIG, "state_dict": {k: v.half() for k, v in ema.state_dict().items()}}, out / spec.WEIGHTS)
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    return log


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/dit"))
    p.add_argument("--minutes", type=float, default=38)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--arch", choices=list(ARCHS), default="dit")
    p.add_argument("--install", action="store_true", help="copy the weights and log into the package")
    args = p.parse_args(argv)
    log = train(args.out, args.minutes, args.max_steps, threads=args.threads, arch=args.arch)
    print(json.dumps({k: v for k, v in log.items() if k != "loss_every_100"}, indent=1))
    if args.install:
        dest, weights = Path(__file__).parent / "weights", ARCHS[args.arch].WEIGHTS
        shutil.copy(args.out / weights, dest / weights)
        shutil.copy(args.out / "training_log.json", dest / weights.replace(".pt", "_training_log.json"))
        print(f"installed into {dest}")


if __name__ == "__main__":
    main()
