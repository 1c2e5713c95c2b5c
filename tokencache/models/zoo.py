"""Tiny random-weight builds of the diffusers transformer classes, for coverage runs and family tests.

Each `ZooEntry` names one diffusers class with a small config (hidden size <= 64, one or two blocks of
each kind, 64-128 image tokens, at most 16 text tokens), seeded construction, and seeded inputs. The
entries are a table of configs plus a few helpers for inputs that follow from the latent grid (position
ids, RoPE tables): the point is to see how tokencache handles each *architecture*, not to run a model.

`entry.inputs(batch, sigma)` takes the noise level sigma in [0, 1] as a float tensor of shape (batch,)
and converts it to the timestep the class expects, as its diffusers pipeline does: most take
sigma * 1000, the flow models whose forward multiplies by 1000 itself (Flux and relatives, Qwen-Image,
AuraFlow, ...) take sigma, and a few (Lumina, Z-Image, Ideogram 4) take 1 - sigma, so their timestep
*rises* over a generation. `denoise()` runs an Euler-like loop with a descending sigma.

Everything here runs offline: models are built from config (`diffusers` random init), never loaded.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# ---------------------------------------------------------------------------------------------------
# Input specs: a value in `ZooEntry.extra` is either a plain value (deep-copied per call) or a callable
# (batch, generator) -> value. The generator is seeded per call, so inputs are the same every time.


def randn(*shape):
    """A float tensor (batch, *shape)."""
    return lambda b, g: torch.randn(b, *shape, generator=g)


def randn_nb(*shape):
    """A float tensor without a batch axis (e.g. shared conditioning tables)."""
    return lambda b, g: torch.randn(*shape, generator=g)


def ones(*shape, dtype=torch.float32):
    """Masks: everything valid."""
    return lambda b, g: torch.ones(b, *shape, dtype=dtype)


def zeros(*shape, dtype=torch.float32):
    return lambda b, g: torch.zeros(b, *shape, dtype=dtype)


def ints(high, *shape):
    """Integer labels / token ids (batch, *shape)."""
    return lambda b, g: torch.randint(0, high, (b, *shape), generator=g)


def full(value, *shape):
    return lambda b, g: torch.full((b, *shape), float(value))


def per_batch(value):
    """A Python list with one copy of `value` per sample (img_shapes and the like)."""
    return lambda b, g: [copy.deepcopy(value) for _ in range(b)]


def grid_ids(*sizes, lead=0, cols=None, batched=False, dtype=torch.float32):
    """Position ids of a (t, h, w)-style token grid, one row per token: Flux's img_ids and relatives.
    `lead` leading zero columns, then one column per size, padded with zero columns to `cols`."""
    axes = torch.cartesian_prod(*[torch.arange(s) for s in sizes]) if len(sizes) > 1 else torch.arange(sizes[0])[:, None]
    ids = torch.cat([torch.zeros(axes.shape[0], lead, dtype=axes.dtype), axes], 1)
    if cols is not None and ids.shape[1] < cols:
        ids = torch.cat([ids, torch.zeros(ids.shape[0], cols - ids.shape[1], dtype=ids.dtype)], 1)
    ids = ids.to(dtype)
    return (lambda b, g: ids.unsqueeze(0).expand(b, -1, -1).clone()) if batched else (lambda b, g: ids.clone())


def text_ids(length, cols, batched=False):
    """Text position ids: Flux uses zeros; Flux 2 counts along its last axis."""
    def make(b, g):
        ids = torch.zeros(length, cols)
        if cols == 4:
            ids[:, 3] = torch.arange(length)
        return ids.unsqueeze(0).expand(b, -1, -1).clone() if batched else ids
    return make


# Timestep conventions (see the module docstring). Each maps sigma (batch,) to the model's timestep.
def T1000(s):
    return s * 1000.0


def UNIT(s):
    return s.clone()


def FLIP(s):
    return 1.0 - s


# ---------------------------------------------------------------------------------------------------


def _first(result):
    """return_dict=False gives a tuple; its first item is the prediction (a list for Z-Image)."""
    out = result[0] if isinstance(result, (tuple, list)) else result
    return torch.stack(list(out)) if isinstance(out, (list, tuple)) else out


def first_channels(n, dim=1):
    """Learned-sigma models (DiT, HunyuanDiT) predict noise and variance: keep the noise half."""
    return lambda result: _first(result).narrow(dim, 0, n)


def _narrow_byt5_projection(model):
    """HunyuanVideo 1.5 builds its ByT5 text projection 2048 wide whatever the config says."""
    from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15ByT5TextProjection

    old = model.context_embedder_2
    model.context_embedder_2 = HunyuanVideo15ByT5TextProjection(old.linear_1.in_features, 32, old.linear_3.out_features)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    cls: str                                    # class name in diffusers
    config: dict
    latent: tuple                               # per-sample shape of the denoised input
    extra: dict = field(default_factory=dict)   # other forward kwargs (specs, see above)
    latent_key: str = "hidden_states"
    timestep_key: str | None = "timestep"       # None: the class takes no timestep
    t_map: Callable = T1000                     # sigma -> model timestep (a dict merges extra kwargs)
    pack: Callable | None = None                # latent tensor -> the value the model takes
    out: Callable = _first                      # model result -> prediction shaped like the latent
    after_build: Callable | None = None         # fix-ups the config cannot express
    return_dict: bool = True                    # forward() has a return_dict argument (passed False)
    notes: str = ""

    def build(self) -> torch.nn.Module:
        from diffusers.models import transformers

        torch.manual_seed(0)
        model = getattr(transformers, self.cls)(**self.config)
        if self.after_build is not None:
            self.after_build(model)
        return model.eval()

    def latent_noise(self, batch: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(batch, *self.latent, generator=torch.Generator().manual_seed(seed))

    def inputs(self, batch: int, sigma: torch.Tensor, seed: int = 0, latent: torch.Tensor | None = None) -> dict:
        """Forward kwargs for `batch` samples at noise level `sigma` (float tensor, shape (batch,))."""
        g = torch.Generator().manual_seed(1000 + seed)
        kw: dict[str, Any] = {k: (v(batch, g) if callable(v) else copy.deepcopy(v)) for k, v in self.extra.items()}
        x = self.latent_noise(batch, seed) if latent is None else latent
        kw[self.latent_key] = self.pack(x) if self.pack else x
        if self.timestep_key is not None:
            t = self.t_map(sigma)
            if isinstance(t, dict):
                kw.update(t)
            else:
                kw[self.timestep_key] = t
        if self.return_dict:
            kw["return_dict"] = False
        return kw

    def output(self, result) -> torch.Tensor:
        return self.out(result)


@torch.no_grad()
def denoise(model, entry: ZooEntry, steps: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed Euler-like loop, x <- x - 0.05 * prediction, with sigma descending 1 -> 1/steps as a
    tensor (as pipelines pass it; a Python float would recompile every step). Every call starts from
    the same seeded noise, so a cached run and an uncompiled run can be compared directly."""
    x = entry.latent_noise(batch, seed)
    for i in range(steps):
        sigma = torch.full((batch,), 1.0 - i / steps)
        x = x - 0.05 * entry.output(model(**entry.inputs(batch, sigma, seed, latent=x)))
    return x


