"""Timing and peak memory of one callable: wall time from a synchronised start, GPU-busy time
from the profiler, and their difference, the host time the GPU waited for.

On CUDA each timed repeat flushes L2, waits for the device to finish (so no earlier GPU work,
the flush included, can hide the call's host time), then brackets the call with events: the
elapsed time is the call's wall time as a training loop sees it, host launch overhead and GPU
work together. GPU-busy time comes from a profiled pass of the same repeats: the summed device
time of the kernels the call launched (the flush's excluded). On CPU, perf_counter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

# Larger than the H100's 50 MB L2: rewriting it between repeats evicts the previous repeat's
# data, so every repeat reads its inputs from HBM as a layer inside a network would.
L2_FLUSH_BYTES = 256 * 1024 * 1024
# The flush is a bitwise not of an int8 buffer: a kernel no timed call launches, so the
# profiler's kernels of that name (ATen's is bitwise_not_kernel_cuda; matched without
# underscores or case) are the flush's.
FLUSH_KERNEL = "bitwisenot"
PROFILED_REPEATS = 5


def summarize(samples_ms: list[float]) -> dict:
    """Median with the 20th and 80th percentiles (the spread we quote) of timings in ms."""
    if not samples_ms:
        raise ValueError("no timing samples")
    samples = np.asarray(samples_ms, dtype=float)
    p20, median, p80 = np.percentile(samples, [20, 50, 80])
    return {"median": float(median), "p20": float(p20), "p80": float(p80),
            "min": float(samples.min()), "n": int(samples.size)}


def busy_ms_per_call(kernels: Iterable[tuple[str, float]], calls: int) -> float:
    """Device milliseconds per call from profiled kernels, (name, microseconds) each, of
    ``calls`` repeats, the L2 flush's kernels left out."""
    total_us = sum(us for name, us in kernels
                   if FLUSH_KERNEL not in name.lower().replace("_", ""))
    return total_us / 1e3 / calls


@dataclass
class Timer:
    """Runs ``fn`` ``warmup`` times (compiling and autotuning happen there), then ``repeats``
    timed times; see the module doc."""

    device: str
    warmup: int
    repeats: int

    def __post_init__(self) -> None:
        self._flush = None
        if self.device == "cuda":
            self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")

    def _flush_l2(self) -> None:
        self._flush.bitwise_not_()
        torch.cuda.synchronize()

    def samples(self, fn: Callable[[], object]) -> list[float]:
        """Milliseconds of each timed repeat of ``fn``, from a synchronised start."""
        for _ in range(self.warmup):
            fn()
        if self.device != "cuda":
            return self._cpu_samples(fn)
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        for start, end in zip(starts, ends):
            self._flush_l2()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in zip(starts, ends)]

    def gpu_busy_ms(self, fn: Callable[[], object],
                    repeats: int = PROFILED_REPEATS) -> float | None:
        """Device milliseconds per call of ``fn`` (CUDA only; None elsewhere): the profiler's
        kernel time over ``repeats`` flushed repeats, the flush left out. Call after
        :meth:`samples` (warm)."""
        if self.device != "cuda":
            return None
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            for _ in range(repeats):
                self._flush_l2()
                fn()
            torch.cuda.synchronize()
        return busy_ms_per_call(_device_kernels(profiler), repeats)

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


def _device_kernels(profiler) -> list[tuple[str, float]]:
    """(name, microseconds) of every device kernel the profiler saw."""
    from torch.autograd import DeviceType

    return [(event.name, event.time_range.elapsed_us()) for event in profiler.events()
            if event.device_type == DeviceType.CUDA]


def wall_busy_host(wall: dict, busy_ms: float | None) -> dict:
    """The row's timing columns: wall (the summary), GPU-busy and host milliseconds, host being
    the median wall time the GPU was not busy (None without a profile)."""
    host = None if busy_ms is None else max(wall["median"] - busy_ms, 0.0)
    return {"latency_ms": wall, "gpu_busy_ms": busy_ms, "host_ms": host}
