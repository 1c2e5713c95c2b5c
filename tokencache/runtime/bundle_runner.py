"""Replay whole generations from a bundle: the manifest alone says which variant runs at each step
and how state flows. `BundleReplay` holds what every backend shares (input checks, schedule, state
wiring); `OnnxBundleRunner` runs the variants with onnxruntime through I/O binding, so state stays
in OrtValues on the provider's device between steps (on the GPU with the CUDA provider).

Steps, call positions and generations follow the same rules as the PyTorch runtime (a Session:
runtime/clock.py, runtime/session.py), with the same per-thread state and explicit generations
(`with tokencache.generation(runner, steps=N):`)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from ..config import CacheConfig
from ..exporters.manifest import BundleError, check_state, load_manifest
from ..policies import get_policy
from .generation import active_generation
from .session import Schedules, Session

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def ort_session(path: Path, providers: list[str], in_turns: bool):
    """An onnxruntime session for one variant. `in_turns`: several variant sessions run one after
    another in this process. A session's intra-op threads spin-wait after each run and would steal
    the cores from the next variant's session (2 cores: a fresh step took 33 ms with spinning,
    15.5 ms without; a lone session is faster with it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if in_turns:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers)


def latent_input(signature: dict, timestep: str | None) -> str | None:
    """The input holding the latent (the warm-up rule compares it): as runtime.find_latent does."""
    from .runtime import LATENT_NAMES

    names = [n for n, s in signature.items() if n != timestep and s["dtype"].startswith(("float", "bfloat"))]
    return next((n for n in names if n in LATENT_NAMES), next((n for n in names if len(signature[n]["shape"]) >= 3), None))


class BundleInputError(ValueError):
    """An input does not match the bundle's signature; the message names it."""


def _dtype_name(value) -> str:
    return str(value.dtype).replace("torch.", "")


class BundleReplay:
    """Schedule and state wiring of a bundle; subclasses say how values live and how a variant runs:
    `_to_device`, `_zeros`, `_shape_dtype`, `_run(variant, feeds) -> {output name: value}`, `_to_output`."""

    def __init__(self, bundle: str | Path, verify: bool = True):
        self.dir = Path(bundle)
        self.manifest = load_manifest(self.dir, verify=verify)
        try:
            self.config = CacheConfig(**self.manifest["config"])
        except (TypeError, ValueError) as e:
            raise BundleError(f"{self.dir / 'manifest.json'}: field 'config' is not a tokencache configuration: {e}") from e
        self.policy = get_policy(self.manifest["policy"])
        self.schedules = Schedules(self.policy, self.config, self.manifest["variants"])
        self.signature = {s["name"]: s for s in self.manifest["signature"]["inputs"]}
        self.latent = latent_input(self.signature, self.manifest["timestep_input"])
        self._threads: dict[int, Session] = {}
        self._lock = threading.Lock()

    def check_inputs(self, inputs: dict) -> dict:
        """The inputs, unchanged, once their names, shapes and dtypes match the manifest's signature."""
        missing = sorted(set(self.signature) - set(inputs))
        extra = sorted(set(inputs) - set(self.signature))
        if missing or extra:
            raise BundleInputError(f"inputs must be exactly {sorted(self.signature)}; missing {missing}, unexpected {extra}")
        for name, value in inputs.items():
            if not isinstance(value, (torch.Tensor, np.ndarray)):
                raise BundleInputError(f"input {name!r} must be a torch.Tensor or numpy array, got {type(value).__name__}")
            spec = self.signature[name]
            if list(value.shape) != spec["shape"] or _dtype_name(value) != spec["dtype"]:
                raise BundleInputError(f"input {name!r} has shape {list(value.shape)} {_dtype_name(value)}; the bundle "
                                       f"was exported for {spec['shape']} {spec['dtype']}")
        return inputs

    @property
    def session(self) -> Session:
        """This thread's implicit session (its state, calls and clock)."""
        ident = threading.get_ident()
        with self._lock:
            session = self._threads.get(ident)
            if session is None:
                alive = {t.ident for t in threading.enumerate()}
                for gone in [i for i in self._threads if i not in alive]:
                    del self._threads[gone]
                session = self._threads[ident] = Session(self.schedules, self.config.num_steps)
        return session

    def _session(self) -> Session:
        handle = active_generation(self)
        if handle is None:
            return self.session
        session = handle.sessions.get(id(self))
        if session is None:
            session = handle.sessions[id(self)] = Session(self.schedules, handle.steps(self.config.num_steps),
                                                          explicit=True)
        return session

    def new_generation(self) -> None:
        self.session.reset()

    def __call__(self, **inputs) -> list:
        self.check_inputs(inputs)
        key = self.manifest["timestep_input"]
        t = float(np.asarray(inputs[key]).reshape(-1)[0]) if key else None
        session = self._session()
        call = session.begin(t, inputs.get(self.latent))
        variant, step, state = call.variant, call.step, call.state
        spec = self.manifest["variants"][variant]
        feeds = {f"input.{name}": self._to_device(value) for name, value in inputs.items()}
        for k in spec["state_in"]:
            if k not in state:
                if k not in spec["state_init"]:
                    raise BundleError(f"variant {variant!r} needs state {k!r} that no earlier step produced")
                state[k] = self._zeros(spec["state_init"][k]["shape"], spec["state_init"][k]["dtype"])
            feeds[f"state.{k}"] = state[k]
        if spec["host_in"]:
            host = self.policy.host_inputs(variant, step, call.fresh_steps, self.config)
            feeds.update({f"host.{name}": self._to_device(host[name]) for name in spec["host_in"]})
        outs = self._run(variant, feeds)
        for k in spec["state_out"]:
            value = outs[f"new_state.{k}"]
            check_state(self.manifest, k, *self._shape_dtype(value))
            state[k] = value
        return [self._to_output(outs[name]) for name in spec["outputs"] if name.startswith("output.")]