# ---------------------------------------------------------------------------------------------------
# Helpers for inputs computed from the grid the way the pipelines do.


def _hunyuan_dit_rope(head_dim, h, w):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    cos, sin = get_2d_rotary_pos_embed(head_dim, ((0, 0), (h, w)), (h, w), output_type="pt")
    return lambda b, g: (cos.clone(), sin.clone())


def _lumina_next_rope(head_dim):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    table = get_2d_rotary_pos_embed_lumina(head_dim, 384, 384, linear_factor=1.0, ntk_factor=1.0)
    return lambda b, g: table.clone()


def _stable_audio_rope(rot_dim, length):
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    cos, sin = get_1d_rotary_pos_embed(rot_dim, length, use_real=True, repeat_interleave_real=False)
    return lambda b, g: (cos.clone(), sin.clone())


def _cogvideox_rope(head_dim, frames, h, w, patch_t):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cos, sin = get_3d_rotary_pos_embed(head_dim, ((0, 0), (h, w)), (h, w), temporal_size=frames // patch_t,
                                       grid_type="slice", max_size=(h, w))
    return lambda b, g: (cos.clone(), sin.clone())


def _omnigen_inputs(text, image_tokens):
    length = text + 1 + image_tokens      # text, the time token, the image tokens
    return {
        "input_ids": ints(100, text), "input_img_latents": [], "input_image_sizes": {},
        "attention_mask": ones(length, length),
        "position_ids": lambda b, g: torch.arange(length).expand(b, -1).clone(),
    }


def _ideogram4_inputs(text, h, w, llm_dim):
    from diffusers.models.transformers import transformer_ideogram4 as m

    seq = text + h * w

    def position_ids(b, g):
        ids = torch.zeros(b, seq, 3, dtype=torch.long)
        ids[:, :text] = torch.arange(text)[:, None]
        grid = torch.cartesian_prod(torch.arange(h), torch.arange(w))
        ids[:, text:, 0] = m.IMAGE_POSITION_OFFSET
        ids[:, text:, 1:] = grid + m.IMAGE_POSITION_OFFSET
        return ids

    def indicator(b, g):
        ind = torch.full((b, seq), m.OUTPUT_IMAGE_INDICATOR, dtype=torch.long)
        ind[:, :text] = m.LLM_TOKEN_INDICATOR
        return ind

    def llm(b, g):
        feats = torch.zeros(b, seq, llm_dim)
        feats[:, :text] = torch.randn(b, text, llm_dim, generator=g)
        return feats

    return {"encoder_hidden_states": llm, "position_ids": position_ids, "indicator": indicator,
            "segment_ids": lambda b, g: torch.ones(b, seq, dtype=torch.long)}


def _krea2_inputs(text, h, w, layers, dim):
    def position_ids(b, g):
        ids = torch.zeros(text + h * w, 3)
        ids[text:, 1:] = torch.cartesian_prod(torch.arange(h), torch.arange(w)).float()
        return ids
    return {"encoder_hidden_states": randn(text, layers, dim), "position_ids": position_ids,
            "encoder_attention_mask": ones(text, dtype=torch.bool)}


