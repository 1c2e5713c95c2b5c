"""toca: between fresh steps each region recomputes its K = round(ratio*N) highest-scoring tokens.

Self-attention is reused whole under attention="reuse" (ToCa's published choice) and computed for
the selected queries against all keys under attention="tokens". Cross-attention and feed-forward
regions are always token-wise: they treat tokens independently, so K rows are exact.

ToCa's varying ratios: a layer factor gives every block its own K (free: blocks are unrolled in the
graph); a step factor is quantised into at most `ratio_buckets` values, one partial graph each.
"""
from __future__ import annotations

from ..passes import fresh, partial, reuse, tokens_for
from .base import FRESH, interval_schedule, is_fresh_step


def split_regions(analysis, config):
    """(regions reused whole in partial steps, regions computed token-wise).

    Reused whole: self- and joint attention under attention="reuse", regions that are not
    token-local (a 3x3 conv in a feed-forward: their reason stays in the report), and the text
    stream's regions under context_tokens="reuse". Under "recompute" the text stream's regions
    are in neither list: they are not cached and run in every step. So do regions that are not
    token-local at ratio=1.0: K = N asks for every token fresh, which they can give only whole
    (Sana's convolution feed-forward, linear attention)."""
    attention = ("self_attention", "joint_attention")
    context = [r for r in analysis.regions if r.stream == "context"]
    every_token = config.ratio >= 1.0
    whole = [r for r in analysis.regions if r not in context
             and ((r.kind in attention and config.attention == "reuse") or (not r.token_wise and not every_token))]
    if config.context_tokens == "reuse":
        whole += context
    tokenwise = [r for r in analysis.regions if r not in whole and r not in context and r.token_wise]
    return whole, tokenwise


def cached_regions(analysis, config):
    """Every region whose output a fresh step stores."""
    whole, tokenwise = split_regions(analysis, config)
    return whole + tokenwise


def value_nodes(analysis) -> dict[str, str]:
    """Block -> the value input of its self-attention (for DuCa's value-norm selection)."""
    return {r.block: r.value for r in analysis.regions if r.kind == "self_attention" and r.value}


def step_buckets(config, cached_steps: list[int]) -> dict[int, tuple[str, float]]:
    """Cached step -> (partial variant name, step factor). One variant when step_weight is 0."""
    if config.step_weight == 0 or not cached_steps:
        return {s: ("partial", 1.0) for s in cached_steps}
    n, w = config.num_steps, config.step_weight
    factor = {s: 1 + w - 2 * w * s / n for s in cached_steps}
    ordered = sorted(cached_steps, key=factor.get)
    count = min(config.ratio_buckets, len(ordered))
    out = {}
    for b in range(count):                       # equal-count groups, each at its mean factor
        group = ordered[b * len(ordered) // count:(b + 1) * len(ordered) // count]
        mean = sum(factor[s] for s in group) / len(group)
        out.update({s: (f"partial{b}", mean) for s in group})
    return out


def layer_factor(analysis, region, config) -> float:
    blocks = len(analysis.blocks)
    if config.layer_weight == 0 or blocks < 2:
        return 1.0
    index = analysis.blocks.index(region.block)
    return 1 + config.layer_weight - 2 * config.layer_weight * index / (blocks - 1)


def region_ratios(analysis, regions, config, step_factor: float) -> dict[str, float]:
    return {r.name: min(1.0, max(0.0, config.ratio * step_factor * layer_factor(analysis, r, config)))
            for r in regions}


class TocaPolicy:
    name = "toca"

    def check(self, analysis, config):
        if not analysis.regions:
            return "no cacheable regions"
        _, tokenwise = split_regions(analysis, config)
        if not tokenwise:
            bad = [f"{r.name}: {r.reason}" for r in analysis.regions if not r.token_wise]
            if not bad:     # all token-local, yet none is computed token-wise: say which rule took them
                attention = [r.name for r in analysis.regions if r.kind in ("self_attention", "joint_attention")
                             and r.stream != "context"]
                text = [r.name for r in analysis.regions if r.stream == "context"]
                bad = ([f"the attention regions ({', '.join(attention[:3])}{' ...' if len(attention) > 3 else ''}) "
                        "are reused whole under attention='reuse' (attention='tokens' computes their queries "
                        "token-wise)"] if attention and config.attention == "reuse" else []) + \
                      ([f"the text-stream regions ({', '.join(text[:3])}) follow context_tokens="
                        f"{config.context_tokens!r}"] if text else [])
            return ("token-wise caching needs token-local regions and none is; " + "; ".join(bad[:3])
                    + (" ..." if len(bad) > 3 else "") + " (policy='fora' reuses whole modules)")
        if config.selection_for(self.name) == "vnorm":
            missing = sorted({r.block for r in tokenwise} - set(value_nodes(analysis)))
            if missing:
                return f"selection='vnorm' needs a self-attention in every block; none found in {missing[0]}"
        return None

    def cached_steps(self, config) -> list[int]:
        """Steps that run a partial graph."""
        return [s for s in range(config.num_steps) if not is_fresh_step(s, config)]

    def partial_variants(self, gm, analysis, config, selection):
        whole, tokenwise = split_regions(analysis, config)
        base = reuse(gm, whole)
        buckets = dict(step_buckets(config, self.cached_steps(config)).values()) or {"partial": 1.0}
        return {name: partial(base, tokenwise, config, selection, region_ratios(analysis, tokenwise, config, f))
                for name, f in buckets.items()}

    def variants(self, gm, analysis, config):
        _, tokenwise = split_regions(analysis, config)
        selection = config.selection_for(self.name)
        return {FRESH: fresh(gm, cached_regions(analysis, config), tokenwise, selection, config.seed,
                             values=value_nodes(analysis)),
                **self.partial_variants(gm, analysis, config, selection)}

    def schedule(self, config):
        buckets = step_buckets(config, self.cached_steps(config))
        return [buckets[s][0] if s in buckets else FRESH for s in range(config.num_steps)]

    def computed_tokens(self, analysis, config):
        """Tokens per region in a cached step (at the mean step factor when steps vary)."""
        whole, tokenwise = split_regions(analysis, config)
        ratios = region_ratios(analysis, tokenwise, config, 1.0)
        context = {r.name: r.tokens for r in analysis.regions if r not in whole and r not in tokenwise}
        return {**context, **{r.name: 0 for r in whole}, **{r.name: tokens_for(r, ratios[r.name]) for r in tokenwise}}

    def host_inputs(self, variant, step, fresh_steps, config):
        return {}


__all__ = ["TocaPolicy", "cached_regions", "interval_schedule", "split_regions"]
