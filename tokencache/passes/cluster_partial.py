"""cluster_partial (ClusCa): a forecast graph in which every token-wise feed-forward region also
computes one representative token per cluster, writes it into its Taylor factor 0 and pulls the
cluster's members towards it with weight gamma; the result is then forecast as usual."""
from __future__ import annotations

import torch.fx as fx

from ..compiler.regions import Region
from ..compat import example_value
from ..ops import cluster_ops, token_ops
from .cluster_store import LABELS, RNG
from .forecast import forecast
from .graph_edit import add_state_input, add_state_outputs, finish, node_by_name, replace_uses_outside
from .partial import Emitter, region_on_rows
from .taylor_store import factors_key


def cluster_partial(gm: fx.GraphModule, forecast_only: list[Region], clustered: list[Region],
                    clusters: int, gamma: float) -> fx.GraphModule:
    gm = forecast(gm, forecast_only)                 # copies; adds the coefficient host input
    coef = node_by_name(gm, "host_taylor_coef")
    labels, rng = add_state_input(gm, LABELS), add_state_input(gm, RNG)
    all_factors = {r.name: add_state_input(gm, factors_key(r.name)) for r in clustered}
    emit = Emitter(gm.graph, [n for n in gm.graph.nodes if n.op == "placeholder"][-1])
    new_rng = emit(token_ops.next_random, rng)
    items = {RNG: new_rng}
    before = {n.name: n for n in gm.graph.nodes}
    for region in clustered:
        factors = all_factors[region.name]
        out = node_by_name(gm, region.output)
        emit.anchor = [n for n in gm.graph.nodes if n.name in set(region.nodes)][-1]
        weights = emit(token_ops.random_scores, new_rng, region.batch)
        index = emit(cluster_ops.cluster_representatives, labels, weights, clusters)
        _, rows, _, created = region_on_rows(gm, region, index, clusters, emit, before=before)
        factor0 = emit(cluster_ops.propagate, emit(token_ops.taylor_zero_order, factors), index, rows, labels, gamma)
        updated = emit(cluster_ops.replace_factor0, factors, factor0)
        predicted = emit(token_ops.taylor_predict, updated, coef, example_value(out).dtype)
        replace_uses_outside(out, predicted, set(region.nodes) | created)
        items[factors_key(region.name)] = updated
    add_state_outputs(gm, items)
    return finish(gm)
