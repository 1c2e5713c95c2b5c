"""Token-wise caching on sharded tokens: every process runs the embedded DiT on its N/P tokens.

    torchrun --nproc-per-node 2 examples/sharded_generation.py [--policy toca] [--ratio 0.25] [--steps 20]

gloo on the CPU, nccl when CUDA is there (one GPU per process, `LOCAL_RANK`). Every process first
samples unsharded (the reference), then shards the model's tokens, compiles it with tokencache,
samples again and reports how far the sharded generation is from the unsharded one; rank 0 prints
what each rank cached. Only the CPU/gloo path has been run (2 processes).
"""
import argparse
import json
import os

import torch
import torch.distributed as dist

import tokencache
from tokencache.distributed import shard_model
from tokencache.models import load_embedded
from tokencache.models.sampling import make_noise, sample


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--policy", default="toca", choices=["none", "fora", "toca"])
    p.add_argument("--ratio", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--inner", default="eager", choices=["eager", "inductor"])
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))

    model = load_embedded("embedded").to(device)
    noise, labels = make_noise(args.samples).to(device), torch.arange(args.samples, device=device) % 10
    reference = sample(model, noise, labels, steps=args.steps)            # unsharded, every rank alike

    shard_model(model)                       # tokens split after pos_embed, gathered before norm_out
    options = dict(policy=args.policy, num_steps=args.steps, inner=args.inner)
    if args.policy == "toca":
        options.update(ratio=args.ratio, attention="tokens")
    compiled = tokencache.compile(model, **options)
    images = sample(compiled, noise, labels, steps=args.steps)

    rep = tokencache.report(compiled)
    mine = dict(rank=rank, tokens_per_region=sorted({r["tokens"] for r in rep["regions"]}),
                cache_bytes=rep["cache_bytes"], schedule="".join(v[0] for v in rep["schedule"]),
                flop_fraction=round(rep["flops_per_generation"] / rep["flops_uncached_generation"], 3),
                rel_err_vs_unsharded_uncached=float((images - reference).norm() / reference.norm()))
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        print(json.dumps(dict(options=options, world_size=dist.get_world_size(), ranks=everyone), indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
