"""What `tokencache profile` can run: built-in models and a user's `package.module:factory`.

A Target knows how to run one denoising generation step by step on any (plain or compiled)
version of its model, and how to turn the final latents into [0, 1] images for fidelity metrics.

A user factory is a zero-argument callable returning `(model, inputs)`: an nn.Module and the
keyword arguments of one forward call. The timestep argument (default name "timestep") is replaced
every step with descending values 1000 -> 0, and when the output has the shape of the latent
argument ("hidden_states" or the first tensor argument), an Euler step updates that latent.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch


class TargetError(ValueError):
    """The model or factory cannot be profiled; the message says why."""


@dataclass
class Target:
    name: str
    model: torch.nn.Module
    init: Callable[[], dict]                       # fresh generation state
    step: Callable[[Callable, dict, int, int], None]   # (model, state, step, steps) -> updates state
    images: Callable[[dict], torch.Tensor]         # final state -> (n, c, h, w) in [0, 1]


def _euler_target(name: str, model: torch.nn.Module, inputs: dict, latent_key: str, timestep_key: str,
                  to_images: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Target:
    batch = inputs[latent_key].shape[0]

    def init():
        return {"x": inputs[latent_key].clone()}

    def step(fn, state, i, steps):
        sigmas = torch.linspace(1.0, 0.0, steps + 1)
        kwargs = dict(inputs, **{latent_key: state["x"], timestep_key: (sigmas[i] * 1000).expand(batch).contiguous()})
        out = fn(**kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        if isinstance(out, torch.Tensor) and out.shape == state["x"].shape:
            state["x"] = state["x"] + (sigmas[i + 1] - sigmas[i]) * out
        state["out"] = out

    def images(state):
        x = state["x"] if isinstance(state.get("out"), torch.Tensor) and state["out"].shape == state["x"].shape else state["out"]
        return to_images(x) if to_images else _minmax(x)
    return Target(name, model, init, step, images)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Arbitrary latents to [0, 1] images with one fixed affine map (so two runs stay comparable)."""
    x = x.detach().float()
    x = x.reshape(x.shape[0], -1, *x.shape[-2:]) if x.dim() >= 3 else x.reshape(x.shape[0], 1, 1, -1)
    return ((x.clamp(-3, 3) + 3) / 6)


def embedded_target(samples: int = 8, guidance: float = 2.0, seed: int = 0, name: str = "embedded") -> Target:
    """A shipped Fashion-MNIST model (tokencache.models.EMBEDDED: the DiT, or its cross-attention or
    joint-attention sibling)."""
    from ..models import load_embedded
    from ..models.data import to_image_space
    from ..models.fashion_dit import NULL_LABEL
    from ..models.sampling import make_noise

    model = load_embedded(name)
    labels = torch.arange(samples) % 10
    noise = make_noise(samples, seed)

    def init():
        return {"x": noise.clone()}

    def step(fn, state, i, steps):
        sigmas = torch.linspace(1.0, 0.0, steps + 1)
        x = state["x"]
        t = (sigmas[i] * 1000).expand(2 * samples).contiguous()
        v = fn(hidden_states=torch.cat([x, x]), timestep=t,
               class_labels=torch.cat([labels, torch.full_like(labels, NULL_LABEL)]), return_dict=False)[0]
        cond, uncond = v.chunk(2)
        state["x"] = x + (sigmas[i + 1] - sigmas[i]) * (uncond + guidance * (cond - uncond))

    return Target(name, model, init, step,
                  lambda state: to_image_space(state["x"]))


def dit_s_target(batch: int = 2) -> Target:
    from ..models.reference_dit import ReferenceDiT

    torch.manual_seed(0)
    model = ReferenceDiT(image=32, patch=2, channels=4, hidden=384, depth=12, heads=6).eval()
    inputs = {"hidden_states": torch.randn(batch, 4, 32, 32, generator=torch.Generator().manual_seed(0)),
              "timestep": torch.zeros(batch), "class_labels": torch.arange(batch) % 10}
    return _euler_target("dit-s", model, inputs, "hidden_states", "timestep")


def pixart_1k_target(batch: int = 2) -> Target:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=4,
                                     num_layers=12, sample_size=64, patch_size=2, cross_attention_dim=384,
                                     caption_channels=256, norm_num_groups=1).eval()
    g = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(batch, 4, 64, 64, generator=g),
              "encoder_hidden_states": torch.randn(batch, 16, 256, generator=g), "timestep": torch.zeros(batch),
              "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}, "return_dict": False}
    return _euler_target("pixart-1k", model, inputs, "hidden_states", "timestep")


BUILT_IN = {"embedded": embedded_target, "embedded-pixart": lambda: embedded_target(name="embedded-pixart"),
            "embedded-mmdit": lambda: embedded_target(name="embedded-mmdit"),
            "dit-s": dit_s_target, "pixart-1k": pixart_1k_target}


def load_target(spec: str, timestep_key: str = "timestep") -> Target:
    """A built-in name or `package.module:factory`; TargetError with the reason otherwise."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]()
    if ":" not in spec:
        raise TargetError(f"unknown model {spec!r}; use one of {', '.join(BUILT_IN)} or package.module:factory")
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise TargetError(f"cannot load factory {spec!r}: {e}") from e
    try:
        made = factory()
    except Exception as e:
        raise TargetError(f"factory {spec!r} raised {type(e).__name__}: {e}") from e
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module) and isinstance(made[1], dict)):
        raise TargetError(f"factory {spec!r} must return (torch.nn.Module, dict of forward kwargs), "
                          f"got {type(made).__name__}")
    model, inputs = made
    tensors = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
    latent = "hidden_states" if "hidden_states" in inputs else (tensors[0] if tensors else None)
    if latent is None or timestep_key not in inputs:
        raise TargetError(f"factory {spec!r}: inputs need a latent tensor and a {timestep_key!r} entry, got {list(inputs)}")
    return _euler_target(spec, model.eval(), inputs, latent, timestep_key)