def _minimax_h3_inputs(text, audio, video):
    seq = text + audio + video
    t_idx, a_idx, v_idx = torch.arange(text), torch.arange(text, text + audio), torch.arange(text + audio, seq)
    tags = torch.zeros(seq, dtype=torch.long)
    tags[t_idx], tags[a_idx] = 1, 2
    ts_idx = torch.zeros(seq, dtype=torch.long)
    ts_idx[a_idx] = 1
    pos = torch.zeros(seq, 3)
    pos[:, 0] = torch.arange(seq)
    pos[v_idx, 1] = (torch.arange(video) // 8).float()
    pos[v_idx, 2] = (torch.arange(video) % 8).float()
    fixed = {"timestep_indices": ts_idx, "token_tags": tags, "position_ids": pos,
             "video_indices": v_idx, "audio_indices": a_idx, "text_indices": t_idx}
    return {k: (lambda b, g, v=v: v.clone()) for k, v in fixed.items()}


def _helios_inputs(c, f, h, w):
    return {"indices_hidden_states": ones(f), "indices_latents_history_short": ones(f - 1),
            "indices_latents_history_mid": ones(f - 1), "indices_latents_history_long": ones((f - 1) * 4),
            "latents_history_short": randn(c, f - 1, h, w), "latents_history_mid": randn(c, f - 1, h, w),
            "latents_history_long": randn(c, (f - 1) * 4, h, w)}


def _sana_wm_camera(frames, h, w):
    """(B, F, 20) camera track: a flat 4x4 camera-to-world matrix moving forward, then pinhole intrinsics."""
    def make(b, g):
        c2w = torch.eye(4).repeat(b, frames, 1, 1)
        c2w[..., 2, 3] = torch.arange(frames) * 0.1
        intrinsics = torch.tensor([float(w), float(h), w / 2, h / 2]).expand(b, frames, 4)
        return torch.cat([c2w.flatten(-2), intrinsics], dim=-1)
    return make


def _refiner_rope(config, frames, h, w):
    """The SANA-WM refiner takes its video RoPE as an input, built by a method of the model; RoPE has no
    weights, so a throwaway instance of the same config builds it (once)."""
    cache = {}

    def make(b, g):
        if b not in cache:
            from diffusers.models.transformers import SanaWMLTX2RefinerTransformer3DModel as cls

            cache[b] = cls(**config).build_rotary_emb_for_absolute_positions(
                batch_size=b, frame_positions=list(range(frames)), height=h, width=w, device="cpu", fps=24.0)
        return tuple(t.clone() for t in cache[b])
    return make


def _with_fixed(channels, dim=1, seed=7):
    """Models that take conditioning channels concatenated to the noisy latent: a fixed seeded block."""
    def pack(x):
        shape = list(x.shape)
        shape[dim] = channels
        return torch.cat([x, torch.randn(shape, generator=torch.Generator().manual_seed(seed))], dim=dim)
    return pack


def _with_anchor(x):
    """Kandinsky 6 SR takes the noisy latent, a (fixed, seeded) anchor latent and its mask as channels."""
    anchor = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    return torch.cat([x, anchor, torch.ones(*x.shape[:-1], 1)], dim=-1)


def _dual_condition_lengths(model):
    # DualTransformer2DModel splits its conditioning at fixed lengths (CLIP text 77 + image 257);
    # at a tiny config both conditions are 4 tokens.
    model.condition_lengths = [4, 4]


# ---------------------------------------------------------------------------------------------------
# The table. Common tiny sizes: 2 heads x 16 = hidden 32; a 16x16 latent with 2x2 patches = 64 tokens;
# video: 2 latent frames of 16x16 with (1, 2, 2) patches = 128 tokens; 8 text tokens.

H = dict(num_attention_heads=2, attention_head_dim=16)
TXT = 8
_FLUX_IDS = {"img_ids": grid_ids(8, 8, lead=1), "txt_ids": text_ids(TXT, 3)}
_FLUX2_IDS = {"img_ids": grid_ids(1, 8, 8, 1, batched=True), "txt_ids": text_ids(TXT, 4, batched=True)}
_WAN = dict(patch_size=(1, 2, 2), **H, in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64,
            num_layers=2, rope_max_seq_len=32)
_VIDEO = (4, 2, 16, 16)                      # (C, F, H, W)
_LTX2 = dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, **H, cross_attention_dim=32,
             audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=8,
             audio_cross_attention_dim=16, num_layers=2, caption_channels=16, rope_double_precision=False)
_IMAGE = (4, 16, 16)

