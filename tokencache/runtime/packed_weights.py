"""Pre-packed copies of CPU linear weights, for cpu_matmul="onednn_packed" (what "auto" picks for
float32 models on the CPU, backends/inner.py).

oneDNN computes a GEMM on weights in its own blocked layout. Handed a plain weight, it reorders
it on every call: 30-70 us per DiT-S weight on the 2-core machine of BENCHMARKS.md, more than a
tenth of a 128-row GEMM, which is what token-wise steps run. Keeping one packed copy per weight
removes the reorder for the memory of a second copy of every weight that runs as a GEMM.

A copy is reused while the weight is the same live tensor with the same storage and version
counter. In-place updates through the tensor itself (load_state_dict, optimiser steps,
`w.copy_(...)` under no_grad) bump the version and the weight is packed again on its next use.
Writes through `w.data` bypass the version counter (peft's LoRA merge, behind diffusers'
`fuse_lora`, is one: `weight.data += delta`), so the runtime also calls verify() when a generation
starts: it compares a fingerprint of each weight's bytes, taken when it was packed, and drops
copies whose weight changed. The fingerprint is the per-row sum of the weight's bit patterns as
integers (modulo 2^32): any change to one element changes its row's sum, and so does any other
write that does not leave every row's bit-pattern sum exactly as it was (a write that only permutes
values within a row does; after one, call `tokencache.drop_packed_weights(model)`). It reads each
weight once per generation: about 3 ms for the 81 MiB of DiT-S GEMM weights on the 2-core machine
of BENCHMARKS.md, where the packed copies save 70-126 ms of a 1.33-1.47 s 20-step generation. A write through
`.data` in the middle of a generation is seen at the next one, as cached features are.
A copy is freed with its weight.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..compat import onednn_pack_linear_weight, tensor_version


@dataclass
class _Entry:
    """A weight's packed copies, valid while the weight is this live tensor at this version and address."""
    ref: weakref.ref
    version: int
    data_ptr: int
    fingerprint: torch.Tensor
    copies: dict = field(default_factory=dict)     # row range (start, stop), or None for all rows -> copy


class PackedWeights:
    def __init__(self):
        self._entries: dict[int, _Entry] = {}       # id(weight) -> its entry
        self.packs = 0          # how many times a weight was packed (tests: reuse, repack on change)

    def get(self, weight: torch.Tensor, rows: int, part: tuple[int, int] | None = None) -> torch.Tensor:
        """The packed copy of `weight` (out_features, in_features), or of its rows part[0]..part[1]-1;
        `rows`: a row count it will multiply, which oneDNN takes as a hint for the layout."""
        entry = self._entry(weight)
        if entry is None or entry.version != tensor_version(weight) or entry.data_ptr != weight.data_ptr():
            key = id(weight)
            entry = self._entries[key] = _Entry(weakref.ref(weight, lambda _ref, key=key: self._forget(key, _ref)),
                                                tensor_version(weight), weight.data_ptr(), fingerprint(weight))
        packed = entry.copies.get(part)
        if packed is None:
            source = weight.detach() if part is None else weight.detach()[part[0]:part[1]]
            packed = entry.copies[part] = onednn_pack_linear_weight(source.contiguous(), rows)
            self.packs += 1
        return packed

    def verify(self, weights: Iterable[torch.Tensor]) -> int:
        """Drop the copies of those weights whose bytes changed since they were packed (a write
        through `.data`); returns how many weights were dropped. The next use packs them again."""
        stale = [w for w in weights
                 if (entry := self._entry(w)) is not None and not torch.equal(entry.fingerprint, fingerprint(w))]
        self.drop(stale)
        return len(stale)

    def _forget(self, key: int, ref: weakref.ref) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.ref is ref:
            del self._entries[key]

    def drop(self, weights: Iterable[torch.Tensor]) -> None:
        for w in weights:
            self._entries.pop(id(w), None)

    def clear(self) -> None:
        """Drop every packed copy (tests, between tests)."""
        self._entries.clear()

    def nbytes(self, weights: Iterable[torch.Tensor]) -> int:
        """Memory held by the packed copies of these weights (whole or row ranges)."""
        entries = [self._entry(w) for w in weights]
        return sum(p.numel() * p.element_size() for e in entries if e is not None for p in e.copies.values())

    def _entry(self, weight: torch.Tensor):
        """This weight's entry; None if it has none (ids are reused after a weight is freed, so an
        entry counts only while its weakref still points at this weight)."""
        entry = self._entries.get(id(weight))
        return entry if entry is not None and entry.ref() is weight else None


def fingerprint(weight: torch.Tensor) -> torch.Tensor:
    """Per-row sums of the weight's bit patterns, as integers modulo 2^32 (module docstring)."""
    bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[weight.element_size()]
    rows = weight.detach().reshape(weight.shape[0], -1).contiguous().view(bits)
    return rows.sum(1, dtype=torch.int32)


PACKED = PackedWeights()
