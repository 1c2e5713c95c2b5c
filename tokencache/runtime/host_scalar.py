"""The timestep's value on the host, without a device-to-host read per call where the sampler allows.

The step clock needs each call's timestep as a Python number. `float(t)` of a GPU tensor waits for
every kernel queued before it: the host stops queueing the next step while the GPU runs this one.

Samplers usually pass a view of their schedule: diffusers pipelines call the transformer with
`t.expand(batch)`, where `t` is an element of `scheduler.timesteps` (DiT, PixArt, SD3, Wan,
CogVideoX). Such a view shares the storage of the schedule tensor (its `_base`). The value is then
read from a host copy of that storage, taken once per schedule (per base tensor and version: an
in-place write to the schedule makes a new copy), at the view's storage offset. A timestep computed
from the schedule (`t.expand(b).to(dtype)`, `t / 1000`, as Flux and Qwen-Image pipelines do) is no
view of it: that value is read from the device, once per call, and counted in `device_reads`.
Tensors on the CPU are read directly (no sync to avoid).
"""
from __future__ import annotations

import weakref

import torch

from ..compat import tensor_version

HOST_DEVICES = ("cpu",)     # tensors read directly; tests empty it to run the device path on the CPU


class HostScalars:
    def __init__(self):
        # id(base tensor) -> (weakref to it, its version, a CPU tensor over a copy of its storage)
        self._mirrors: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}
        self.device_reads = 0      # values read from a device tensor (one sync each)
        self.mirrored = 0          # host copies made of a schedule tensor

    def value(self, t) -> float:
        """The first element of `t` as a float."""
        if not isinstance(t, torch.Tensor):
            return float(t)
        if t.device.type in HOST_DEVICES or t.numel() == 0:
            return float(t.reshape(-1)[0])
        base = t._base
        if base is None:
            self.device_reads += 1
            return float(t.reshape(-1)[0])
        return float(self._mirror(base)[t.storage_offset()])

    def _mirror(self, base: torch.Tensor) -> torch.Tensor:
        entry = self._mirrors.get(id(base))
        if entry is not None and entry[0]() is base and entry[1] == tensor_version(base):
            return entry[2]
        storage = base.untyped_storage()
        host = torch.empty(0, dtype=base.dtype).set_(storage.cpu(), 0, (storage.nbytes() // base.element_size(),))
        key = id(base)
        self._mirrors[key] = (weakref.ref(base, lambda ref, key=key: self._forget(key, ref)), tensor_version(base), host)
        self.mirrored += 1
        return host

    def _forget(self, key: int, ref: weakref.ref) -> None:
        entry = self._mirrors.get(key)
        if entry is not None and entry[0] is ref:      # not a newer tensor that reused the id
            del self._mirrors[key]


HOST_SCALARS = HostScalars()
