"""Timing and peak memory of one callable: CUDA events on GPU, perf_counter on CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Larger than the H100's 50 MB L2: zeroing it between repeats evicts the previous repeat's
# data, so every repeat reads its inputs from HBM as a layer inside a network would.
L2_FLUSH_BYTES = 256 * 1024 * 1024


def summarize(samples_ms: list[float]) -> dict:
    """Median with the 20th and 80th percentiles (the spread we quote) of timings in ms."""
    if not samples_ms:
        raise ValueError("no timing samples")
    samples = np.asarray(samples_ms, dtype=float)
    p20, median, p80 = np.percentile(samples, [20, 50, 80])
    return {"median": float(median), "p20": float(p20), "p80": float(p80),
            "min": float(samples.min()), "n": int(samples.size)}


@dataclass
class Timer:
    """Runs ``fn`` ``warmup`` times (compiling and autotuning happen there), then ``repeats``
    timed times; on CUDA each repeat is bracketed by events after an L2 flush."""

    device: str
    warmup: int
    repeats: int

    def __post_init__(self) -> None:
        self._flush = None
        if self.device == "cuda":
            self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")

    def samples(self, fn: Callable[[], object]) -> list[float]:
        """Milliseconds of each timed repeat of ``fn``."""
        for _ in range(self.warmup):
            fn()
        if self.device != "cuda":
            return self._cpu_samples(fn)
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        for start, end in zip(starts, ends):
            self._flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in zip(starts, ends)]

    def _cpu_samples(self, fn: Callable[[], object]) -> list[float]:
        from time import perf_counter

        times = []
        for _ in range(self.repeats):
            start = perf_counter()
            fn()
            times.append(1e3 * (perf_counter() - start))
        return times

    def peak_memory(self, fn: Callable[[], object]) -> dict | None:
        """Peak bytes allocated during one call of ``fn`` (CUDA only; None elsewhere).

        'peak' is the allocator's high-water mark, inputs included; 'extra' subtracts what was
        allocated before the call (the inputs and parameters), leaving what the call itself
        needs: outputs, intermediates and saved activations.
        """
        if self.device != "cuda":
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak": int(peak), "extra": int(peak - before)}
