"""CacheConfig: the one settings object. `torch.compile(..., options={...})` keys are its fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("none", "fora", "toca")
ATTENTION_MODES = ("reuse", "tokens")
INNER_BACKENDS = ("eager", "inductor")


@dataclass(frozen=True)
class CacheConfig:
    """How tokencache caches a diffusion transformer.

    policy:      "none" (plain compilation), "fora" (reuse every cached region between fresh
                 steps), "toca" (recompute the `ratio` highest-scoring tokens of each region).
    interval:    a fresh (full) step every `interval` steps.
    ratio:       fraction of tokens recomputed per region in a token-wise step (K = round(ratio*N)).
    num_steps:   denoising steps per generation; the schedule is precomputed for this many.
    warmup:      the first `warmup` steps are always fresh.
    attention:   "reuse": self-attention output is reused in token-wise steps (ToCa's choice);
                 "tokens": only the queries of the selected tokens are computed, keys/values see
                 all tokens (exact for the selected rows).
    inner:       backend that compiles each graph variant.
    strict:      raise instead of warning and falling back to the uncached model.
    staleness_weight, dynamics_weight, spatial_bonus, spatial_grid: the token score (see
                 passes/scores.py): dynamics + staleness, then a bonus for the best token of
                 every grid cell so that recomputed tokens spread over the image.
    cfg_shared_tokens: both halves of an even batch ([cond; uncond]) pick the same tokens.
    timestep_input: name of the forward() argument holding the timestep ("auto" guesses it);
                 the runtime uses it to tell steps, CFG calls and new generations apart.
    """

    policy: str = "toca"
    interval: int = 3
    ratio: float = 0.25
    num_steps: int = 50
    warmup: int = 1
    attention: str = "reuse"
    inner: str = "inductor"
    strict: bool = False
    staleness_weight: float = 0.25
    dynamics_weight: float = 1.0
    spatial_bonus: float = 0.4
    spatial_grid: int = 2
    cfg_shared_tokens: bool = True
    timestep_input: str = "auto"

    def __post_init__(self):
        _choice("policy", self.policy, POLICIES)
        _choice("attention", self.attention, ATTENTION_MODES)
        _choice("inner", self.inner, INNER_BACKENDS)
        _int_at_least("interval", self.interval, 1)
        _int_at_least("num_steps", self.num_steps, 1)
        _int_at_least("warmup", self.warmup, 0)
        _int_at_least("spatial_grid", self.spatial_grid, 1)
        if not isinstance(self.ratio, (int, float)) or isinstance(self.ratio, bool) or not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"tokencache option 'ratio' must be a number in (0, 1], got {self.ratio!r}")
        for name in ("staleness_weight", "dynamics_weight", "spatial_bonus"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"tokencache option {name!r} must be a number >= 0, got {value!r}")
        for name in ("strict", "cfg_shared_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"tokencache option {name!r} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.timestep_input, str) or not self.timestep_input:
            raise ValueError(f"tokencache option 'timestep_input' must be a non-empty string, got {self.timestep_input!r}")

    @classmethod
    def from_options(cls, options: dict[str, Any] | "CacheConfig" | None) -> "CacheConfig":
        """Build from torch.compile's `options` dict; unknown keys are an error, never ignored."""
        if options is None:
            return cls()
        if isinstance(options, CacheConfig):
            return options
        if not isinstance(options, dict):
            raise ValueError(f"tokencache options must be a dict of CacheConfig fields, got {type(options).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in known:
                raise ValueError(f"unknown tokencache option {key!r}; allowed: {', '.join(known)}")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"tokencache option {name!r} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _int_at_least(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"tokencache option {name!r} must be an integer >= {low}, got {value!r}")
