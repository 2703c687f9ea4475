"""The device's attainable peaks, measured in the same run as the workloads they normalise.

Datasheet peaks are not what a given board, clock and driver deliver; a large matmul per
precision and a large device-to-device copy are, and measuring them beside the workloads makes
'percent of roofline' a ratio of two numbers from the same run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from bench.timing import Timer, summarize

# Precision configurations: (dtype, TF32 allowed). 'tf32' is float32 storage with TF32 math.
PRECISIONS = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
}


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """Allow TF32 (or not) for matmuls and cuDNN convolutions inside the block; restore after.

    triton_nsr's kernels follow torch.backends.cudnn.allow_tf32, as nn.Conv2d does.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Let cuDNN time its algorithms per shape and keep the fastest (or not) inside the block.

    On for GPU timing: the cuDNN baselines (the paper's grouped convolution, the static conv)
    get their best algorithm, as a tuned training script would give them.
    """
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def measure_peaks(device: str, precisions: list[str], timer: Timer) -> dict:
    """Measured matmul TFLOP/s per precision and copy GB/s on ``device``.

    Returns {'matmul_tflops': {precision: median}, 'copy_gbps': median, 'matmul_size': n,
    'copy_bytes': bytes}. The matmul is (n, n) @ (n, n), 2 n^3 FLOPs; the copy reads and
    writes ``copy_bytes`` each, so it moves twice that.
    """
    # Big enough to saturate an H100; small enough to keep CPU smoke runs quick.
    size = 8192 if device == "cuda" else 256
    copy_bytes = 2**30 if device == "cuda" else 2**24
    tflops = {}
    for precision in precisions:
        dtype, tf32 = PRECISIONS[precision]
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        with tf32_mode(tf32):
            ms = summarize(timer.samples(lambda a=a, b=b: a @ b))["median"]
        tflops[precision] = 2 * size**3 / (ms * 1e-3) / 1e12
        del a, b
    source = torch.empty(copy_bytes // 4, device=device, dtype=torch.float32)
    target = torch.empty_like(source)
    ms = summarize(timer.samples(lambda: target.copy_(source)))["median"]
    return {
        "matmul_tflops": tflops,
        "copy_gbps": 2 * copy_bytes / (ms * 1e-3) / 1e9,
        "matmul_size": size,
        "copy_bytes": copy_bytes,
    }


def roofline_tflops(peaks: dict, precision: str, flops: int, nbytes: int) -> float:
    """Attainable TFLOP/s at arithmetic intensity flops/nbytes: min(compute, intensity x bw)."""
    compute = peaks["matmul_tflops"][precision]
    memory = (flops / nbytes) * peaks["copy_gbps"] / 1e3
    return min(compute, memory)
