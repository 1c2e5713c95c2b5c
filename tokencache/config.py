"""CacheConfig: the one settings object. `torch.compile(..., options={...})` keys are its fields."""
from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

POLICIES = ("none", "fora", "toca", "duca", "taylorseer", "clusca", "dato")
ATTENTION_MODES = ("reuse", "tokens")
CONTEXT_TOKENS = ("recompute", "reuse")
SELECTIONS = ("auto", "score", "random", "vnorm")
AGGRESSIVE = ("reuse", "skip")
CACHE_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_WARMUP = {"taylorseer": 3, "clusca": 3}     # policies whose default warm-up is not 1
INNER_BACKENDS = ("eager", "inductor", "cudagraphs", "onnxruntime", "tensorrt")
CPU_MATMULS = ("auto", "onednn", "onednn_packed", "aten")


CACHING = tuple(p for p in POLICIES if p != "none")
TOKEN_WISE = ("toca", "duca")
FORECAST = ("taylorseer", "clusca")


def _option(default, doc: str, used_by: tuple[str, ...] | None = None, allowed: tuple | str | None = None):
    """A CacheConfig field with its one-sentence documentation (README's options table and the CLI
    flags are generated from it: tokencache/docs.py), its allowed values (a tuple of choices or a
    phrase) and the policies that read it (None: all of them; setting it under another policy warns)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "used_by": used_by, "allowed": allowed})


@dataclass(frozen=True)
class CacheConfig:
    """How tokencache caches a diffusion transformer: `torch.compile(..., options={...})` keys.

    Each field's documentation, allowed values and the policies that read it live in its metadata
    (`tokencache.docs.options()`; README "Options" is generated from it). The policies: "none"
    (plain compilation), "fora" (reuse every cached module between fresh steps), "toca" (recompute
    the `ratio` highest-scoring tokens of each module), "duca" (token-wise and aggressive steps
    alternate), "taylorseer" (forecast module outputs from finite differences), "clusca"
    (TaylorSeer plus one computed token per k-means cluster, propagated to its cluster), "dato"
    (DaTo: in fresh steps self-attention runs on the tokens kept after pruning the sources most
    similar to their patch's highest-dynamics token; modules are reused between fresh steps).
    """

    policy: str = _option("toca", "the caching method: none (plain compilation), fora (reuse whole modules between "
                          "fresh steps), toca (recompute the K highest-scoring tokens per module), duca (token-wise "
                          "and aggressive steps alternate), taylorseer (forecast module outputs from finite "
                          "differences), clusca (TaylorSeer plus one computed token per k-means cluster), dato "
                          "(self-attention on the tokens left after pruning redundant ones in fresh steps, modules "
                          "reused between them).",
                          allowed=POLICIES)
    interval: int = _option(3, "a fresh (full) step every `interval` steps.", CACHING, "integer >= 1")
    ratio: float = _option(0.25, "fraction of tokens recomputed per module in a token-wise step (K = round(ratio·N)); "
                           "at 1.0 modules that cannot run token-wise run whole.", TOKEN_WISE, "(0, 1]")
    num_steps: int = _option(50, "denoising steps per generation when no `tokencache.generation(steps=)` block or "
                             "`compile_pipeline` gives them.", allowed="integer >= 1")
    warmup: int | None = _option(None, "the first `warmup` steps are always fresh; default 3 for taylorseer and "
                                 "clusca (a forecast needs the fast-changing first steps computed), 1 otherwise.",
                                 CACHING, "integer >= 0")
    attention: str = _option("reuse", "self-attention in token-wise steps: reused whole (ToCa), or only the K "
                             "selected queries computed against all keys (exact rows).", TOKEN_WISE,
                             ATTENTION_MODES)
    context_tokens: str = _option("recompute", "joint-attention models (SD3, Flux, ...): the text stream in "
                                  "token-wise steps is recomputed every step or reused whole (matters only under "
                                  "attention=\"tokens\").", TOKEN_WISE, CONTEXT_TOKENS)
    inner: str = _option("inductor", "what compiles each variant: inductor, eager, cudagraphs (inductor replayed as "
                         "CUDA graphs), onnxruntime or tensorrt (the variant exported to ONNX as "
                         "`tokencache.export` does).", allowed=INNER_BACKENDS)
    cpu_matmul: str = _option("auto", "linear-layer kernels of inductor variants on the CPU: oneDNN (GELU fused), "
                              "oneDNN on packed weight copies, ATen/MKL, or auto (packed oneDNN for float32 models "
                              "that fit a quarter of memory).", allowed=CPU_MATMULS)
    strict: bool = _option(False, "raise instead of warning and running uncached when caching cannot apply.",
                           allowed=(True, False))
    staleness_weight: float = _option(0.25, "weight of a token's steps since it was computed in the token score.",
                                      TOKEN_WISE, "number >= 0")
    dynamics_weight: float = _option(1.0, "weight of how much a token's input changed since the last fresh step "
                                     "in the token score.", TOKEN_WISE, "number >= 0")
    spatial_bonus: float = _option(0.4, "score bonus of the best token of every grid cell, so that recomputed "
                                   "tokens spread over the image.", TOKEN_WISE, "number >= 0")
    spatial_grid: int = _option(2, "side of the grid cells of the spatial bonus, in tokens.", TOKEN_WISE,
                                "integer >= 1")
    cfg_shared_tokens: bool = _option(True, "both halves of a [cond; uncond] batch select the same tokens.",
                                      (*TOKEN_WISE, "dato"), (True, False))
    timestep_input: str = _option("auto", "forward() argument holding the timestep, used to tell steps, CFG calls "
                                  "and generations apart (auto: timestep, timesteps, t, sigma, sigmas).",
                                  allowed="an argument name")
    selection: str = _option("auto", "token selection: the score, an in-graph seeded random draw, DuCa's "
                             "value-norm prior (vnorm), or auto (duca: random, toca: score).", TOKEN_WISE,
                             SELECTIONS)
    seed: int = _option(0, "seed of random selections and draws.", (*TOKEN_WISE, "clusca", "dato"), "integer >= 0")
    aggressive: str = _option("reuse", "DuCa's aggressive steps reuse every module, or skip all blocks.",
                              ("duca",), AGGRESSIVE)
    order: int = _option(1, "highest finite-difference order of the forecast.", FORECAST, "1..4")
    cache_dtype: str = _option("float32", "dtype of the stored forecast factors.", FORECAST, CACHE_DTYPES)
    step_weight: float = _option(0.0, "ToCa's varying ratio over steps: ratio·(1 + w - 2w·s/n) at step s of n, "
                                 "quantised into at most `ratio_buckets` partial graphs.", TOKEN_WISE, "[-1, 1]")
    layer_weight: float = _option(0.0, "ToCa's varying ratio over blocks: ratio·(1 + w - 2w·l/(L-1)) at block l of "
                                  "L (free: every block is its own code).", TOKEN_WISE, "[-1, 1]")
    ratio_buckets: int = _option(3, "how many partial graphs a varying step ratio is quantised into.", TOKEN_WISE,
                                 "integer >= 1")
    clusters: int = _option(16, "k-means clusters, one computed token each per module in cached steps.",
                            ("clusca",), "integer >= 1")
    gamma: float = _option(0.005, "weight of a cluster's computed token propagated to its members.", ("clusca",),
                           "[0, 1]")
    cluster_layer: int = _option(-1, "the block whose output is clustered (-1: the last).", ("clusca",), "integer")
    kmeans_iters: int = _option(10, "Lloyd iterations of k-means per fresh step.", ("clusca",), "integer >= 1")
    prune_ratio: float = _option(0.4, "fraction of the non-destination tokens pruned before self-attention in "
                                 "fresh steps (DaTo's default).", ("dato",), "[0, 1)")
    prune_patch: int = _option(2, "side of the token patches that each keep one destination token.", ("dato",),
                               "integer >= 1")

    def __post_init__(self):
        if self.warmup is None and self.policy in POLICIES:
            object.__setattr__(self, "warmup", DEFAULT_WARMUP.get(self.policy, 1))
        for name, allowed in (("policy", POLICIES), ("attention", ATTENTION_MODES), ("context_tokens", CONTEXT_TOKENS), ("inner", INNER_BACKENDS),
                              ("cpu_matmul", CPU_MATMULS),
                              ("selection", SELECTIONS), ("aggressive", AGGRESSIVE), ("cache_dtype", CACHE_DTYPES)):
            _choice(name, getattr(self, name), allowed)
        for name, low in (("interval", 1), ("num_steps", 1), ("warmup", 0), ("spatial_grid", 1), ("seed", 0),
                          ("ratio_buckets", 1), ("clusters", 1), ("kmeans_iters", 1), ("prune_patch", 1)):
            _int_at_least(name, self.__dict__[name], low)
        _int_at_least("order", self.order, 1, high=4)
        _int_at_least("cluster_layer", self.cluster_layer, None)
        _number("ratio", self.ratio, 0.0, 1.0, low_open=True)
        _number("gamma", self.gamma, 0.0, 1.0)
        if not (isinstance(self.prune_ratio, (int, float)) and not isinstance(self.prune_ratio, bool)
                and 0 <= self.prune_ratio < 1):
            raise ValueError(f"tokencache option 'prune_ratio' must be a number in [0, 1), got {self.prune_ratio!r}")
        for name in ("step_weight", "layer_weight"):
            _number(name, getattr(self, name), -1.0, 1.0)
        for name in ("staleness_weight", "dynamics_weight", "spatial_bonus"):
            _number(name, getattr(self, name), 0.0, None)
        for name in ("strict", "cfg_shared_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"tokencache option {name!r} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.timestep_input, str) or not self.timestep_input:
            raise ValueError(f"tokencache option 'timestep_input' must be a non-empty string, got {self.timestep_input!r}")
        for name in self.ignored_options():
            warnings.warn(f"tokencache option {name}={getattr(self, name)!r} is read only by "
                          f"{_readers(name)}; policy {self.policy!r} ignores it", stacklevel=3)

    def ignored_options(self) -> list[str]:
        """Options set away from their default that the chosen policy does not read."""
        return [f.name for f in dataclasses.fields(self) if f.name in self._changed()
                and f.metadata.get("used_by") is not None and self.policy not in f.metadata["used_by"]]

    def _changed(self) -> set[str]:
        """Fields that differ from their default under this policy (warmup's depends on it)."""
        return {f.name for f in dataclasses.fields(self)
                if getattr(self, f.name) != (DEFAULT_WARMUP.get(self.policy, 1) if f.name == "warmup" else f.default)}

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

    @property
    def torch_cache_dtype(self):
        import torch
        return getattr(torch, self.cache_dtype)

    def changed_options(self) -> dict[str, Any]:
        """The options that differ from their defaults under this policy (the policy included):
        what a user set, as far as it matters."""
        changed = self._changed() | {"policy"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in changed}

    def with_steps(self, num_steps: int) -> "CacheConfig":
        """This config for generations of `num_steps` steps (validated once already: no second
        round of warnings, as dataclasses.replace would give)."""
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"tokencache: num_steps must be an integer >= 1, got {num_steps!r}")
        changed = copy.copy(self)
        object.__setattr__(changed, "num_steps", num_steps)
        return changed

    def selection_for(self, policy: str) -> str:
        if self.selection != "auto":
            return self.selection
        return "random" if policy == "duca" else "score"


def _readers(name: str) -> str:
    used_by = next(f.metadata["used_by"] for f in dataclasses.fields(CacheConfig) if f.name == name)
    return ("policy " if len(used_by) == 1 else "policies ") + ", ".join(repr(p) for p in used_by)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"tokencache option {name!r} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _int_at_least(name: str, value: Any, low: int | None, high: int | None = None) -> None:
    if (not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low)
            or (high is not None and value > high)):
        allowed = "an integer" + (f" >= {low}" if high is None and low is not None else "") + (
            f" in {low}..{high}" if high is not None else "")
        raise ValueError(f"tokencache option {name!r} must be {allowed}, got {value!r}")


def _number(name: str, value: Any, low: float, high: float | None, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        lo = f"({low:g}" if low_open else f"[{low:g}"
        allowed = f"a number >= {low:g}" if high is None else f"a number in {lo}, {high:g}]"
        raise ValueError(f"tokencache option {name!r} must be {allowed}, got {value!r}")
