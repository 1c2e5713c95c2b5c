"""cleanup: a copy of the captured graph with dead code removed; the `none` policy's only pass."""
from __future__ import annotations

import torch.fx as fx

from .graph_edit import copy_module, finish


def cleanup(gm: fx.GraphModule) -> fx.GraphModule:
    return finish(copy_module(gm))
