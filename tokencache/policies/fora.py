"""fora: between fresh steps every cached region is reused whole (FORA, ToCa with ratio 0)."""
from __future__ import annotations

from ..passes import fresh, reuse
from .base import FRESH, interval_schedule


class ForaPolicy:
    name = "fora"

    def check(self, analysis, config):
        return None if analysis.regions else "no cacheable regions"

    def variants(self, gm, analysis, config):
        return {FRESH: fresh(gm, analysis.regions, []), "reuse": reuse(gm, analysis.regions)}

    def schedule(self, config):
        return interval_schedule(config, "reuse")

    def computed_tokens(self, analysis, config):
        return {r.name: 0 for r in analysis.regions}

    def host_inputs(self, variant, step, fresh_steps, config):
        return {}
