"""duca (DuCa): between fresh steps, conservative (token-wise) and aggressive steps alternate:
odd distances from the last fresh step are conservative, even ones aggressive. Aggressive steps
reuse every region (FORA-like) or, with aggressive="skip", skip all blocks. Token selection is
random by default (in-graph, seeded, the same tokens for both CFG halves)."""
from __future__ import annotations

from ..passes import fresh, reuse
from ..passes.skip import LAST_BLOCK_KEY, skip
from .base import FRESH, is_fresh_step
from .toca import TocaPolicy, cached_regions, split_regions, step_buckets, value_nodes

AGGRESSIVE = "aggressive"


class DucaPolicy(TocaPolicy):
    name = "duca"

    def check(self, analysis, config):
        reason = super().check(analysis, config)
        if reason is None and config.aggressive == "skip" and analysis.blocks[-1] not in analysis.block_outputs:
            reason = f"aggressive='skip' needs one output tensor leaving block {analysis.blocks[-1]}"
        return reason

    def cached_steps(self, config):
        """Only the conservative steps run a partial graph."""
        return [s for s, kind in enumerate(self._kinds(config)) if kind == "partial"]

    def _kinds(self, config) -> list[str]:
        kinds, since = [], 0
        for step in range(config.num_steps):
            since = 0 if is_fresh_step(step, config) else since + 1
            kinds.append(FRESH if since == 0 else "partial" if since % 2 == 1 else AGGRESSIVE)
        return kinds

    def variants(self, gm, analysis, config):
        _, tokenwise = split_regions(analysis, config)
        selection = config.selection_for(self.name)
        keep = {}
        if config.aggressive == "skip":
            last = analysis.blocks[-1]
            keep[LAST_BLOCK_KEY] = analysis.block_outputs[last]
            aggressive = skip(gm, last, analysis.block_outputs[last])
        else:
            aggressive = reuse(gm, cached_regions(analysis, config))
        return {FRESH: fresh(gm, cached_regions(analysis, config), tokenwise, selection, config.seed, keep,
                             value_nodes(analysis)),
                **self.partial_variants(gm, analysis, config, selection), AGGRESSIVE: aggressive}

    def schedule(self, config):
        buckets = step_buckets(config, self.cached_steps(config))
        return [buckets[s][0] if kind == "partial" else kind for s, kind in enumerate(self._kinds(config))]
