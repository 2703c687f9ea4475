"""Host time of one NSR layer on the triton path, with every kernel launch stubbed out.

What the Python side costs per call (argument checks, autograd, launch decisions, allocations)
when the GPU work itself takes no time: on the training shapes the kernels need only a few
microseconds on an H200, so this is the floor of the layer's latency. Each Triton launch
(``kernel[grid](...)``) is replaced by a no-op at the kernel call, so the launchers still build
every argument. Tensors live on the GPU when there is one (its caching allocator), else on the
CPU under the Triton interpreter's flag (launches stubbed, nothing is interpreted).

    python -m bench host-time        # medians over many repeats, forward and forward+backward
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time

import torch

# Host time does not depend on the image or batch size; the channel counts are W1-expand's.
HOST_SHAPE = dict(batch=2, in_channels=32, out_channels=128, size=8, k=4, d=16)


@contextlib.contextmanager
def stubbed_launches():
    """Every tuned kernel's ``kernel[grid](*args)`` returns at once without running anything."""
    from triton_nsr.kernels.tuned_configs import TunedKernel

    def no_launch(self, grid):
        return _no_op

    saved = TunedKernel.__getitem__
    TunedKernel.__getitem__ = no_launch
    try:
        yield
    finally:
        TunedKernel.__getitem__ = saved


def _no_op(*args, **kwargs) -> None:
    return None


def _layer_and_input(channels_last: bool):
    from triton_nsr import NSRConv2d

    s = HOST_SHAPE
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = NSRConv2d(s["in_channels"], s["out_channels"], 3, s["k"], s["d"], padding=1,
                      backend="triton", device=device)
    x = torch.randn(s["batch"], s["in_channels"], s["size"], s["size"], device=device,
                    requires_grad=True)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    return layer, x


def host_time_us(repeats: int = 2000, warmup: int = 50, channels_last: bool = False) -> dict:
    """Median and 20th/80th percentile microseconds per call, forward and forward+backward.

    The forward runs under ``no_grad`` (inference), forward+backward takes every gradient with
    ``torch.autograd.grad``, as the benchmark harness does. Needs the kernels launchable on CPU
    tensors: TRITON_INTERPRET=1 (set by ``python -m bench`` and the tests without CUDA).
    """
    layer, x = _layer_and_input(channels_last)
    inputs = [x, *layer.parameters()]

    def forward():
        with torch.no_grad():
            layer(x)

    dy_cache = {}

    def forward_backward():
        # The output gradient is made once: the harness's dy is an input, not part of the step.
        y = layer(x)
        dy = dy_cache.setdefault("dy", torch.ones_like(y))
        torch.autograd.grad(y, inputs, dy)

    results = {}
    with stubbed_launches():
        for name, step in (("forward", forward), ("forward_backward", forward_backward)):
            for _ in range(warmup):
                step()
            samples = []
            # As timeit does: a garbage collection inside a timed call is not the layer's cost.
            gc.disable()
            try:
                for _ in range(repeats):
                    start = time.perf_counter_ns()
                    step()
                    samples.append((time.perf_counter_ns() - start) / 1e3)
            finally:
                gc.enable()
            deciles = statistics.quantiles(samples, n=10)
            results[name] = {"median_us": statistics.median(samples), "p20_us": deciles[1],
                             "p80_us": deciles[7], "repeats": repeats}
    return results


def host_time_table(results: dict) -> str:
    lines = ["| pass | median us | p20 us | p80 us |", "| --- | --- | --- | --- |"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['median_us']:.1f} | {row['p20_us']:.1f} | "
                     f"{row['p80_us']:.1f} |")
    return "\n".join(lines)