class OnnxBundleRunner(BundleReplay):
    """onnxruntime: CUDA provider where onnxruntime has one, else CPU. Model outputs come back as
    numpy arrays; state never leaves the provider's device."""

    def __init__(self, bundle: str | Path, providers: list[str] | None = None, verify: bool = True):
        import onnxruntime as ort

        super().__init__(bundle, verify)
        available = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        unknown = [p for p in self.providers if p not in available]
        if unknown:
            raise ValueError(f"onnxruntime provider {unknown[0]!r} is not available here; available: {available}")
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self._ort = ort
        self._sessions: dict = {}

    def _ort_session(self, variant: str):
        if variant not in self._sessions:
            with self._lock:                        # threads share the runner: create each session once
                if variant not in self._sessions:
                    self._sessions[variant] = self._new_ort_session(variant)
        return self._sessions[variant]

    def _new_ort_session(self, variant: str):
        path = self.dir / self.manifest["variants"][variant]["file"]
        session = ort_session(path, self.providers, in_turns=len(self.manifest["variants"]) > 1)
        self._check_state_inputs(path, session)
        return session

    def _check_state_inputs(self, path: Path, session) -> None:
        """The ONNX file's state inputs must have the shapes the manifest declares for that state."""
        for arg in session.get_inputs():
            if not arg.name.startswith("state."):
                continue
            key = arg.name[len("state."):]
            declared = self.manifest["state"].get(key)
            if declared is not None and list(arg.shape) != declared["shape"]:
                raise BundleError(f"{path.name}: state tensor {key!r} is {list(arg.shape)} in the ONNX file; the "
                                  f"manifest declares {declared['shape']}")

    def _to_device(self, value):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def _zeros(self, shape, dtype):
        return self._to_device(np.zeros(shape, dtype=dtype))

    def _shape_dtype(self, value):
        return value.shape(), _ORT_TYPES.get(value.data_type(), value.data_type())

    def _to_output(self, value):
        return value.numpy()

    def _run(self, variant: str, feeds: dict) -> dict:
        session = self._ort_session(variant)
        outputs = self.manifest["variants"][variant]["outputs"]
        binding = session.io_binding()
        for arg in session.get_inputs():            # onnxruntime may have pruned unused inputs
            binding.bind_ortvalue_input(arg.name, feeds[arg.name])
        for name in outputs:                        # allocated by onnxruntime on the provider's device
            binding.bind_output(name, self.device, 0)
        session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.get_outputs()))


def bind_like(runner: BundleReplay, model: torch.nn.Module, tuple_output: bool = True):
    """A callable with `model.forward`'s signature that runs the bundle (any BundleReplay): arguments
    are bound to parameter names, nested dicts flattened to the manifest's dotted names, None dropped;
    outputs are torch tensors on the inputs' device."""
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
        device = next(iter(inputs.values())).device        # outputs come back where the inputs were
        outs = tuple(torch.as_tensor(o).to(device) for o in runner(**inputs))
        return outs if tuple_output else outs[0]
    return call
