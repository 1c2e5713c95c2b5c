"""taylorseer (TaylorSeer): between fresh steps every region's output is forecast from finite
differences of its outputs at the last fresh steps (Newton's divided-difference form, exact for
outputs that are polynomials of the step of degree <= order, at any spacing of fresh steps)."""
from __future__ import annotations

import torch

from ..passes.forecast import forecast
from ..passes.taylor_store import taylor_store
from .base import FRESH, interval_schedule


class TaylorSeerPolicy:
    name = "taylorseer"

    def check(self, analysis, config):
        return None if analysis.regions else "no cacheable regions"

    def variants(self, gm, analysis, config):
        return {FRESH: taylor_store(gm, analysis.regions, config.order, config.torch_cache_dtype),
                "forecast": forecast(gm, analysis.regions)}

    def schedule(self, config):
        return interval_schedule(config, "forecast")

    def computed_tokens(self, analysis, config):
        return {r.name: 0 for r in analysis.regions}

    def host_inputs(self, variant, step, fresh_steps, config):
        return host_taylor_inputs(variant, step, fresh_steps, config.order)


def host_taylor_inputs(variant: str, step: int, fresh_steps: list[int], order: int) -> dict[str, torch.Tensor]:
    """Step distances and validity of each order (fresh), or forecast coefficients (others).

    `fresh_steps` lists this generation's fresh steps (the current one included when fresh)."""
    n = len(fresh_steps) - 1
    if variant == FRESH:
        back = [n - 1 - i for i in range(order)]
        dist = [float(fresh_steps[n] - fresh_steps[j]) if j >= 0 else 1.0 for j in back]
        valid = [1.0 if j >= 0 else 0.0 for j in back]
        return {"taylor_dist": torch.tensor(dist), "taylor_valid": torch.tensor(valid)}
    coef = [1.0]
    for i in range(1, order + 1):
        j = n - (i - 1)
        coef.append(coef[-1] * (step - fresh_steps[j]) if j >= 0 else 0.0)
    return {"taylor_coef": torch.tensor(coef)}
