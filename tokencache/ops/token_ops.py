"""The tensor functions that partial/fresh graphs call: token scores, top-K, gather, scatter.

They are ordinary torch code with static shapes (K is a Python int baked in at graph-build
time), inserted into variant graphs as call_function nodes, so inductor, the ONNX exporters and
eager execution all see plain tensor ops: no host syncs, no data-dependent shapes.

Score of token i in a region (higher = recomputed first):
    dynamics_weight * d_i / max_j d_j  +  staleness_weight * stale_i / interval
where d_i = |x_i - ref_i| / |ref_i| is how much the region's input row changed since the last fresh
step, and stale_i counts the steps since the token's cached output was computed (ToCa's s3). On a square
token grid the best token of every g x g cell then gets its score multiplied by (1 + bonus), which
spreads recomputed tokens over the image (ToCa's s4). With `pair_halves`, the two halves of the
batch ([cond; uncond] under classifier-free guidance) share one score and so the same tokens.
"""
from __future__ import annotations

import math

import torch

_EPS = 1e-6


def token_scores(x: torch.Tensor, ref: torch.Tensor, stale: torch.Tensor, interval: int,
                 dynamics_weight: float, staleness_weight: float, pair_halves: bool,
                 grid: int, bonus: float) -> torch.Tensor:
    change = torch.linalg.vector_norm((x - ref).float(), dim=-1)
    size = torch.linalg.vector_norm(ref.float(), dim=-1) + _EPS
    return prior_scores(change / size, stale, interval, dynamics_weight, staleness_weight, pair_halves, grid, bonus)


def prior_scores(prior: torch.Tensor, stale: torch.Tensor, interval: int, weight: float, staleness_weight: float,
                 pair_halves: bool, grid: int, bonus: float) -> torch.Tensor:
    """Shared tail of every score: a per-token prior (B, N) scaled to max 1, plus staleness,
    the CFG-halves average and the spatial bonus."""
    prior = prior / (prior.amax(dim=-1, keepdim=True) + _EPS)
    score = weight * prior + (staleness_weight / interval) * stale
    if pair_halves:
        half = score.shape[0] // 2
        shared = 0.5 * (score[:half] + score[half:])
        score = torch.cat([shared, shared], dim=0)
    if bonus > 0 and spatial_grid_ok(score.shape[1], grid):
        score = score * (1.0 + bonus * cell_winners(score, grid))
    # break exact ties towards lower token indices, so every backend (inductor, onnxruntime,
    # TensorRT) picks the same tokens when scores tie (e.g. all zero right after a fresh step)
    return score - 1e-6 * torch.arange(score.shape[1], device=score.device, dtype=score.dtype) / score.shape[1]


def snapshot(x: torch.Tensor) -> torch.Tensor:
    """A fresh step's region input kept for later scores, stored row-major: a partial graph
    computes its region input row-major, and comparing it with a snapshot of another layout (e.g.
    a channel-major residual stream, as a transposed patch-embedding conv leaves it) costs a
    transpose in every token-wise step."""
    return x.contiguous()


def value_norm_prior(value: torch.Tensor) -> torch.Tensor:
    """DuCa's "V" criterion from a fresh step's attention values (B, H, N, D): tokens whose value
    vectors are small across heads score high. Shifted to be >= 0, shape (B, N)."""
    norms = torch.linalg.vector_norm(value.float(), dim=-1).sum(dim=1)        # (B, N)
    return norms.amax(dim=-1, keepdim=True) - norms


def spatial_grid_ok(tokens: int, grid: int) -> bool:
    side = math.isqrt(tokens)
    return grid > 1 and side * side == tokens and side % grid == 0


def cell_winners(score: torch.Tensor, grid: int) -> torch.Tensor:
    """1.0 at the highest-scoring token of every grid x grid cell of the square token grid."""
    batch, tokens = score.shape
    side = math.isqrt(tokens)
    cells = side // grid
    s = score.reshape(batch, cells, grid, cells, grid).permute(0, 1, 3, 2, 4).reshape(batch, cells * cells, grid * grid)
    best = s.argmax(dim=-1, keepdim=True)
    onehot = (torch.arange(grid * grid, device=score.device) == best).to(score.dtype)
    return onehot.reshape(batch, cells, cells, grid, grid).permute(0, 1, 3, 2, 4).reshape(batch, tokens)


