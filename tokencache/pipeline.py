"""Diffusers pipelines: `pipe = tokencache.compile_pipeline(pipe, policy="toca")`.

Compiles the pipeline's denoiser (`pipe.transformer`, or the component named) with tokencache and
wraps the pipeline so that each call is one explicit generation (runtime/generation.py): caches
start empty at every call and are freed after it, and the step count comes from the call itself
(the scheduler's timesteps once the pipeline has set them: the number of distinct model
timesteps, which is `num_inference_steps` for first-order samplers and Heun, 2n-1 for KDPM2;
else the call's `num_inference_steps`). `num_steps` need not be given. Concurrent calls in
different threads keep separate caches.

Everything else goes to the wrapped pipeline (`wrapped.pipe`).
"""
from __future__ import annotations

import inspect


class CachedPipeline:
    """A diffusers pipeline whose every call is one tokencache generation."""

    def __init__(self, pipe, component: str, compiled):
        self.pipe = pipe
        self.component = component
        self.compiled = compiled

    def __call__(self, *args, **kwargs):
        from .runtime.generation import Generation

        with Generation(self.compiled, steps=lambda: self.steps(args, kwargs)):
            return self.pipe(*args, **kwargs)

    def steps(self, args=(), kwargs=None) -> int | None:
        """Model timesteps of this call: distinct consecutive values of the scheduler's timesteps
        (set by the pipeline before its first model call), else num_inference_steps."""
        import torch

        timesteps = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
        if timesteps is not None and len(timesteps) > 0:
            return int(torch.unique_consecutive(torch.as_tensor(timesteps).detach().cpu()).numel())
        try:
            bound = inspect.signature(self.pipe.__call__).bind_partial(*args, **(kwargs or {}))
        except TypeError:
            return None
        steps = bound.arguments.get("num_inference_steps")
        if steps is None:
            default = inspect.signature(self.pipe.__call__).parameters.get("num_inference_steps")
            steps = default.default if default is not None and default.default is not inspect.Parameter.empty else None
        return steps if isinstance(steps, int) and steps > 0 else None

    def __getattr__(self, name):
        return getattr(self.__dict__["pipe"], name)

    def __repr__(self) -> str:
        return f"CachedPipeline({type(self.pipe).__name__}, component={self.component!r})"


def compile_pipeline(pipe, component: str | None = None, **options) -> CachedPipeline:
    """Compile `pipe.<component>` (default: `transformer`, else `unet`) with
    `tokencache.compile(..., **options)`, put it back into the pipeline, and return the pipeline
    wrapped so that each call is one generation with the call's step count."""
    from . import compile as tc_compile

    if component is None:
        component = next((c for c in ("transformer", "unet") if getattr(pipe, c, None) is not None), None)
        if component is None:
            raise ValueError(f"{type(pipe).__name__} has no 'transformer' or 'unet' component; name the denoiser "
                             "with compile_pipeline(pipe, component='...')")
    model = getattr(pipe, component, None)
    if model is None:
        raise ValueError(f"{type(pipe).__name__} has no component {component!r}")
    compiled = tc_compile(model, **options)
    setattr(pipe, component, compiled)
    return CachedPipeline(pipe, component, compiled)
