"""Any graph Dynamo hands over (issue 20): nested and wrapped blocks, block frames, graph breaks,
lifted constants, symbolic shapes, and a loud report when caching saves little."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

from tokencache.compiler.blocks import ROOT, find_blocks, is_list_entry


def _blocks(ops: list[tuple[str, str]]) -> list[str]:
    """find_blocks on a graph of (module path, op) nodes: op "attn" (SDPA) or "linear"."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    nodes, paths = [], {}
    for path, op in ops:
        target = F.scaled_dot_product_attention if op == "attn" else F.linear
        node = graph.call_function(target, (x, x, x) if op == "attn" else (x, x))
        nodes.append(node)
        paths[node.name] = path
    return find_blocks(nodes, paths)


def test_blocks_are_innermost_numbered_modules_holding_an_attention():
    unet = "down_blocks.1.attentions.0.transformer_blocks.0"
    assert _blocks([("down_blocks.0.resnets.0.conv1", "linear"), (f"{unet}.attn1", "attn"), (f"{unet}.ff.net.0.proj", "linear"),
                    ("mid_block.attentions.0.transformer_blocks.0.attn1", "attn")]) == \
        [unet, "mid_block.attentions.0.transformer_blocks.0"]
    dit = [("transformer_blocks.0.attn.to_q", "linear"), ("transformer_blocks.0.attn", "attn"),
           ("transformer_blocks.0.attn.to_out.0", "linear"), ("transformer_blocks.0.ff.net.0.proj", "linear"),
           ("transformer_blocks.0.ff.net.2", "linear"), ("transformer_blocks.1.attn", "attn")]
    assert _blocks(dit) == ["transformer_blocks.0", "transformer_blocks.1"]
    # the attention ops run in a numbered module itself: that is an attention layer, not a block
    assert _blocks([("blocks.2.attns.0", "attn"), ("blocks.2.attns.0.to_q", "linear")]) == ["blocks.2"]


def test_sublayers_are_never_blocks():
    """A block's own frame (module paths relative to the block, as after a graph break): the whole
    graph is the block, not its feed-forward's `net.0`."""
    frame = [("norm1.linear", "linear"), ("attn.to_q", "linear"), ("attn", "attn"), ("attn.to_out.0", "linear"),
             ("ff.net.0.proj", "linear"), ("ff.net.2", "linear")]
    assert _blocks(frame) == [ROOT]
    # the rest of a block after a break inside its attention: no attention, no block at all
    assert _blocks([("ff.net.0.proj", "linear"), ("ff.net.2", "linear"), ("ff_context.net.0.proj", "linear")]) == []
    assert not is_list_entry("ff.net.0") and is_list_entry("down_blocks.1.attentions.0") and is_list_entry("blocks.0")


def test_feed_forward_only_blocks_and_wrappers():
    assert _blocks([("blocks.0.ff.net.0.proj", "linear"), ("blocks.0.ff.net.2", "linear"), ("blocks.1.ff.0", "linear")]) == \
        ["blocks.0", "blocks.1"]
    # HiDream wraps each block: double_stream_blocks.0.block holds everything
    wrapped = [("double_stream_blocks.0.block.attn1", "attn"), ("double_stream_blocks.0.block.ff_i.w1", "linear"),
               ("double_stream_blocks.0.block.adaLN_modulation.1", "linear")]
    assert _blocks(wrapped) == ["double_stream_blocks.0.block"]
