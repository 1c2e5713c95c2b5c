"""tokencache.compile_pipeline on a diffusers DiTPipeline built offline from tiny components: each
pipeline call is one generation with the call's own step count, no num_steps given."""
import warnings

import diffusers
import numpy as np
import pytest
import torch

import tokencache


def _pipeline(scheduler):
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=1).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=4,
                                  norm_num_groups=4, layers_per_block=1).eval()
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe, steps):
    return pipe(class_labels=[1, 2], num_inference_steps=steps, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.mark.parametrize("scheduler", ["dpm_solver_multistep", "heun",
                                       pytest.param("kdpm2", marks=pytest.mark.slow)])   # kdpm2: 20 s
def test_each_pipeline_call_is_one_generation(scheduler):
    make = {"dpm_solver_multistep": diffusers.DPMSolverMultistepScheduler,
            "heun": diffusers.HeunDiscreteScheduler, "kdpm2": diffusers.KDPM2DiscreteScheduler}[scheduler]
    expected = {steps: _images(_pipeline(make()), steps) for steps in (6, 9)}
    pipe = tokencache.compile_pipeline(_pipeline(make()), policy="toca", interval=2, inner="eager")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="tokencache")        # e.g. no "runs past its N steps"
        got = {steps: _images(pipe, steps) for steps in (6, 9)}
        again = _images(pipe, 6)
    np.testing.assert_array_equal(again, got[6])                       # no state carried between calls
    for steps in (6, 9):
        assert np.abs(got[steps] - expected[steps]).max() < 0.05
    report = tokencache.report(pipe.transformer)
    assert report["generations"] == 3 and report["variants"]["partial"]["calls"] > 0
    assert report["cache_bytes"] == 0                                  # caches freed after each call
    if scheduler == "dpm_solver_multistep":                            # steps 6, 9, 6: fresh every 2nd step
        assert report["variants"]["fresh"]["calls"] == 3 + 5 + 3 and report["variants"]["partial"]["calls"] == 3 + 4 + 3


def test_interval_one_pipeline_equals_uncached():
    expected = _images(_pipeline(diffusers.HeunDiscreteScheduler()), 5)
    pipe = tokencache.compile_pipeline(_pipeline(diffusers.HeunDiscreteScheduler()), policy="toca", interval=1,
                                       inner="eager")
    np.testing.assert_allclose(_images(pipe, 5), expected, atol=1e-5)
    assert pipe.steps() == 5 and "DiTPipeline" in repr(pipe) and pipe.vae is pipe.pipe.vae


def test_pipeline_without_a_denoiser_is_a_clear_error():
    class NotAPipeline:
        transformer = None
    with pytest.raises(ValueError, match="no 'transformer' or 'unet'"):
        tokencache.compile_pipeline(NotAPipeline())