def top_tokens(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, K) of the K highest scores; order is irrelevant (gather and scatter share it)."""
    return torch.topk(score, k, dim=-1, sorted=False).indices


def _rows(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, token) index pairs, both (B, K), for whole-row indexing. Indexing rows exports to
    ONNX as GatherND/ScatterND, which copy rows; torch.gather/scatter with an index expanded over
    channels export as GatherElements/ScatterElements, which go element by element (4x slower in
    onnxruntime on a (16, 64, 128) cache). Inductor compiles both to the same loops."""
    batch = torch.arange(index.shape[0], device=index.device).unsqueeze(1).expand_as(index)
    return batch, index


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` (B, K) of x (B, N, C) -> (B, K, C)."""
    return x[_rows(index)]


def scatter_rows(full: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`full` (B, N, C) with rows `index` (B, K) replaced by `rows` (B, K, C); a new tensor."""
    return full.index_put(_rows(index), rows.to(full.dtype))


def scatter_rows_(full: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """scatter_rows into `full` itself (passes/inplace_cache.py); returns `full`."""
    return full.index_put_(_rows(index), rows.to(full.dtype))


def layout_positions(index: torch.Tensor, layout: tuple, keep_context: bool) -> torch.Tensor:
    """(B, K') original positions along a joined token axis (image and text segments, see
    compiler/token_axis.py) of the rows a partial step computes: the K selected image rows of
    each image segment, and every row of each text segment when text is recomputed."""
    parts, offset = [], 0
    for kind, size in layout:
        if kind == "img":
            parts.append(index + offset)
        elif keep_context:
            parts.append(torch.arange(offset, offset + size, device=index.device).expand(index.shape[0], size))
        offset += size
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def gather_table(table: torch.Tensor, positions: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """Rows `positions` (B, K') of a per-token table (RoPE cos/sin or complex frequencies) that
    broadcasts against a rank-`rank` tensor with tokens on `axis`: the result broadcasts the same
    way against the K' computed rows (batch first, since each sample selects its own rows)."""
    t = table.reshape((1,) * (rank - table.dim()) + tuple(table.shape))
    batch, rows = positions.shape
    t = t.expand(batch, *t.shape[1:])
    shape = [batch, *t.shape[1:]]
    shape[axis] = rows
    view = [1] * rank
    view[0], view[axis] = batch, rows
    return torch.gather(t, axis, positions.reshape(view).expand(shape))


def fresh_staleness(x: torch.Tensor) -> torch.Tensor:
    """All tokens were just computed: zero steps stale. Shape (B, N), float32."""
    return torch.zeros(x.shape[:2], dtype=torch.float32, device=x.device)


def age_staleness(stale: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One more step for every token, zero for the ones computed now."""
    return (stale + 1.0).index_put(_rows(index), torch.zeros(index.shape, dtype=stale.dtype, device=stale.device))


# -- random selection (DuCa) --------------------------------------------------------------------
# An in-graph linear congruential generator on int64 state: reproducible, static-shape, exportable
# (plain integer mul/add/remainder), and one draw per token shared by every sample of the batch,
# so both halves of a CFG batch pick the same tokens.
_LCG_A, _LCG_C, _LCG_M = 1103515245, 12345, 2 ** 31


def seed_generator(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Fresh-step state (N,) int64 from the token count of `x` (B, N, C) and a seed."""
    tokens = torch.arange(x.shape[1], dtype=torch.int64, device=x.device)
    return (tokens * 747796405 + seed * 2891336453 + 1) % _LCG_M


def next_random(state: torch.Tensor) -> torch.Tensor:
    return (state * _LCG_A + _LCG_C) % _LCG_M


def random_scores(state: torch.Tensor, batch: int) -> torch.Tensor:
    """Uniform [0, 1) scores (batch, N) from the generator state (the same row for every sample)."""
    return (state.to(torch.float32) / _LCG_M).unsqueeze(0).expand(batch, -1)


# -- Taylor / Newton forecasting (TaylorSeer) ----------------------------------------------------
# Factors of a region's output are stored stacked: (order+1, B, N, C). factor[0] is the output of
# the last fresh step, factor[i+1] the i+1-th divided difference over the last fresh steps. The
# host passes the step distances, so one graph serves every spacing; orders the history cannot
# support yet are multiplied by valid = 0 (zeros, not another graph).

def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """At least float32 for the differences, whatever the storage dtype."""
    return torch.promote_types(t.dtype, torch.float32)


def taylor_update(y: torch.Tensor, old: torch.Tensor, dist: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    work = _work_dtype(old)
    terms = [y.to(work)]
    for i in range(old.shape[0] - 1):
        terms.append(valid[i] * (terms[i] - old[i].to(work)) / dist[i])
    return torch.stack(terms).to(old.dtype)


def taylor_predict(factors: torch.Tensor, coef: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """sum_i coef[i] * factor[i]; coef[i] = prod_{j<i} (s - s_{n-j}) from the host."""
    work = _work_dtype(factors)
    out = (coef.to(work).reshape(-1, *([1] * (factors.dim() - 1))) * factors.to(work)).sum(0)
    return out.to(dtype)


def taylor_zero_order(factors: torch.Tensor) -> torch.Tensor:
    return factors[0]
