"""Replay a bundle's TensorRT engines. State lives in CUDA tensors: one engine's state outputs are
bound as the next engine's inputs, with no host copies between steps. Needs TensorRT and a GPU
(`tokencache.exporters.tensorrt.tensorrt_missing()` says why not)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import CacheConfig
from ..exporters.manifest import BundleError, load_manifest
from ..exporters.tensorrt import TensorRTUnavailable, tensorrt_missing
from ..policies import get_policy
from .session import Session


class TensorRTBundleRunner:
    def __init__(self, bundle: str | Path):
        reason = tensorrt_missing()
        if reason:
            raise TensorRTUnavailable(reason)
        self.dir = Path(bundle)
        self.manifest = load_manifest(self.dir)
        missing = [n for n, v in self.manifest["variants"].items() if "engine" not in v]
        if missing:
            raise BundleError(f"variant {missing[0]!r} has no engine; run `tokencache export --tensorrt` first")
        self.config = CacheConfig(**self.manifest["config"])
        self.policy = get_policy(self.manifest["policy"])
        self.session = Session(self.config.num_steps)
        self._runners: dict = {}

    def _runner(self, variant: str):
        if variant not in self._runners:
            from polygraphy.backend.common import BytesFromPath
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner

            plan = self.dir / self.manifest["variants"][variant]["engine"]["file"]
            runner = TrtRunner(EngineFromBytes(BytesFromPath(str(plan))))
            runner.activate()
            self._runners[variant] = runner
        return self._runners[variant]

    def __call__(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        key = self.manifest["timestep_input"]
        t = float(inputs[key].reshape(-1)[0]) if key else None
        schedule = self.manifest["schedule"]
        variant, step, state = self.session.begin(t, lambda s: schedule[s] if s < len(schedule) else schedule[0])
        spec = self.manifest["variants"][variant]
        feeds = {f"input.{k}": v.cuda() for k, v in inputs.items()}
        for k in spec["state_in"]:
            if k not in state:
                init = spec["state_init"][k]
                state[k] = torch.zeros(init["shape"], dtype=getattr(torch, init["dtype"]), device="cuda")
            feeds[f"state.{k}"] = state[k]
        host = self.policy.host_inputs(variant, step, self.session.fresh_steps, self.config) if spec["host_in"] else {}
        feeds.update({f"host.{k}": host[k].cuda() for k in spec["host_in"]})
        # torch CUDA tensors in, torch CUDA tensors out: nothing is copied to the host
        outs = self._runner(variant).infer(feeds, copy_outputs_to_host=False)
        for k in spec["state_out"]:
            state[k] = outs[f"new_state.{k}"]
        self.session.calls[variant] += 1
        return [outs[name] for name in spec["outputs"] if name.startswith("output.")]
