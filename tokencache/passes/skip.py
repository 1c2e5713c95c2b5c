"""skip (DuCa aggressive, "skip"): every block is skipped; whatever follows the last block (final
norm, modulation with the current conditioning, output projection) runs on its cached output."""
from __future__ import annotations

import torch.fx as fx

from ..compiler.regions import module_path
from .graph_edit import add_state_input, copy_module, finish, node_by_name

LAST_BLOCK_KEY = "blocks_out"


def skip(gm: fx.GraphModule, last_block: str, last_block_output: str) -> fx.GraphModule:
    gm = copy_module(gm)
    cached = add_state_input(gm, LAST_BLOCK_KEY)
    out = node_by_name(gm, last_block_output)
    for user in list(out.users):
        path = module_path(user)
        if path != last_block and not path.startswith(last_block + "."):
            user.replace_input_with(out, cached)
    return finish(gm)   # every block feeds only the last one: dead-code elimination drops them all
