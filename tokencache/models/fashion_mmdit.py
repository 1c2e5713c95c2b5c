"""The embedded model's joint-attention sibling: diffusers' `SD3Transformer2DModel` (an MMDiT: image
and caption tokens run through one joint attention per block, each stream with its own adaLN,
projections and feed-forward) conditioned on the same fixed per-class captions as the PixArt
sibling (4 tokens x 64 channels; the null caption is all zeros) plus a pooled caption vector.

`CaptionMMDiT` wraps it behind the same call as the DiT (hidden_states, timestep, class_labels), so
the sampler, the trainer and tokencache treat all three models alike; the wrapped transformer's
blocks keep their paths (`mmdit.transformer_blocks.N`).
"""
from __future__ import annotations

import torch

from .fashion_dit import NULL_LABEL, load_shipped
from .fashion_pixart import class_captions

CONFIG = dict(sample_size=32, patch_size=4, in_channels=1, out_channels=1, num_layers=6, attention_head_dim=32,
              num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=128,
              pooled_projection_dim=64, pos_embed_max_size=8)
WEIGHTS = "fashion_mmdit.pt"


class CaptionMMDiT(torch.nn.Module):
    def __init__(self, config: dict | None = None):
        super().__init__()
        from diffusers import SD3Transformer2DModel

        torch.manual_seed(0)
        self.mmdit = SD3Transformer2DModel(**(config or CONFIG))
        captions = class_captions()
        self.register_buffer("captions", captions)
        self.register_buffer("pooled", captions.mean(dim=1))     # zeros for the null label, as its caption
        self.label_dropout = 0.1

    def forward(self, hidden_states, timestep, class_labels, return_dict: bool = False):
        if self.training and self.label_dropout > 0:
            drop = torch.rand(class_labels.shape, device=class_labels.device) < self.label_dropout
            class_labels = torch.where(drop, torch.full_like(class_labels, NULL_LABEL), class_labels)
        out = self.mmdit(hidden_states, encoder_hidden_states=self.captions[class_labels],
                         pooled_projections=self.pooled[class_labels], timestep=timestep, return_dict=False)
        return out if not return_dict else out[0]


def build_model(config: dict | None = None) -> CaptionMMDiT:
    return CaptionMMDiT(config)


def load_mmdit_model() -> CaptionMMDiT:
    return load_shipped(WEIGHTS, build_model, CONFIG)
