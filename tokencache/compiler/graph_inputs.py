"""Which graph placeholders are the user's inputs and which are the model's parameters.

Dynamo lifts parameters and buffers to placeholders; only their Dynamo *source* tells them apart
from user inputs (`L['self']...` vs `L['hidden_states']`). The source is lost by `deepcopy`, so this
runs on the captured graph before any pass copies it.

Dynamo also lifts tensors that are neither parameters nor buffers: plain tensor attributes of a
module (RoPE frequency tables: Z-Image's `rope_embedder.freqs_cis`, NucleusMoE's `pos_embed.pos_freqs`,
Kandinsky 5's `time_embeddings.freqs`) and globals. They are module state like parameters (kind
"param": passed in place, frozen into exports) but marked `constant`: they are not in
`model.parameters()`/`buffers()`, so they never identify the model a call belongs to.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..compat import placeholder_source

_ARG = re.compile(r"^L\['([^']+)'\]")
_KEY = re.compile(r"\['([^']+)'\]|\[(\d+)\]")


@dataclass(frozen=True)
class GraphInput:
    index: int          # position among the graph's placeholders (= the runtime's args)
    node: str           # placeholder node name
    kind: str           # "user" | "param"
    name: str           # user: argument path ("timestep", "added_cond_kwargs.resolution"); param: source
    constant: bool = False   # a lifted tensor that is neither a parameter nor a buffer (RoPE table, global)


def classify_inputs(gm: fx.GraphModule) -> list[GraphInput]:
    """One GraphInput per placeholder, in order."""
    inputs = []
    for index, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        source = placeholder_source(node)
        match = _ARG.match(source) if source else None
        # a parameter or buffer reached through another local than `self` is module state too:
        # diffusers' hooks (context parallelism, its caches) run forward in a function whose
        # closure holds the module (L['function_reference']...._parameters['weight'])
        if match and match.group(1) != "self" and not is_owned(source):
            rest = source[match.end():]
            keys = [a or b for a, b in _KEY.findall(rest)]
            inputs.append(GraphInput(index, node.name, "user", ".".join([match.group(1), *keys])))
        else:
            # Module state (L['self']...), globals, or an unknown source: never a per-call input.
            inputs.append(GraphInput(index, node.name, "param", source or node.name, constant=not is_owned(source)))
    return inputs


def is_owned(source: str | None) -> bool:
    """Whether a module-state source is a parameter or buffer (found in model.parameters()/buffers())."""
    return source is not None and ("._parameters[" in source or "._buffers[" in source)


def frame_owner(inputs: list[GraphInput], example_inputs, model) -> str | None:
    """The path inside `model` of the module whose forward the graph was traced from (the frame's
    `self`): a lifted parameter `L['self']...ff.net.0.weight` that is the model's
    `transformer_blocks.0.ff.net.0.weight` puts the frame in `transformer_blocks.0`. "" is the model
    itself; None when no parameter tells (no model, or a frame without `self`)."""
    if model is None:
        return None
    names = {id(t): n for n, t in (*model.named_parameters(), *model.named_buffers())}
    for gi in inputs:
        if gi.kind != "param" or gi.constant or not gi.name.startswith("L['self']"):
            continue
        full = names.get(id(example_inputs[gi.index]))
        relative = ".".join(a or b for a, b in _KEY.findall(gi.name[len("L['self']"):]))
        if full is not None and (full == relative or full.endswith("." + relative)):
            return full[:len(full) - len(relative)].rstrip(".")
    return None


def symbolic_inputs(example_inputs) -> list[int]:
    """Positions of SymInt/SymFloat example inputs: the graph was captured with dynamic shapes."""
    return [i for i, x in enumerate(example_inputs) if isinstance(x, (torch.SymInt, torch.SymFloat))]


def find_timestep(inputs: list[GraphInput], example_inputs, wanted: str) -> GraphInput | None:
    """The user input that carries the diffusion timestep: by name, else None.

    `wanted` is CacheConfig.timestep_input: "auto" tries the usual diffusers names.
    """
    users = [i for i in inputs if i.kind == "user"]
    names = ("timestep", "timesteps", "t", "sigma", "sigmas") if wanted == "auto" else (wanted,)
    for name in names:
        for gi in users:
            value = example_inputs[gi.index]
            if gi.name == name and isinstance(value, torch.Tensor) and value.numel() >= 1:
                return gi
    return None
