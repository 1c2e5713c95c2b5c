"""One graph variant -> one ONNX file with parameters frozen in and explicit, stably named I/O.

Inputs: the model's user inputs ("input.<argument>"), then state ("state.<key>"), then host
values ("host.<name>"). Outputs: the model's outputs ("output.<i>"), then updated state ("new_state.<key>").
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.fx as fx

from ..passes.pipeline import PassContext, run_stage

EXPORTERS = ("dynamo", "torchscript")
OPSETS = (18, 19, 20)           # GatherElements/ScatterElements and LayerNormalization all exist from 18 on


class FrozenVariant(torch.nn.Module):
    """A variant graph with its parameter placeholders bound to buffers: forward takes only the
    user inputs, state and host values, in that order."""

    def __init__(self, gm: fx.GraphModule, kinds: list[str], example_inputs: list):
        super().__init__()
        self.gm = run_stage(gm, PassContext("export"))
        self.kinds = kinds
        for i, kind in enumerate(kinds):
            if kind == "param":
                self.register_buffer(f"param_{i}", example_inputs[i].detach().clone())

    def forward(self, *inputs):
        given = iter(inputs)
        args = [getattr(self, f"param_{i}") if kind == "param" else next(given) for i, kind in enumerate(self.kinds)]
        return tuple(self.gm(*args, *given))


def io_names(runtime, variant: str) -> tuple[list[str], list[str]]:
    wiring = runtime.variants[variant].meta["tokencache"]
    inputs = [f"input.{gi.name}" for gi in runtime.inputs if gi.kind == "user"]
    inputs += [f"state.{k}" for k in wiring["state_in"]] + [f"host.{h}" for h in wiring["host_in"]]
    outputs = [f"output.{i}" for i in range(wiring["num_outputs"])] + [f"new_state.{k}" for k in wiring["state_out"]]
    return inputs, outputs


def check_exporter(exporter: str, opset: int) -> None:
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if opset not in OPSETS:
        raise ValueError(f"opset must be one of {', '.join(map(str, OPSETS))}, got {opset!r}")


def export_variant(runtime, variant: str, example: list, path: Path, exporter: str = "dynamo", opset: int = 18) -> None:
    """`example`: values for the variant's non-parameter inputs, in io_names order."""
    module = FrozenVariant(runtime.variants[variant], [gi.kind for gi in runtime.inputs], runtime.example_inputs)
    export_frozen(module, example, path, *io_names(runtime, variant), exporter=exporter, opset=opset)


def export_frozen(module: FrozenVariant, example: list, path: Path, inputs: list[str], outputs: list[str],
                  exporter: str = "dynamo", opset: int = 18) -> None:
    """The one ONNX export of a frozen variant, for bundles and for the onnxruntime/TensorRT inner backends."""
    check_exporter(exporter, opset)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(example), str(path), input_names=inputs, output_names=outputs,
                          opset_version=opset, dynamo=exporter == "dynamo", external_data=False,
                          verbose=False)
