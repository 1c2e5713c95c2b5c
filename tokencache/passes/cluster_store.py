"""cluster_store: in a fresh graph, cluster the tokens leaving one block with k-means and keep the
labels (B, N) and centroids (B, K, C) as state; the centroids warm-start the next fresh step."""
from __future__ import annotations

import torch.fx as fx

from ..compat import example_value
from ..ops import cluster_ops, token_ops
from .graph_edit import add_state_input, add_state_outputs, copy_module, finish, node_by_name

LABELS, CENTROIDS, RNG = "clusters:labels", "clusters:centroids", "rng:clusters"


def cluster_store(gm: fx.GraphModule, tokens_node: str, clusters: int, iterations: int, seed: int) -> fx.GraphModule:
    gm = copy_module(gm)
    x = node_by_name(gm, tokens_node)
    batch, _, channels = example_value(x).shape
    previous = add_state_input(gm, CENTROIDS, init=((batch, clusters, channels), example_value(x).dtype))
    with gm.graph.inserting_after(x):
        labels = gm.graph.call_function(cluster_ops.kmeans_labels, (x, previous, iterations))
    with gm.graph.inserting_after(labels):
        centroids = gm.graph.call_function(cluster_ops.kmeans_centroids, (x, previous, iterations))
    with gm.graph.inserting_after(centroids):
        rng = gm.graph.call_function(token_ops.seed_generator, (x, seed))
    add_state_outputs(gm, {LABELS: labels, CENTROIDS: centroids, RNG: rng})
    return finish(gm)
