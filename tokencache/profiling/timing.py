"""Wall-clock measurement done the same way everywhere: warm up, interleave, take medians.

The machines are shared and noisy, so configurations are never timed in separate blocks: every
round runs each configuration once (A B A B ...), and ratios are medians over rounds.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(run_step: Callable[[int], object], steps: int, device: torch.device | None = None) -> list[float]:
    """Seconds per step of one generation; `run_step(i)` runs step i."""
    times = []
    for i in range(steps):
        _sync(device)
        start = time.perf_counter()
        run_step(i)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def interleaved(generations: dict[str, Callable[[], list[float]]], rounds: int, warmup: int = 1,
                progress=None) -> dict[str, list[list[float]]]:
    """Run every configuration once per round, `warmup` untimed rounds first.

    Returns name -> per-round list of per-step seconds."""
    for _ in range(warmup):
        for fn in generations.values():
            fn()
    results: dict[str, list[list[float]]] = {name: [] for name in generations}
    for _ in range(rounds):
        for name, fn in generations.items():
            results[name].append(fn())
            if progress is not None:
                progress.update(1)
    return results


def median_total(rounds: list[list[float]]) -> float:
    return statistics.median(sum(r) for r in rounds)


def median_ratio(numerator: list[list[float]], denominator: list[list[float]]) -> float:
    """Median over rounds of total(numerator) / total(denominator), paired round by round."""
    return statistics.median(sum(a) / sum(b) for a, b in zip(numerator, denominator))


def per_variant(rounds: list[list[float]], schedule: list[str]) -> dict[str, dict[str, float]]:
    """Median and p90 latency of each variant over all rounds, from the step -> variant schedule."""
    by_name: dict[str, list[float]] = {}
    for times in rounds:
        for step, seconds in enumerate(times):
            by_name.setdefault(schedule[step % len(schedule)], []).append(seconds)
    out = {}
    for name, values in by_name.items():
        values = sorted(values)
        out[name] = {"median_s": statistics.median(values),
                     "p90_s": values[min(len(values) - 1, int(0.9 * len(values)))], "count": len(values)}
    return out
