"""The embedded model's cross-attention sibling: diffusers' `PixArtTransformer2DModel` conditioned
on per-class "caption" embeddings (4 tokens x 64 channels per class, fixed and seeded; the null
caption for classifier-free guidance is all zeros).

`CaptionPixArt` wraps it behind the same call as the DiT (hidden_states, timestep, class_labels),
so the sampler, the trainer and tokencache treat both models alike; the wrapped transformer's
blocks keep their paths (`pixart.transformer_blocks.N`), so the cross-attention regions are found.
"""
from __future__ import annotations

import torch

from .fashion_dit import NULL_LABEL, NUM_CLASSES, load_shipped

CONFIG = dict(num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=6,
              sample_size=32, patch_size=4, cross_attention_dim=128, caption_channels=64, norm_num_groups=1)
CAPTION_TOKENS, CAPTION_CHANNELS = 4, 64
WEIGHTS = "fashion_pixart.pt"


def class_captions(seed: int = 1234) -> torch.Tensor:
    """(classes + 1, 4, 64): one fixed random caption per class, zeros for the null label."""
    g = torch.Generator().manual_seed(seed)
    captions = torch.randn(NUM_CLASSES + 1, CAPTION_TOKENS, CAPTION_CHANNELS, generator=g)
    captions[NULL_LABEL] = 0
    return captions


class CaptionPixArt(torch.nn.Module):
    def __init__(self, config: dict | None = None):
        super().__init__()
        from diffusers import PixArtTransformer2DModel

        torch.manual_seed(0)
        self.pixart = PixArtTransformer2DModel(**(config or CONFIG))
        self.register_buffer("captions", class_captions())
        self.label_dropout = 0.1

    def forward(self, hidden_states, timestep, class_labels, return_dict: bool = False):
        if self.training and self.label_dropout > 0:
            drop = torch.rand(class_labels.shape, device=class_labels.device) < self.label_dropout
            class_labels = torch.where(drop, torch.full_like(class_labels, NULL_LABEL), class_labels)
        out = self.pixart(hidden_states, encoder_hidden_states=self.captions[class_labels], timestep=timestep,
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
        return out if not return_dict else out[0]


def build_model(config: dict | None = None) -> CaptionPixArt:
    return CaptionPixArt(config)


def load_pixart_model() -> CaptionPixArt:
    return load_shipped(WEIGHTS, build_model, CONFIG)
