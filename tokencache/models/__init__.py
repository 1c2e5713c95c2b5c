"""The models shipped with tokencache: the embedded Fashion-MNIST DiT and its two siblings (one per
attention style a user's model may have), all trained offline and loaded without a download.

`EMBEDDED` names them for the demo, `tokencache profile --model` and the benchmarks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Embedded:
    load: Callable[[], torch.nn.Module]
    description: str


def _dit():
    from .fashion_dit import load_default_model
    return load_default_model()


def _pixart():
    from .fashion_pixart import load_pixart_model
    return load_pixart_model()


def _mmdit():
    from .fashion_mmdit import load_mmdit_model
    return load_mmdit_model()


EMBEDDED = {
    "embedded": Embedded(_dit, "embedded Fashion-MNIST DiT (diffusers DiTTransformer2DModel, 64 tokens, adaLN)"),
    "embedded-pixart": Embedded(_pixart, "embedded Fashion-MNIST PixArt sibling (diffusers PixArtTransformer2DModel, "
                                         "64 tokens, cross-attention to 4 caption tokens)"),
    "embedded-mmdit": Embedded(_mmdit, "embedded Fashion-MNIST MMDiT sibling (diffusers SD3Transformer2DModel, "
                                       "64 image + 4 caption tokens in one joint attention)"),
}


def load_embedded(name: str) -> torch.nn.Module:
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; choose one of {', '.join(EMBEDDED)}")
    return EMBEDDED[name].load()