_E = [
    # --- image DiTs with class / cross-attention conditioning -------------------------------------
    ZooEntry("DiT", "DiTTransformer2DModel",
             dict(**H, in_channels=4, num_layers=2, sample_size=16, patch_size=2, num_embeds_ada_norm=10,
                  norm_num_groups=1), _IMAGE, {"class_labels": ints(10)}),
    ZooEntry("PixArt", "PixArtTransformer2DModel",
             dict(**H, in_channels=4, out_channels=4, num_layers=2, sample_size=16, patch_size=2,
                  cross_attention_dim=32, caption_channels=24, norm_num_groups=1),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 24),
                      "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}),
    ZooEntry("Transformer2D", "Transformer2DModel",
             dict(**H, in_channels=32, norm_num_groups=8, cross_attention_dim=24, num_layers=1,
                  use_linear_projection=True),
             (32, 8, 8), {"encoder_hidden_states": randn(TXT, 24)}, timestep_key=None,
             notes="the U-Net transformer block (GroupNorm + proj_in); takes no timestep"),
    ZooEntry("DreamLite", "DreamLiteTransformer2DModel",
             dict(**H, in_channels=32, norm_num_groups=8, cross_attention_dim=24, num_layers=1),
             (32, 8, 8), {"encoder_hidden_states": randn(TXT, 24)}, timestep_key=None,
             notes="U-Net transformer block; takes no timestep"),
    ZooEntry("DualTransformer2D", "DualTransformer2DModel",
             dict(**H, in_channels=32, norm_num_groups=8, cross_attention_dim=24, num_layers=1),
             (32, 8, 8), {"encoder_hidden_states": randn(8, 24)}, after_build=_dual_condition_lengths,
             out=lambda r: _first(r), notes="Versatile Diffusion's pair of U-Net transformers"),
    ZooEntry("HunyuanDiT", "HunyuanDiT2DModel",
             dict(**H, sample_size=16, patch_size=2, in_channels=4, num_layers=2, cross_attention_dim=16,
                  cross_attention_dim_t5=16, pooled_projection_dim=8, hidden_size=32, text_len=TXT,
                  text_len_t5=TXT),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 16), "text_embedding_mask": ones(TXT),
                      "encoder_hidden_states_t5": randn(TXT, 16), "text_embedding_mask_t5": ones(TXT),
                      "image_meta_size": lambda b, g: torch.tensor([[128., 128., 128., 128., 0., 0.]] * b),
                      "style": lambda b, g: torch.zeros(b, dtype=torch.long),
                      "image_rotary_emb": _hunyuan_dit_rope(16, 8, 8)},
             out=first_channels(4)),
    ZooEntry("Sana", "SanaTransformer2DModel",
             dict(**H, in_channels=4, out_channels=4, num_layers=2, num_cross_attention_heads=2,
                  cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=16, sample_size=8),
             (4, 8, 8), {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("LuminaNextDiT", "LuminaNextDiT2DModel",
             dict(sample_size=16, patch_size=2, in_channels=4, hidden_size=32, num_layers=2, num_attention_heads=2,
                  num_kv_heads=2, multiple_of=16, learn_sigma=False, cross_attention_dim=16),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 16), "encoder_mask": ones(TXT),
                      "image_rotary_emb": _lumina_next_rope(16), "cross_attention_kwargs": {}}, t_map=FLIP),
    ZooEntry("Lumina2", "Lumina2Transformer2DModel",
             dict(sample_size=16, patch_size=2, in_channels=4, hidden_size=32, num_layers=2, num_refiner_layers=1,
                  num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 6, 6),
                  axes_lens=(64, 64, 64), cap_feat_dim=16),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 16), "encoder_attention_mask": ones(TXT, dtype=torch.bool)},
             t_map=FLIP),
    ZooEntry("OmniGen", "OmniGenTransformer2DModel",
             dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, num_layers=2,
                  pad_token_id=0, vocab_size=100, in_channels=4, time_step_dim=16,
                  rope_scaling={"long_factor": [1, 2, 3, 4, 5, 6, 7, 8], "short_factor": [1, 2, 3, 4, 5, 6, 7, 8]}),
             _IMAGE, _omnigen_inputs(TXT, 64), t_map=UNIT),
    ZooEntry("PRX", "PRXTransformer2DModel",
             dict(in_channels=16, patch_size=2, context_in_dim=32, hidden_size=32, mlp_ratio=2.0, num_heads=2,
                  depth=2, axes_dim=[8, 8]),
             (16, 16, 16), {"encoder_hidden_states": randn(TXT, 32)}, t_map=UNIT),
    ZooEntry("ErnieImage", "ErnieImageTransformer2DModel",
             dict(hidden_size=32, num_attention_heads=2, num_layers=2, ffn_hidden_size=64, in_channels=16,
                  out_channels=16, patch_size=1, text_in_dim=16, rope_axes_dim=(8, 4, 4)),
             (16, 8, 8), {"text_bth": randn(TXT, 16), "text_lens": lambda b, g: torch.full((b,), TXT)}),
    ZooEntry("GlmImage", "GlmImageTransformer2DModel",
             dict(patch_size=2, in_channels=4, out_channels=4, num_layers=2, **H, text_embed_dim=32,
                  time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=64),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 32), "prior_token_id": ints(64, 64),
                      "prior_token_drop": lambda b, g: torch.zeros(b, dtype=torch.bool),
                      "target_size": lambda b, g: torch.tensor([[16., 16.]] * b),
                      "crop_coords": lambda b, g: torch.zeros(b, 2)}),
    ZooEntry("CogView3Plus", "CogView3PlusTransformer2DModel",
             dict(patch_size=2, in_channels=4, num_layers=2, **H, out_channels=4, text_embed_dim=16,
                  time_embed_dim=16, condition_dim=4, pos_embed_max_size=16, sample_size=16),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 16),
                      "original_size": lambda b, g: torch.tensor([[128., 128.]] * b),
                      "target_size": lambda b, g: torch.tensor([[128., 128.]] * b),
                      "crop_coords": lambda b, g: torch.zeros(b, 2)}),
    ZooEntry("CogView4", "CogView4Transformer2DModel",
             dict(patch_size=2, in_channels=4, out_channels=4, num_layers=2, **H, text_embed_dim=16,
                  time_embed_dim=16, condition_dim=4),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 16),
                      "original_size": lambda b, g: torch.tensor([[128., 128.]] * b),
                      "target_size": lambda b, g: torch.tensor([[128., 128.]] * b),
                      "crop_coords": lambda b, g: torch.zeros(b, 2)}),
    ZooEntry("PriorTransformer", "PriorTransformer",
             dict(**H, num_layers=2, embedding_dim=32, num_embeddings=TXT, additional_embeddings=4),
             (32,), {"proj_embedding": randn(32), "encoder_hidden_states": randn(TXT, 32)},
             notes="unCLIP prior: denoises one image embedding, not an image (12 tokens)"),
    # --- MMDiTs: joint attention over image and text streams --------------------------------------
    ZooEntry("SD3", "SD3Transformer2DModel",
             dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, **H, caption_projection_dim=32,
                  joint_attention_dim=32, pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 32), "pooled_projections": randn(32)}),
    ZooEntry("SD3.5", "SD3Transformer2DModel",
             dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, **H, caption_projection_dim=32,
                  joint_attention_dim=32, pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16,
                  dual_attention_layers=(0,), qk_norm="rms_norm"),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 32), "pooled_projections": randn(32)},
             notes="SD3.5: block 0 has the extra image-only attention (attn2)"),
    ZooEntry("AuraFlow", "AuraFlowTransformer2DModel",
             dict(sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1, **H,
                  caption_projection_dim=32, joint_attention_dim=32, out_channels=4, pos_embed_max_size=64),
             _IMAGE, {"encoder_hidden_states": randn(TXT, 32)}, t_map=UNIT),
    ZooEntry("Flux", "FluxTransformer2DModel",
             dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, **H, joint_attention_dim=32,
                  pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)),
             (64, 16), {"encoder_hidden_states": randn(TXT, 32), "pooled_projections": randn(32), **_FLUX_IDS},
             t_map=UNIT),
    ZooEntry("Flux2", "Flux2Transformer2DModel",
             dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, **H, joint_attention_dim=32,
                  timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4)),
             (64, 16), {"encoder_hidden_states": randn(TXT, 32), "guidance": full(3.5), **_FLUX2_IDS},
             t_map=UNIT),
    ZooEntry("Flux3", "Flux3Transformer2DModel",
             dict(in_channels=16, cond_in_channels=16, num_layers=1, num_single_layers=1, **H,
                  joint_attention_dim=32, timestep_channels=32, axes_dims_rope=(4, 4, 4, 4)),
             (64, 16), {"encoder_hidden_states": randn(TXT, 32), "img_ids": grid_ids(1, 8, 8, 1),
                        "txt_ids": text_ids(TXT, 4)}, t_map=UNIT),
    ZooEntry("Chroma", "ChromaTransformer2DModel",
             dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, **H, joint_attention_dim=32,
                  axes_dims_rope=(4, 4, 8), approximator_num_channels=8, approximator_hidden_dim=16,
                  approximator_layers=1),
             (64, 16), {"encoder_hidden_states": randn(TXT, 32), **_FLUX_IDS}, t_map=UNIT),
    ZooEntry("Bria", "BriaTransformer2DModel",
             dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, **H, joint_attention_dim=32,
                  axes_dims_rope=(0, 8, 8)),
             (64, 16), {"encoder_hidden_states": randn(TXT, 32), **_FLUX_IDS}),
    ZooEntry("BriaFibo", "BriaFiboTransformer2DModel",
             dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, **H, joint_attention_dim=32,
                  text_encoder_dim=16, axes_dims_rope=(0, 8, 8)),
             (64, 16), {"encoder_hidden_states": randn(TXT, 32), **_FLUX_IDS,
                        "text_encoder_layers": lambda b, g: [torch.randn(b, TXT, 16, generator=g) for _ in range(2)]}),
    ZooEntry("BriaFibo2", "BriaFibo2Transformer2DModel",
             dict(in_channels=4, patch_size=2, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, cap_feat_dim=16,
                  injection_layer_ids=(1,), perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=8,
                  gist_step=4, gist_min_text_len=4, gist_max_text_len=16, axes_dims=(4, 6, 6),
                  axes_lens=(64, 64, 64)),
             _IMAGE, {"encoder_hidden_states": randn(2, TXT, 16)}, t_map=UNIT),
    ZooEntry("LongCatImage", "LongCatImageTransformer2DModel",
             dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, **H, joint_attention_dim=32,
                  pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)),
             (64, 16), {"encoder_hidden_states": randn(TXT, 32), **_FLUX_IDS}, t_map=UNIT),
    ZooEntry("OvisImage", "OvisImageTransformer2DModel",
             dict(patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, **H,
                  joint_attention_dim=32, axes_dims_rope=(4, 4, 8)),
             (64, 16), {"encoder_hidden_states": randn(TXT, 32), **_FLUX_IDS}, t_map=UNIT),
    ZooEntry("QwenImage", "QwenImageTransformer2DModel",
             dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, **H, joint_attention_dim=16,
                  axes_dims_rope=(8, 4, 4)),
             (64, 16), {"encoder_hidden_states": randn(TXT, 16),
                        "encoder_hidden_states_mask": ones(TXT, dtype=torch.long),
                        "img_shapes": per_batch([(1, 8, 8)])}, t_map=UNIT),
    ZooEntry("QwenImage21", "QwenImage21Transformer2DModel",
             dict(patch_size=1, in_channels=16, out_channels=16, num_layers=2, **H, context_in_dim=16, mlp_ratio=2,
                  axes_dims_rope=(8, 4, 4)),
             (64, 16), {"encoder_hidden_states": randn(TXT, 16), "img_shapes": per_batch([(1, 8, 8)]),
                        "img_mask": lambda b, g: torch.arange(TXT + 16).ge(TXT).expand(b, -1).clone()},
             t_map=UNIT, out=lambda r: _first(r)[:, -64:], notes="the 16 image slots of the VLM sequence each stand for 2x2 latent tokens"),
    ZooEntry("NucleusMoEImage", "NucleusMoEImageTransformer2DModel",
             dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, **H, joint_attention_dim=16,
                  axes_dims_rope=(8, 4, 4), moe_enabled=False, capacity_factors=[8.0, 8.0]),
             (64, 16), {"encoder_hidden_states": randn(TXT, 16),
                        "encoder_hidden_states_mask": ones(TXT, dtype=torch.long),
                        "img_shapes": per_batch((1, 8, 8))}),
    ZooEntry("HiDream", "HiDreamImageTransformer2DModel",
             dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, **H,
                  caption_channels=[16, 8], text_emb_dim=16, num_routed_experts=2, num_activated_experts=2,
                  axes_dims_rope=(8, 4, 4), max_resolution=(16, 16), llama_layers=(0, 1),
                  force_inference_output=True),
             _IMAGE, {"encoder_hidden_states_t5": randn(TXT, 16),
                      "encoder_hidden_states_llama3": lambda b, g: torch.randn(2, b, TXT, 8, generator=g),
                      "pooled_embeds": randn(16)}, timestep_key="timesteps"),
    ZooEntry("HunyuanImage", "HunyuanImageTransformer2DModel",
             dict(in_channels=16, out_channels=16, **H, num_layers=1, num_single_layers=1, num_refiner_layers=1,
                  mlp_ratio=2.0, patch_size=(1, 1), text_embed_dim=16, rope_axes_dim=(8, 8)),
             (16, 8, 8), {"encoder_hidden_states": randn(TXT, 16), "encoder_attention_mask": ones(TXT)}),
    ZooEntry("ZImage", "ZImageTransformer2DModel",
             dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1,
                  n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[8, 4, 4], axes_lens=[64, 32, 32]),
             (16, 1, 16, 16), {"cap_feats": lambda b, g: [torch.randn(TXT, 16, generator=g) for _ in range(b)]},
             latent_key="x", timestep_key="t", t_map=FLIP, pack=lambda x: list(x.unbind(0))),
    ZooEntry("Krea2", "Krea2Transformer2DModel",
             dict(in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64, timestep_embed_dim=16, text_hidden_dim=16, num_text_layers=3,
                  text_num_attention_heads=2, text_num_key_value_heads=1, text_intermediate_size=32,
                  num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(8, 4, 4)),
             (64, 16), _krea2_inputs(TXT, 8, 8, 3, 16), t_map=UNIT),
    ZooEntry("Ideogram4", "Ideogram4Transformer2DModel",
             dict(in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2, intermediate_size=64,
                  adaln_dim=16, llm_features_dim=24, rope_theta=10_000, mrope_section=(4, 2, 2)),
             (TXT + 64, 16), _ideogram4_inputs(TXT, 8, 8, 24), t_map=FLIP,
             notes="text and image rows share hidden_states; the loop also updates the (ignored) text rows"),
    # --- video DiTs --------------------------------------------------------------------------------
    ZooEntry("Latte", "LatteTransformer3DModel",
             dict(**H, in_channels=4, out_channels=4, num_layers=1, sample_size=16, patch_size=2, caption_channels=16,
                  cross_attention_dim=32, norm_type="ada_norm_single", num_embeds_ada_norm=1000, video_length=2),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("Allegro", "AllegroTransformer3DModel",
             dict(**H, in_channels=4, out_channels=4, num_layers=2, cross_attention_dim=32, sample_width=16,
                  sample_height=16, sample_frames=2, caption_channels=16),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("CogVideoX", "CogVideoXTransformer3DModel",
             dict(**H, in_channels=4, out_channels=4, time_embed_dim=16, text_embed_dim=16, num_layers=2,
                  sample_width=16, sample_height=16, sample_frames=5, patch_size=2, max_text_seq_length=TXT),
             (2, 4, 16, 16), {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("CogVideoX1.5", "CogVideoXTransformer3DModel",
             dict(**H, in_channels=4, out_channels=4, time_embed_dim=16, text_embed_dim=16, num_layers=2,
                  sample_width=16, sample_height=16, sample_frames=9, patch_size=2, patch_size_t=2,
                  max_text_seq_length=TXT, use_rotary_positional_embeddings=True),
             (4, 4, 16, 16), {"encoder_hidden_states": randn(TXT, 16),
                              "image_rotary_emb": _cogvideox_rope(16, 4, 8, 8, 2)},
             notes="1.5: temporal patches of 2 frames and 3D RoPE"),
    ZooEntry("ConsisID", "ConsisIDTransformer3DModel",
             dict(num_attention_heads=3, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
                  text_embed_dim=16, num_layers=2, sample_width=16, sample_height=16, sample_frames=5, patch_size=2,
                  max_text_seq_length=TXT, cross_attn_interval=1, is_train_face=True, cross_attn_dim_head=8, cross_attn_num_heads=2,
                  LFE_id_dim=4, LFE_vit_dim=4, LFE_depth=1, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=1,
                  LFE_num_querie=2, LFE_output_dim=32, LFE_ff_mult=1, LFE_num_scale=1),
             (2, 4, 16, 16), {"encoder_hidden_states": randn(TXT, 16), "id_cond": randn(4),
                              "id_vit_hidden": lambda b, g: [torch.randn(b, 2, 4, generator=g)]}),
    ZooEntry("EasyAnimate", "EasyAnimateTransformer3DModel",
             dict(**H, in_channels=4, out_channels=4, mmdit_layers=2, num_layers=2, patch_size=2,
                  text_embed_dim=16, time_embed_dim=16),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("Mochi", "MochiTransformer3DModel",
             dict(patch_size=2, **H, num_layers=2, pooled_projection_dim=16, in_channels=4, text_embed_dim=16,
                  time_embed_dim=16, max_sequence_length=TXT),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16), "encoder_attention_mask": ones(TXT, dtype=torch.bool)}),
    ZooEntry("HunyuanVideo", "HunyuanVideoTransformer3DModel",
             dict(in_channels=4, out_channels=4, **H, num_layers=1, num_single_layers=1, num_refiner_layers=1,
                  mlp_ratio=2.0, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
                  rope_axes_dim=(4, 6, 6)),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16), "encoder_attention_mask": ones(TXT),
                      "pooled_projections": randn(8), "guidance": full(3500.0)}),
    ZooEntry("HunyuanVideoFramepack", "HunyuanVideoFramepackTransformer3DModel",
             dict(in_channels=4, out_channels=4, **H, num_layers=1, num_single_layers=1, num_refiner_layers=1,
                  mlp_ratio=2.0, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
                  rope_axes_dim=(4, 6, 6), has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16), "encoder_attention_mask": ones(TXT),
                      "pooled_projections": randn(8), "guidance": full(3500.0), "image_embeds": randn(TXT, 16),
                          "indices_latents": torch.arange(2), "latents_clean": randn(4, 1, 16, 16),
                      "indices_latents_clean": torch.arange(1), "latents_history_2x": randn(4, 1, 16, 16),
                      "indices_latents_history_2x": torch.arange(1), "latents_history_4x": randn(4, 4, 16, 16),
                      "indices_latents_history_4x": torch.arange(4)},
             notes="clean and 2x/4x-downsampled history latents add context tokens"),
    ZooEntry("HunyuanVideo15", "HunyuanVideo15Transformer3DModel",
             dict(in_channels=4, out_channels=4, **H, num_layers=2, num_refiner_layers=1, mlp_ratio=2.0,
                  patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12,
                  rope_axes_dim=(4, 6, 6), target_size=16, task_type="t2v"),
             (4, 2, 8, 8), {"encoder_hidden_states": randn(TXT, 16), "encoder_attention_mask": ones(TXT),
                            "encoder_hidden_states_2": randn(4, 8), "encoder_attention_mask_2": ones(4),
                            "image_embeds": zeros(3, 12)}, after_build=_narrow_byt5_projection,
             notes="the ByT5 text projection's hidden width (2048 in diffusers' code, not in the config) is "
                   "narrowed to 32: at 2048 it held 86 % of this tiny model's FLOPs"),
    ZooEntry("MotifVideo", "MotifVideoTransformer3DModel",
             dict(in_channels=4, out_channels=4, **H, num_layers=1, num_single_layers=1, mlp_ratio=2.0,
                  patch_size=2, patch_size_t=1, text_embed_dim=16, rope_axes_dim=(4, 6, 6)),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("Wan", "WanTransformer3DModel", dict(_WAN), _VIDEO, {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("WanVACE", "WanVACETransformer3DModel", dict(_WAN, vace_layers=[0], vace_in_channels=12),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16), "control_hidden_states": randn(12, 2, 16, 16)}),
    ZooEntry("SkyReelsV2", "SkyReelsV2Transformer3DModel", dict(_WAN), _VIDEO,
             {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("ChronoEdit", "ChronoEditTransformer3DModel", dict(_WAN), _VIDEO,
             {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("Helios", "HeliosTransformer3DModel",
             dict(patch_size=(1, 2, 2), **H, in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64,
                  num_layers=2, rope_dim=(4, 6, 6)),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16), **_helios_inputs(4, 2, 16, 16)}),
    ZooEntry("AnyFlow", "AnyFlowTransformer3DModel",
             dict(patch_size=(1, 2, 2), **H, in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64,
                  num_layers=2, rope_max_seq_len=32),
             (2, 4, 16, 16), {"encoder_hidden_states": randn(TXT, 16)},
             t_map=lambda s: {"timestep": (s * 1000)[:, None].expand(-1, 2).clone(),
                              "r_timestep": (s * 500)[:, None].expand(-1, 2).clone()},
             notes="per-frame timesteps (batch, frames)"),
    ZooEntry("AnyFlowFAR", "AnyFlowFARTransformer3DModel",
             dict(patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=3, **H, in_channels=4,
                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=32),
             (4, 4, 8, 8), {"encoder_hidden_states": randn(TXT, 16), "chunk_partition": [2, 2]},
             t_map=lambda s: {"timestep": (s * 1000)[:, None].expand(-1, 4).clone(),
                              "r_timestep": (s * 500)[:, None].expand(-1, 4).clone()},
             notes="frame-autoregressive: two chunks of 2 frames, block-causal flex attention"),
    ZooEntry("WanAnimate", "WanAnimateTransformer3DModel",
             dict(patch_size=(1, 2, 2), **H, in_channels=12, latent_channels=4, out_channels=4, text_dim=16,
                  freq_dim=32, ffn_dim=64, num_layers=2, image_dim=16, rope_max_seq_len=32,
                  motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16,
                  motion_style_dim=8, motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16,
                  face_encoder_num_heads=2, inject_face_latents_blocks=2),
             (4, 5, 8, 8), {"encoder_hidden_states": randn(TXT, 16), "encoder_hidden_states_image": randn(4, 16),
                            "pose_hidden_states": randn(4, 4, 8, 8), "face_pixel_values": randn(3, 13, 16, 16)},
             pack=_with_fixed(8), notes="reference frame + 4 frames (80 tokens); pose and face conditioning"),
    ZooEntry("Cosmos", "CosmosTransformer3DModel",
             dict(in_channels=4, out_channels=4, **H, num_layers=2, mlp_ratio=2, text_embed_dim=16,
                  adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), concat_padding_mask=False),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16), "attention_mask": ones(TXT), "fps": 30},
             notes="concat_padding_mask=False: the padding-mask resize needs torchvision"),
    ZooEntry("LTX", "LTXVideoTransformer3DModel",
             dict(in_channels=4, out_channels=4, **H, cross_attention_dim=32, num_layers=2, caption_channels=16),
             (128, 4), {"encoder_hidden_states": randn(TXT, 16), "encoder_attention_mask": ones(TXT, dtype=torch.bool),
                        "num_frames": 2, "height": 8, "width": 8}),
    ZooEntry("LTX2", "LTX2VideoTransformer3DModel", dict(_LTX2),
             (128, 4), {"audio_hidden_states": randn(9, 4), "encoder_hidden_states": randn(TXT, 16),
                        "audio_encoder_hidden_states": randn(TXT, 16),
                        "encoder_attention_mask": ones(TXT, dtype=torch.bool), "num_frames": 2, "height": 8,
                        "width": 8, "audio_num_frames": 9, "fps": 25.0},
             notes="video + audio streams; the loop denoises the video stream"),
    ZooEntry("SanaWMRefiner", "SanaWMLTX2RefinerTransformer3DModel", dict(_LTX2),
             (128, 4), {"encoder_hidden_states": randn(TXT, 16), "encoder_attention_mask": ones(TXT, dtype=torch.bool),
                        "video_rotary_emb": _refiner_rope(_LTX2, 2, 8, 8)},
             t_map=lambda s: (s * 1000)[:, None].expand(-1, 128).clone(),
             notes="per-token timesteps (batch, tokens); RoPE passed in"),
    ZooEntry("SanaWM", "SanaWMTransformer3DModel",
             dict(in_channels=4, num_layers=2, hidden_size=32, num_attention_heads=2, patch_size=(1, 1, 1),
                  softmax_every_n=2, linear_head_dim=16, t_kernel_size=3, conv_kernel_size=4, caption_channels=8,
                  mlp_ratio=2.0, chunk_plucker_channels=8, chunk_plucker_post_attn_blocks=2),
             (4, 2, 8, 8), {"encoder_hidden_states": randn(1, TXT, 8), "encoder_attention_mask": ones(TXT, dtype=torch.long),
                            "camera_conditions": _sana_wm_camera(2, 8, 8), "chunk_plucker": randn(8, 2, 8, 8)},
             t_map=lambda s: (s * 1000)[:, None, None].expand(-1, 1, 2).clone(),
             notes="camera-controlled world model: gated-delta-net linear attention in block 0, softmax in block 1; "
                   "per-frame timesteps"),
    ZooEntry("SanaVideo", "SanaVideoTransformer3DModel",
             dict(in_channels=4, out_channels=4, **H, num_layers=2, num_cross_attention_heads=2,
                  cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=16, sample_size=8,
                  patch_size=(1, 2, 2), rope_max_seq_len=32),
             _VIDEO, {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("Kandinsky5", "Kandinsky5Transformer3DModel",
             dict(in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
                  model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6)),
             (2, 16, 16, 4), {"encoder_hidden_states": randn(TXT, 16), "pooled_projections": randn(8),
                              "visual_rope_pos": [torch.arange(2), torch.arange(8), torch.arange(8)],
                              "text_rope_pos": torch.arange(TXT)}),
    ZooEntry("Kandinsky6", "Kandinsky6Transformer3DModel",
             dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2),
                  model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6),
                  visual_cond=False, in_audio_dim=4, out_audio_dim=4),
             (2, 16, 16, 4), {"encoder_hidden_states": randn(TXT, 16), "pooled_projections": randn(8)}),
    ZooEntry("Kandinsky6SR", "Kandinsky6SRTransformer3DModel",
             dict(in_visual_dim=4, out_visual_dim=4, time_dim=16, patch_size=(1, 1, 1), model_dim=32, ff_dim=64,
                  num_visual_blocks=2, axes_dims=(4, 6, 6)),
             (1, 8, 8, 4), pack=_with_anchor,
             notes="super-resolution: noisy latent + anchor latent + mask; NABLA sparse attention over 8x8 tiles"),
    ZooEntry("JoyImageEdit", "JoyImageEditTransformer3DModel",
             dict(patch_size=[1, 2, 2], in_channels=16, hidden_size=32, num_attention_heads=2, text_dim=16,
                  num_layers=2, rope_dim_list=[4, 6, 6]),
             (16, 1, 16, 16), {"encoder_hidden_states": randn(TXT, 16)}),
    ZooEntry("JoyImageEditPlus", "JoyImageEditPlusTransformer3DModel",
             dict(patch_size=[1, 2, 2], in_channels=16, hidden_size=32, num_attention_heads=2, text_dim=16,
                  num_layers=2, rope_dim_list=[4, 6, 6]),
             (128, 16, 1, 2, 2), {"encoder_hidden_states": randn(TXT, 16), "shape_list": per_batch([(1, 8, 8), (1, 8, 8)])},
             notes="pre-patchified tokens of a target and a reference image"),
    # --- audio, 1-D and other denoisers ------------------------------------------------------------
    ZooEntry("StableAudio", "StableAudioDiTModel",
             dict(sample_size=64, in_channels=8, num_layers=2, **H, num_key_value_attention_heads=1, out_channels=8,
                  cross_attention_dim=16, time_proj_dim=16, global_states_input_dim=16, cross_attention_input_dim=16),
             (8, 64), {"encoder_hidden_states": randn(TXT, 16), "global_hidden_states": randn(1, 16),
                       "rotary_embedding": _stable_audio_rope(8, 65)}),
    ZooEntry("StableAudio3", "StableAudio3DiTModel",
             dict(io_channels=8, patch_size=1, embed_dim=32, depth=2, num_heads=2, cond_token_dim=16,
                  global_cond_dim=12, local_add_cond_dim=5, timestep_features_dim=16, ff_mult=2, num_memory_tokens=3,
                  use_differential_attention=False),
             (8, 64), {"encoder_hidden_states": randn(TXT, 16), "global_hidden_states": randn(12)}, t_map=UNIT),
    ZooEntry("LongCatAudioDiT", "LongCatAudioDiTTransformer",
             dict(dit_dim=32, dit_depth=2, dit_heads=2, dit_text_dim=16, latent_dim=8, text_conv=False),
             (64, 8), {"encoder_hidden_states": randn(TXT, 16), "encoder_attention_mask": ones(TXT, dtype=torch.bool),
                       "attention_mask": ones(64, dtype=torch.bool)}, t_map=UNIT),
    ZooEntry("AceStep", "AceStepTransformer1DModel",
             dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, in_channels=24, audio_acoustic_hidden_dim=8, patch_size=2,
                  rope_theta=10000.0, sliding_window=16),
             (128, 8), {"encoder_hidden_states": randn(TXT, 32), "context_latents": randn(128, 16)},
             t_map=lambda s: {"timestep": s.clone(), "timestep_r": s.clone()}),
    ZooEntry("MiniMaxMusic3", "MiniMaxMusic3Transformer1DModel",
             dict(in_channels=8, condition_dim=16, num_layers=2, num_attention_heads=2, attention_head_dim=16,
                  ff_inner_dim=64, rotary_dim=8, fourier_embedding_dim=8),
             (8, 64), {"encoder_hidden_states": randn(64, 16)}, t_map=UNIT,
             notes="the conditioning is frame-aligned (64 rows), not text"),
    ZooEntry("MiniMaxH3", "MiniMaxH3Transformer3DModel",
             dict(num_attention_heads=2, attention_head_dim=16, hidden_size=32, num_layers=2, num_refiner_layers=1,
                  ffn_dim=64, in_channels=4, audio_in_channels=6, patch_size=(1, 2, 2), text_dim=8, freq_dim=8,
                  time_embed_hidden_dim=32, time_embed_dim=16, rope_freq_dim=2),
             (64, 16), {"audio_hidden_states": randn(6, 6), "encoder_hidden_states": randn(4, 8),
                        **_minimax_h3_inputs(4, 6, 64)},
             t_map=lambda s: {"timestep": torch.stack([s[0], s[0] * 0.5])},
             notes="one packed sequence of text, audio and video rows; one timestep per row group, not per sample"),
    ZooEntry("T5FilmDecoder", "T5FilmDecoder",
             dict(input_dims=8, targets_length=64, d_model=32, num_layers=2, num_heads=2, d_kv=16, d_ff=64,
                  dropout_rate=0.0),
             (64, 8), {"encodings_and_masks": lambda b, g: [(torch.randn(b, TXT, 32, generator=g),
                                                             torch.ones(b, TXT, dtype=torch.bool))]},
             latent_key="decoder_input_tokens", timestep_key="decoder_noise_time", t_map=UNIT,
             return_dict=False, notes="spectrogram diffusion decoder; forward has no return_dict"),
    ZooEntry("TransformerTemporal", "TransformerTemporalModel",
             dict(**H, in_channels=32, num_layers=1, norm_num_groups=8),
             (32, 8, 8), {"num_frames": 2}, timestep_key=None,
             notes="temporal attention only: a batch of 2 is one 2-frame video, tokens are frames"),
]

