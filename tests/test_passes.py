"""One test per policy pass (tokencache/passes/*.py) on the captured reference DiT: the ops it must
add, the nodes it must remove, its state wiring (passes/checks.py). The pipeline passes
(dead_chunks, onednn_linear, inplace_cache, noop_squeeze) have theirs in test_units.py and
test_pass_pipeline.py."""
from __future__ import annotations

import pytest
import torch

from tokencache.compiler.regions import analyse
from tokencache.config import CacheConfig
from tokencache.ops import cluster_ops, token_ops
from tokencache.passes import cleanup, fresh, partial, reuse
from tokencache.passes.checks import check_graph
from tokencache.passes.cluster_partial import cluster_partial
from tokencache.passes.cluster_store import cluster_store
from tokencache.passes.forecast import forecast
from tokencache.passes.graph_edit import copy_module, wiring
from tokencache.passes.skip import LAST_BLOCK_KEY, skip
from tokencache.passes.taylor_store import taylor_store
from test_units import _capture


@pytest.fixture(scope="module")
def captured():
    gm = copy_module(_capture("reference"))      # the wiring meta every pass expects
    return gm, analyse(gm)


def targets(gm) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def names(gm) -> set[str]:
    return {n.name for n in gm.graph.nodes}


def region(analysis, name):
    return next(r for r in analysis.regions if r.name == name)


def checked(gm, pass_name):
    check_graph(gm, after=pass_name)
    return gm


def test_cleanup(captured):
    gm, _ = captured
    out = checked(cleanup(gm), "cleanup")
    assert targets(out) == targets(gm)
    assert wiring(out)["state_in"] == wiring(out)["state_out"] == []


def test_fresh(captured):
    gm, analysis = captured
    mlp = region(analysis, "blocks.0.mlp")
    out = checked(fresh(gm, analysis.regions, [mlp]), "fresh")
    assert targets(out).count(token_ops.snapshot) == 1 and targets(out).count(token_ops.fresh_staleness) == 1
    assert wiring(out)["state_out"] == [f"cache:{r.name}" for r in analysis.regions] + \
        ["ref:blocks.0.mlp", "stale:blocks.0.mlp"]
    assert wiring(out)["state_in"] == []
    assert names(gm) <= names(out)                  # everything is still computed


def test_reuse(captured):
    gm, analysis = captured
    attn = region(analysis, "blocks.0.attn")
    out = checked(reuse(gm, [attn]), "reuse")
    assert wiring(out)["state_in"] == ["cache:blocks.0.attn"] and wiring(out)["state_out"] == []
    assert attn.attention not in names(out) and not set(attn.nodes) & names(out)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert targets(out).count(sdpa) == targets(gm).count(sdpa) - 1   # the other block still attends


def test_partial(captured):
    gm, analysis = captured
    mlp = region(analysis, "blocks.0.mlp")
    out = checked(partial(gm, [mlp], CacheConfig(policy="toca", ratio=0.25)), "partial")
    assert wiring(out)["state_in"] == ["cache:blocks.0.mlp", "ref:blocks.0.mlp", "stale:blocks.0.mlp"]
    assert set(wiring(out)["state_out"]) == {"stale:blocks.0.mlp", "cache:blocks.0.mlp"}
    for op in (token_ops.token_scores, token_ops.top_tokens, token_ops.gather_rows, token_ops.scatter_rows):
        assert op in targets(out), op.__name__
    assert token_ops.scatter_rows_ not in targets(out)         # in place only in the compile stage


def test_forecast(captured):
    gm, analysis = captured
    out = checked(forecast(gm, analysis.regions), "forecast")
    assert targets(out).count(token_ops.taylor_predict) == len(analysis.regions)
    assert wiring(out)["host_in"] == ["taylor_coef"]
    assert not any(set(r.nodes) & names(out) for r in analysis.regions)   # no region is computed


def test_taylor_store(captured):
    gm, analysis = captured
    out = checked(taylor_store(gm, analysis.regions, 2, torch.float32), "taylor_store")
    assert targets(out).count(token_ops.taylor_update) == len(analysis.regions)
    assert wiring(out)["host_in"] == ["taylor_dist", "taylor_valid"]
    assert set(wiring(out)["state_init"]) == set(wiring(out)["state_in"]) == set(wiring(out)["state_out"])


def test_cluster_store_and_partial(captured):
    gm, analysis = captured
    block = analysis.blocks[0]
    stored = checked(cluster_store(taylor_store(gm, analysis.regions, 1, torch.float32),
                                   analysis.block_outputs[block], 4, 2, 0), "cluster_store")
    assert cluster_ops.kmeans_labels in targets(stored) and cluster_ops.kmeans_centroids in targets(stored)
    mlp = region(analysis, "blocks.0.mlp")
    others = [r for r in analysis.regions if r is not mlp]
    out = checked(cluster_partial(gm, others, [mlp], 4, 0.5), "cluster_partial")
    for op in (cluster_ops.cluster_representatives, cluster_ops.propagate, token_ops.taylor_predict):
        assert op in targets(out), op.__name__


def test_skip(captured):
    gm, analysis = captured
    last = analysis.blocks[-1]
    out = checked(skip(gm, last, analysis.block_outputs[last]), "skip")
    assert wiring(out)["state_in"] == [LAST_BLOCK_KEY]
    earlier = [r for r in analysis.regions if r.block != last]
    assert earlier and not any(set(r.nodes) & names(out) for r in earlier)   # earlier blocks are dropped
