"""CacheConfig: the one settings object. `torch.compile(..., options={...})` keys are its fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

POLICIES = ("none", "fora", "toca", "duca", "taylorseer", "clusca")
ATTENTION_MODES = ("reuse", "tokens")
CONTEXT_TOKENS = ("recompute", "reuse")
SELECTIONS = ("auto", "score", "random", "vnorm")
AGGRESSIVE = ("reuse", "skip")
CACHE_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_WARMUP = {"taylorseer": 3, "clusca": 3}     # policies whose default warm-up is not 1
INNER_BACKENDS = ("eager", "inductor", "cudagraphs", "onnxruntime", "tensorrt")
CPU_MATMULS = ("auto", "onednn", "onednn_packed", "aten")


@dataclass(frozen=True)
class CacheConfig:
    """How tokencache caches a diffusion transformer.

    policy:      "none" (plain compilation), "fora" (reuse every cached region between fresh
                 steps), "toca" (recompute the `ratio` highest-scoring tokens of each region).
    interval:    a fresh (full) step every `interval` steps.
    ratio:       fraction of tokens recomputed per region in a token-wise step (K = round(ratio*N)).
    num_steps:   denoising steps per generation; the schedule is precomputed for this many.
    warmup:      the first `warmup` steps are always fresh. Default (None): the policy's own, 3 for
                 taylorseer and clusca (their references' and diffusers' default: the forecast needs
                 the fast-changing first steps computed), 1 for the others.
    attention:   "reuse": self-attention output is reused in token-wise steps (ToCa's choice);
                 "tokens": only the queries of the selected tokens are computed, keys/values see
                 all tokens (exact for the selected rows).
    context_tokens: joint-attention models (SD3, Flux, ...): the text stream's tokens in token-wise
                 steps. "recompute": its feed-forward and, under attention="tokens", its queries
                 run on every text token; "reuse": their cached outputs are reused whole.
    inner:       backend that compiles each graph variant: "inductor"; "eager" (tests, debugging);
                 "cudagraphs" (inductor, then each variant captured once as a CUDA graph and
                 replayed; CUDA inputs only, a warning and plain inductor otherwise); "onnxruntime"
                 or "tensorrt" (each variant exported to ONNX with frozen weights as
                 `tokencache.export` does, then run by onnxruntime or built into a TensorRT engine:
                 deployment numerics, or TensorRT speed, inside the PyTorch loop).
    cpu_matmul:  kernels for the linear layers of inductor-compiled variants on the CPU: "onednn"
                 (a GELU after a linear is fused into it; an error if this torch build lacks
                 oneDNN), "onednn_packed" (oneDNN on packed copies of the GEMM weights, made on
                 first use and kept: no reorder of each weight per call, for a second copy of
                 every GEMM weight in memory; runtime/packed_weights.py says how changed weights
                 are noticed), "aten" (inductor's default, MKL for float32), "auto" (for float32
                 models where oneDNN is available: "onednn_packed" while the parameters take at
                 most a quarter of the machine's memory, "onednn" above that; else ATen). On AMD
                 CPUs MKL runs its AVX2 path and oneDNN is about 2x faster (passes/onednn_linear.py,
                 BENCHMARKS.md).
    strict:      raise instead of warning and falling back to the uncached model.
    staleness_weight, dynamics_weight, spatial_bonus, spatial_grid: the token score (see
                 ops/token_ops.py): dynamics + staleness, then a bonus for the best token of
                 every grid cell so that recomputed tokens spread over the image.
    cfg_shared_tokens: both halves of an even batch ([cond; uncond]) pick the same tokens.
    selection:   token selection in token-wise steps: "score" (above), "random" (in-graph seeded
                 generator, the same tokens for every sample), "vnorm" (DuCa's value-vector norms
                 of the block's self-attention at the last fresh step, plus staleness and the
                 spatial bonus), "auto" (toca: score, duca: random).
    seed:        seed of the random selection.
    aggressive:  DuCa's aggressive steps: "reuse" every region (FORA) or "skip" all blocks (only
                 the layers after the last block run, on its cached output).
    order:       TaylorSeer: highest finite-difference order of the forecast (1-4). Default 1, as in
                 TaylorSeer's FLUX setting, ClusCa and diffusers: on the embedded model order 2 lost
                 3.9 dB (N=3) against order 1 (BENCHMARKS.md).
    cache_dtype: dtype of stored Taylor factors ("float32", "float16", "bfloat16").
    step_weight, layer_weight, ratio_buckets: ToCa's varying ratios. Region ratio =
                 ratio * (1 + w_s - 2 w_s s/n) * (1 + w_l - 2 w_l l/(L-1)) for step s of n and block
                 l of L; the step factor is quantised to at most `ratio_buckets` values, one
                 partial graph each (layer factors are free: every block is its own code).
    clusters, gamma, cluster_layer, kmeans_iters: ClusCa: k-means clusters (= tokens computed per
                 feed-forward region in cached steps), propagation weight, the block whose output
                 is clustered (-1 = last), Lloyd iterations per fresh step.
    timestep_input: name of the forward() argument holding the timestep ("auto" guesses it);
                 the runtime uses it to tell steps, CFG calls and new generations apart.
    """

    policy: str = "toca"
    interval: int = 3
    ratio: float = 0.25
    num_steps: int = 50
    warmup: int | None = None
    attention: str = "reuse"
    context_tokens: str = "recompute"
    inner: str = "inductor"
    cpu_matmul: str = "auto"
    strict: bool = False
    staleness_weight: float = 0.25
    dynamics_weight: float = 1.0
    spatial_bonus: float = 0.4
    spatial_grid: int = 2
    cfg_shared_tokens: bool = True
    timestep_input: str = "auto"
    selection: str = "auto"
    seed: int = 0
    aggressive: str = "reuse"
    order: int = 1
    cache_dtype: str = "float32"
    step_weight: float = 0.0
    layer_weight: float = 0.0
    ratio_buckets: int = 3
    clusters: int = 16
    gamma: float = 0.005
    cluster_layer: int = -1
    kmeans_iters: int = 10

    def __post_init__(self):
        if self.warmup is None and self.policy in POLICIES:
            object.__setattr__(self, "warmup", DEFAULT_WARMUP.get(self.policy, 1))
        for name, allowed in (("policy", POLICIES), ("attention", ATTENTION_MODES), ("context_tokens", CONTEXT_TOKENS), ("inner", INNER_BACKENDS),
                              ("cpu_matmul", CPU_MATMULS),
                              ("selection", SELECTIONS), ("aggressive", AGGRESSIVE), ("cache_dtype", CACHE_DTYPES)):
            _choice(name, getattr(self, name), allowed)
        for name, low in (("interval", 1), ("num_steps", 1), ("warmup", 0), ("spatial_grid", 1), ("seed", 0),
                          ("ratio_buckets", 1), ("clusters", 1), ("kmeans_iters", 1)):
            _int_at_least(name, self.__dict__[name], low)
        _int_at_least("order", self.order, 1, high=4)
        _int_at_least("cluster_layer", self.cluster_layer, None)
        _number("ratio", self.ratio, 0.0, 1.0, low_open=True)
        _number("gamma", self.gamma, 0.0, 1.0)
        for name in ("step_weight", "layer_weight"):
            _number(name, getattr(self, name), -1.0, 1.0)
        for name in ("staleness_weight", "dynamics_weight", "spatial_bonus"):
            _number(name, getattr(self, name), 0.0, None)
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

    @property
    def torch_cache_dtype(self):
        import torch
        return getattr(torch, self.cache_dtype)

    def selection_for(self, policy: str) -> str:
        if self.selection != "auto":
            return self.selection
        return "random" if policy == "duca" else "score"


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