ENTRIES: dict[str, ZooEntry] = {e.name: e for e in _E}

# Classes with no tiny entry, and why.
UNBUILDABLE: dict[str, str] = {
    "MiniMaxMusic3RVQDepthDecoder": "not a denoiser: an autoregressive codebook decoder (no timestep, no latent)",
    "Cosmos3OmniTransformer": "packed multi-modal sequence API (per-item token lists, Python-int lengths and indexes "
                              "into a text vocabulary): no batch axis for the shared denoising loop",
    "WanAnimate2Transformer3DModel": "two-phase API: a WanAnimate2KVCache must first be filled by an 'extract' call "
                                     "on the reference frames; inputs are per-sample lists without a batch axis",
    "RFD4ProteinaTransformer": "protein-structure model: inputs are dozens of named residue/atom feature tensors "
                               "(coordinates, bond graphs, masks), not a latent image or sequence",
}


def entry(name: str) -> ZooEntry:
    return ENTRIES[name]


def with_config(e: ZooEntry, **changes) -> ZooEntry:
    """A copy of an entry with config fields changed (e.g. more layers for a slow test)."""
    return dataclasses.replace(e, config={**e.config, **changes})


def tiny_unet():
    """A diffusers UNet2DConditionModel at a tiny config, random weights (seeded): not a
    transformer class, so not an entry; its transformer blocks are nested at
    down_blocks.0.attentions.0.transformer_blocks.0 (tests/test_dato.py, benchmarks/bench_unet.py)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8).eval()
