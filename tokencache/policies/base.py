"""What a policy is: a step -> variant schedule and the passes that build each variant."""
from __future__ import annotations

from typing import Protocol

import torch.fx as fx

from ..compiler.regions import Analysis
from ..config import CacheConfig

FRESH = "fresh"


class Policy(Protocol):
    name: str

    def check(self, analysis: Analysis, config: CacheConfig) -> str | None:
        """Why this policy cannot apply to the analysed graph, or None."""

    def variants(self, gm: fx.GraphModule, analysis: Analysis, config: CacheConfig) -> dict[str, fx.GraphModule]:
        """Variant name -> rewritten graph."""

    def schedule(self, config: CacheConfig) -> list[str]:
        """The variant to run at each step 0 .. num_steps-1."""

    def computed_tokens(self, analysis: Analysis, config: CacheConfig) -> dict[str, int]:
        """Region -> tokens it computes in a cached (non-fresh) step."""

    def host_inputs(self, variant: str, step: int, fresh_steps: list[int], config: CacheConfig) -> dict:
        """Per-step tensors the runtime computes on the host for variants that declare host inputs."""


def is_fresh_step(step: int, config: CacheConfig) -> bool:
    """Warm-up steps and every `interval`-th step compute everything."""
    return step < max(1, config.warmup) or step % config.interval == 0


def interval_schedule(config: CacheConfig, cached: str) -> list[str]:
    return [FRESH if is_fresh_step(s, config) else cached for s in range(config.num_steps)]
