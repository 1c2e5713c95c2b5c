"""none: plain compilation of the captured graph (the baseline)."""
from __future__ import annotations

from ..passes import cleanup


class NonePolicy:
    name = "none"

    def check(self, analysis, config):
        return None

    def variants(self, gm, analysis, config):
        return {"plain": cleanup(gm)}

    def schedule(self, config):
        return ["plain"] * config.num_steps

    def computed_tokens(self, analysis, config):
        return {r.name: r.tokens for r in analysis.regions} if analysis else {}

    def host_inputs(self, variant, step, fresh_steps, config):
        return {}
