"""Replay whole generations from a bundle with onnxruntime: the manifest alone says which variant
runs at each step and how state flows. State stays in OrtValues between steps (on the GPU with the
CUDA provider, where onnxruntime has one), so no host copies happen between variants."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import CacheConfig
from ..exporters.manifest import BundleError, check_state, load_manifest
from ..policies import get_policy
from .session import Session


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


class BundleInputError(ValueError):
    """An input does not match the bundle's signature; the message names it."""


class OnnxBundleRunner:
    def __init__(self, bundle: str | Path, providers: list[str] | None = None, verify: bool = True):
        import onnxruntime as ort

        self.dir = Path(bundle)
        self.manifest = load_manifest(self.dir, verify=verify)
        self.config = CacheConfig(**self.manifest["config"])
        self.policy = get_policy(self.manifest["policy"])
        available = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.session = Session(self.config.num_steps)
        self._ort = ort
        self._sessions: dict = {}
        self.signature = {s["name"]: s for s in self.manifest["signature"]["inputs"]}

    def _ort_session(self, variant: str):
        if variant not in self._sessions:
            path = self.dir / self.manifest["variants"][variant]["file"]
            self._sessions[variant] = self._ort.InferenceSession(str(path), providers=self.providers)
        return self._sessions[variant]

    def _value(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def check_inputs(self, inputs: dict) -> dict[str, np.ndarray]:
        missing = sorted(set(self.signature) - set(inputs))
        extra = sorted(set(inputs) - set(self.signature))
        if missing or extra:
            raise BundleInputError(f"inputs must be exactly {sorted(self.signature)}; missing {missing}, unexpected {extra}")
        arrays = {}
        for name, value in inputs.items():
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            spec = self.signature[name]
            if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
                raise BundleInputError(f"input {name!r} has shape {list(array.shape)} {array.dtype}; the bundle was "
                                       f"exported for {spec['shape']} {spec['dtype']}")
            arrays[name] = array
        return arrays

    def new_generation(self) -> None:
        self.session.reset()

    def __call__(self, **inputs) -> list[np.ndarray]:
        arrays = self.check_inputs(inputs)
        key = self.manifest["timestep_input"]
        t = float(arrays[key].reshape(-1)[0]) if key else None
        schedule = self.manifest["schedule"]
        variant, step, state = self.session.begin(t, lambda s: schedule[s] if s < len(schedule) else schedule[0])
        spec = self.manifest["variants"][variant]
        feeds = {f"input.{name}": self._value(a) for name, a in arrays.items()}
        for k in spec["state_in"]:
            if k not in state:
                if k not in spec["state_init"]:
                    raise BundleError(f"variant {variant!r} needs state {k!r} that no earlier step produced")
                init = spec["state_init"][k]
                state[k] = self._value(np.zeros(init["shape"], dtype=init["dtype"]))
            feeds[f"state.{k}"] = state[k]
        host = self.policy.host_inputs(variant, step, self.session.fresh_steps, self.config) if spec["host_in"] else {}
        for name in spec["host_in"]:
            feeds[f"host.{name}"] = self._value(host[name].numpy())
        session = self._ort_session(variant)
        wanted = {i.name for i in session.get_inputs()}      # onnxruntime may prune unused inputs
        outs = session.run_with_ort_values(spec["outputs"], {k: v for k, v in feeds.items() if k in wanted})
        num = len(spec["outputs"]) - len(spec["state_out"])
        for k, value in zip(spec["state_out"], outs[num:]):
            check_state(self.manifest, k, value.shape(), _ORT_TYPES.get(value.data_type(), value.data_type()))
            state[k] = value
        self.session.calls[variant] += 1
        return [o.numpy() for o in outs[:num]]


def bind_like(runner: OnnxBundleRunner, model: torch.nn.Module, tuple_output: bool = True):
    """A callable with `model.forward`'s signature that runs the bundle: arguments are bound to
    parameter names, nested dicts flattened to the manifest's dotted names, None dropped."""
    import inspect

    signature = inspect.signature(model.forward)

    def flatten(prefix, value, out):
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}", v, out)
        elif isinstance(value, torch.Tensor) and prefix in runner.signature:
            out[prefix] = value

    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        inputs: dict = {}
        for name, value in bound.arguments.items():
            flatten(name, value, inputs)
        outs = tuple(torch.from_numpy(o) for o in runner(**inputs))
        return outs if tuple_output else outs[0]
    return call
