"""The embedded default model: a class-conditional DiT on Fashion-MNIST, built from diffusers'
`DiTTransformer2DModel` config (so diffusers' caches and cache-dit run on the very same model).

Flow matching as in diffusers' FlowMatchEuler: x_sigma = (1 - sigma) * data + sigma * noise, the
model predicts v = noise - data, and receives timestep = sigma * 1000 as a float tensor (B,).
Sampling goes from sigma = 1 down to 0, so timesteps descend as in diffusers pipelines.
The class embedding has one extra row (diffusers' LabelEmbedding with dropout > 0): label
NULL_LABEL = 10 is the unconditional class for classifier-free guidance.
"""
from __future__ import annotations

import io
from importlib import resources

import torch

NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES
CONFIG = dict(num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=6,
              sample_size=32, patch_size=4, num_embeds_ada_norm=NUM_CLASSES, norm_num_groups=1)
WEIGHTS = "fashion_dit.pt"


class WeightsError(RuntimeError):
    pass


def build_model(config: dict | None = None) -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(**(config or CONFIG))


def load_state(name: str) -> dict:
    """A weights file shipped in tokencache/models/weights/, with a clear error when it is unusable."""
    ref = resources.files("tokencache.models") / "weights" / name
    try:
        data = ref.read_bytes()
    except FileNotFoundError as e:
        raise WeightsError(f"weights file {ref} is missing; reinstall tokencache or retrain with "
                           "`python -m tokencache.models.train`") from e
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"weights file {ref} is corrupted or not a tokencache checkpoint ({e})") from e


def load_shipped(name: str, build, default_config: dict) -> torch.nn.Module:
    """A shipped checkpoint (EMA weights stored fp16) in an fp32 model from `build(config)`, eval mode."""
    ckpt = load_state(name)
    model = build(ckpt.get("config", default_config))
    try:
        model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    except (KeyError, RuntimeError) as e:
        raise WeightsError(f"weights file {name} does not match the model: {e}") from e
    return model.eval()


def load_default_model() -> torch.nn.Module:
    """The embedded DiT with its shipped weights."""
    return load_shipped(WEIGHTS, build_model, CONFIG)
