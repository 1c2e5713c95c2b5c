"""The named pass pipeline (tokencache/passes/pipeline.py): order, stages, switches, and the checks
that name the pass which broke a graph."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx

from tokencache.passes import pipeline
from tokencache.passes.checks import PassCheckError, check_graph, wiring_problem
from tokencache.passes.graph_edit import add_state_input, add_state_outputs, copy_module, finish
from tokencache.passes.pipeline import PASS_NAMES, PassContext, passes_for, run_stage
from tokencache.switches import current, switches

onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)

    def forward(self, x):        # F.linear, as Dynamo records it (symbolic_trace keeps modules as calls)
        F = torch.nn.functional
        return F.linear(F.gelu(F.linear(x, self.a.weight, self.a.bias)), self.b.weight, self.b.bias)


def traced() -> fx.GraphModule:
    gm = fx.symbolic_trace(Net().eval())
    return copy_module(gm)          # with the wiring meta every pass expects


def targets(gm) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_pipeline_order_and_stages():
    assert PASS_NAMES == ("dead_chunks", "onednn_linear", "inplace_cache", "noop_squeeze")
    assert {p.stage for p in pipeline.PIPELINE} == set(pipeline.STAGES)
    names = lambda ctx: [p.name for p in passes_for(ctx)]          # noqa: E731
    assert names(PassContext("variant")) == ["dead_chunks"]
    assert names(PassContext("compile")) == []                     # not inductor on a CPU
    assert names(PassContext("compile", cpu_matmul="aten")) == ["inplace_cache"]
    assert names(PassContext("compile", cpu_matmul="onednn_packed")) == ["onednn_linear", "inplace_cache"]
    assert names(PassContext("export")) == ["noop_squeeze"]
    with switches(disabled={"inplace_cache"}):
        assert names(PassContext("compile", cpu_matmul="onednn")) == ["onednn_linear"]
    assert names(PassContext("compile", cpu_matmul="onednn")) == ["onednn_linear", "inplace_cache"]
    with pytest.raises(ValueError, match="unknown pipeline stage"):
        run_stage(traced(), PassContext("later"))


def test_switches_are_scoped_and_checked():
    assert current().disabled == frozenset() and current().fuse_gelu
    with switches(fuse_gelu=False, early_gather=False):
        assert not current().fuse_gelu and not current().early_gather
    assert current().fuse_gelu and current().early_gather
    with switches(disabled={"inplace"}), pytest.raises(ValueError, match="unknown pipeline pass"):
        passes_for(PassContext("compile", cpu_matmul="aten"))
    with pytest.raises(TypeError):
        with switches(no_such_switch=True):
            pass


@onednn
def test_compile_stage_runs_onednn_linear_and_leaves_its_input_alone():
    gm = traced()
    before = targets(gm)
    out = run_stage(gm, PassContext("compile", cpu_matmul="onednn"))
    assert targets(gm) == before                                    # pure: the input is untouched
    assert torch.nn.functional.gelu not in targets(out)            # fused into the first linear
    assert targets(out).count(torch.ops.tokencache.linear.default) == 2
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(out(x), gm(x), rtol=1e-5, atol=1e-5)
    with switches(fuse_gelu=False):
        unfused = run_stage(gm, PassContext("compile", cpu_matmul="onednn"))
    assert torch.nn.functional.gelu in targets(unfused)


def test_wiring_check_names_the_pass_that_broke_it():
    def forgets_a_state_output(gm):
        gm = copy_module(gm)
        add_state_input(gm, "cache:a", ((1,), torch.float32))
        gm.meta["tokencache"]["state_out"].append("cache:a")     # declared, but never added to the outputs
        return finish(gm)

    with pytest.raises(PassCheckError, match=r"after pass forgets_a_state_output\(\).*1 graph outputs"):
        forgets_a_state_output(traced())


def test_wiring_check_accepts_what_the_helpers_build():
    gm = copy_module(traced())
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    add_state_input(gm, "cache:a", ((1,), torch.float32))
    add_state_outputs(gm, {"cache:a": x})
    assert wiring_problem(gm) is None
    check_graph(gm, after="test")
    gm.meta["tokencache"]["state_init"]["cache:b"] = ((1,), torch.float32)
    assert "state_init" in wiring_problem(gm)
    del gm.meta["tokencache"]
    assert "missing" in wiring_problem(gm)
