"""Sharded tokens: the token axis split over the P processes of a `torch.distributed` group.

Each process runs the whole model on its own contiguous N/P tokens. Everything a diffusion
transformer does per token (feed-forwards, norms, the adaLN modulation, the queries of a
self-attention) stays local; a self-attention all-gathers its keys and values along the token axis,
so the local queries attend to all N tokens, and the tokens are gathered back once, before the final
layer. tokencache then caches each process's own tokens: its caches hold N/P rows, a token-wise step
recomputes round(ratio * N/P) of them, and the scores that pick them see the local tokens only.

    import torch.distributed as dist, tokencache
    from tokencache.distributed import shard_model
    dist.init_process_group("gloo")            # torchrun sets rank and world size; nccl on GPUs
    shard_model(model)                         # hooks + attention processors, in place
    compiled = tokencache.compile(model, policy="toca", attention="tokens", ...)

The gathers are functional collectives (`torch.distributed._functional_collectives`), which Dynamo
records as graph nodes (`_c10d_functional.all_gather_into_tensor` + `wait_tensor`) on the keys' and
values' path only; the query path, which tokencache's analysis follows, stays token-local. Every
process runs the same step schedule, so the collectives of its variants stay matched; a step that
reuses an attention whole runs no collective (dead-code elimination drops the keys and values).

Only diffusers models whose self-attention runs through `Attention` and whose tokens leave a
`pos_embed` module and enter a `norm_out` module (DiT, PixArt) are wired up by `shard_model`; the
tensor helpers (`shard_tokens`, `gather_tokens`) serve a model of one's own.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenShard:
    """Where this process sits in the group the tokens are split over."""
    group: object            # the ProcessGroup
    rank: int
    size: int

    @staticmethod
    def of(group=None) -> "TokenShard":
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("sharded tokens need torch.distributed initialised "
                               "(dist.init_process_group, e.g. under torchrun)")
        group = group if group is not None else dist.group.WORLD
        return TokenShard(group, dist.get_rank(group), dist.get_world_size(group))

    def local(self, tokens: int) -> int:
        """N/P, or a ValueError naming N and P when P does not divide N."""
        if tokens % self.size:
            raise ValueError(f"{tokens} tokens cannot be split over {self.size} processes: "
                             f"the process count must divide the token count")
        return tokens // self.size


def shard_tokens(x: torch.Tensor, shard: TokenShard, dim: int = 1) -> torch.Tensor:
    """This process's contiguous chunk of the token axis `dim`: rows [r*N/P, (r+1)*N/P)."""
    n = shard.local(x.shape[dim])
    return x.narrow(dim, shard.rank * n, n)


def gather_tokens(x: torch.Tensor, shard: TokenShard, dim: int = 1) -> torch.Tensor:
    """All processes' chunks joined along `dim` in rank order (the inverse of shard_tokens).
    A functional collective: Dynamo traces it into the graph, eager mode runs it at once."""
    if shard.size == 1:
        return x
    from torch.distributed import _functional_collectives as fc

    # all_gather_single: torch >= 2.12's name; all_gather_tensor (deprecated there) before it
    gather = getattr(fc, "all_gather_single", None) or fc.all_gather_tensor
    return gather(x.contiguous(), gather_dim=dim, group=shard.group)


class ShardedAttnProcessor:
    """diffusers `Attention` processor for sharded tokens: a self-attention computes queries,
    keys and values of the local tokens, all-gathers keys and values over the group, and attends
    with the local queries to all of them (AttnProcessor2_0's arithmetic otherwise). A
    cross-attention (keys and values from the text, not sharded) runs the original processor."""

    def __init__(self, shard: TokenShard, original):
        self.shard, self.original = shard, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if attention_mask is not None:
            raise NotImplementedError("sharded tokens: a self-attention mask would need sharding with the queries")
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError("sharded tokens: self-attention on (batch, tokens, channels) without "
                                      "spatial or group norm only")
        residual = hidden_states
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = gather_tokens(attn.to_k(hidden_states), self.shard)
        value = gather_tokens(attn.to_v(hidden_states), self.shard)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@dataclass
class ShardedModel:
    """What shard_model changed, to undo it (`remove()`). Holds the model weakly (the model holds
    this handle), so deleting the model frees it as tokencache's runtime expects."""
    model: weakref.ref
    shard: TokenShard
    handles: list = field(default_factory=list)
    processors: dict = field(default_factory=dict)    # attention module -> its original processor

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for attn, original in self.processors.items():
            attn.set_processor(original)
        self.handles, self.processors = [], {}
        model = self.model()
        if model is not None:
            model._tokencache_shard = None


def shard_model(model: torch.nn.Module, group=None, *, shard_after: str = "pos_embed",
                gather_before: str = "norm_out") -> ShardedModel:
    """Run `model` on this process's share of the tokens, in place (call before compiling):
    the output of module `shard_after` (the patch embedding, positional embedding included) is cut
    to the local N/P tokens, every diffusers `Attention` gets a ShardedAttnProcessor, and the
    input of module `gather_before` (the final norm) is gathered back to all N tokens, so the
    model's output is the whole image on every process. Returns a handle whose remove() undoes it."""
    from diffusers.models.attention_processor import Attention

    shard = TokenShard.of(group)
    if getattr(model, "_tokencache_shard", None) is not None:
        raise ValueError("the model's tokens are sharded already (call .remove() on the first handle)")
    modules = dict(model.named_modules())
    for name in (shard_after, gather_before):
        if name not in modules:
            raise ValueError(f"model {type(model).__name__} has no module {name!r} "
                             "(shard_after/gather_before name where tokens are split and joined)")
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    if not attentions:
        raise ValueError(f"model {type(model).__name__} has no diffusers Attention module to shard")
    handle = ShardedModel(weakref.ref(model), shard)

    def split(module, args, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 3:
            raise ValueError(f"{shard_after} returned {type(output).__name__} "
                             f"{tuple(getattr(output, 'shape', ()))}, not (batch, tokens, channels)")
        return shard_tokens(output, shard)

    def join(module, args, kwargs):
        if not args or not isinstance(args[0], torch.Tensor):
            raise ValueError(f"{gather_before} must take the tokens as its first positional argument")
        return (gather_tokens(args[0], shard), *args[1:]), kwargs

    handle.handles.append(modules[shard_after].register_forward_hook(split))
    handle.handles.append(modules[gather_before].register_forward_pre_hook(join, with_kwargs=True))
    for attn in attentions:
        handle.processors[attn] = attn.processor
        attn.set_processor(ShardedAttnProcessor(shard, attn.processor))
    model._tokencache_shard = handle
    return handle
