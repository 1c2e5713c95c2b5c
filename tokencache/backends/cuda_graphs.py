"""inner="cudagraphs": an inductor-compiled variant replayed as a CUDA graph.

A small transformer step on a GPU is launch-bound: a token-wise step launches more kernels than
it saves FLOPs for (score, top-K, gather, scatter), so without graphs its FLOP savings never show.
Each variant is captured once per model instance and replayed:

- parameters are read in place: their addresses are baked into the graph, so a graph belongs to
  one set of parameter tensors (another model instance of the same architecture gets its own);
- every other input (latents, timestep, conditioning, cache state, host inputs) is copied into
  the graph's static input buffers before the replay;
- outputs are cloned after the replay, because the next replay overwrites the static outputs
  (classifier-free guidance as two calls replays the same graph twice per step, and the runtime
  keeps state of both call positions).

Inductor's own "reduce-overhead" mode (CUDA graph trees) is not used: its outputs are only valid
until the next replay of the tree, and the runtime keeps cache state across steps.
"""
from __future__ import annotations

import torch

from .inner import parameter_key


class CudaGraphVariant:
    """Callable like the compiled variant `fn`; `param_positions`: args that are parameters."""

    def __init__(self, fn, param_positions: list[int], pool=None, warmup: int = 2):
        self.fn = fn
        self.param_positions = list(param_positions)
        self.params = set(param_positions)
        self.pool = pool
        self.warmup = warmup
        self.graphs: dict[tuple, tuple] = {}   # parameter addresses -> (graph, static inputs, static outputs)

    def __call__(self, *args):
        key = parameter_key(args, self.param_positions)
        if key not in self.graphs:
            self.graphs[key] = self._capture(args)
        graph, static_in, static_out = self.graphs[key]
        for i, (buf, arg) in enumerate(zip(static_in, args)):
            if i in self.params:
                continue
            if isinstance(buf, torch.Tensor):
                buf.copy_(arg)
            elif buf != arg:
                raise RuntimeError(f"tokencache (inner='cudagraphs'): non-tensor input {i} changed from "
                                   f"{buf!r} to {arg!r}; a captured CUDA graph cannot follow it")
        graph.replay()
        return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in static_out)

    def _capture(self, args):
        static_in = [a if i in self.params or not isinstance(a, torch.Tensor) else a.clone() for i, a in enumerate(args)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(self.warmup):        # lazy kernel loading and autotuning stay out of the capture
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.no_grad():
            static_out = self.fn(*static_in)
        return graph, static_in, tuple(static_out)


def on_cuda(args) -> bool:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return bool(tensors) and all(t.is_cuda for t in tensors)
