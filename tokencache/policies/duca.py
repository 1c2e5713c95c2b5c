"""duca (DuCa): between fresh steps, conservative (token-wise) and aggressive steps alternate:
odd distances from the last fresh step are conservative, even ones aggressive. Aggressive steps
reuse every region (FORA-like) or, with aggressive="skip", skip all blocks. Token selection is
random by default (in-graph, seeded, the same tokens for both CFG halves)."""
from __future__ import annotations

from ..passes import fresh, partial, reuse
from ..passes.skip import LAST_BLOCK_KEY, skip
from .base import FRESH, is_fresh_step
from .toca import TocaPolicy, split_regions


class DucaPolicy(TocaPolicy):
    name = "duca"

    def check(self, analysis, config):
        reason = super().check(analysis, config)
        if reason is None and config.aggressive == "skip" and analysis.blocks[-1] not in analysis.block_outputs:
            reason = f"aggressive='skip' needs one output tensor leaving block {analysis.blocks[-1]}"
        return reason

    def variants(self, gm, analysis, config):
        whole, tokenwise = split_regions(analysis, config)
        selection = config.selection_for(self.name)
        keep = {}
        if config.aggressive == "skip":
            last = analysis.blocks[-1]
            keep[LAST_BLOCK_KEY] = analysis.block_outputs[last]
            aggressive = skip(gm, last, analysis.block_outputs[last])
        else:
            aggressive = reuse(gm, analysis.regions)
        return {FRESH: fresh(gm, analysis.regions, tokenwise, selection, config.seed, keep),
                "partial": partial(reuse(gm, whole), tokenwise, config, selection),
                "aggressive": aggressive}

    def schedule(self, config):
        out, since = [], 0
        for step in range(config.num_steps):
            if is_fresh_step(step, config):
                out.append(FRESH)
                since = 0
            else:
                since += 1
                out.append("partial" if since % 2 == 1 else "aggressive")
        return out
