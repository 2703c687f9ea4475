"""The one place that decides how kernels are tuned.

On a GPU, kernels are wrapped in ``triton.autotune``. Triton's CPU interpreter cannot autotune
(it fails with "0 active drivers"), so there the first config of each list is used as is.
"""

from __future__ import annotations

import os
import threading

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


class _FirstConfig:
    """Launches a jitted kernel with the constexprs of one fixed config (interpreter only).

    Launches are serialised: for the length of a launch the interpreter replaces the functions
    of ``triton.language`` with its own, process-wide, and keeps the program id in one global
    builder, so a second thread's launch would run on half-restored functions or another
    program's ids.
    """

    _launch_lock = threading.Lock()

    def __init__(self, kernel, config: triton.Config) -> None:
        self.kernel = kernel
        self.config = config

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            with self._launch_lock:
                return launch(*args, **kwargs, **self.config.kwargs)

        return run


def tuned(configs: list[triton.Config], key: list[str]):
    """``triton.autotune(configs, key)`` on a GPU; the first config under the interpreter."""

    def wrap(kernel):
        if INTERPRETED:
            return _FirstConfig(kernel, configs[0])
        return triton.autotune(configs=configs, key=key)(kernel)

    return wrap


def accumulator_dtype(dtype: torch.dtype):
    """float64 accumulation for float64 tensors, float32 for everything else."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """TF32 only for float32 inputs and only when allowed, as cuDNN convolutions do."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def check_launchable(*tensors: torch.Tensor) -> None:
    """The kernels run on CUDA tensors, or on CPU tensors only under the interpreter."""
    for tensor in tensors:
        if tensor is not None and not tensor.is_cuda and not INTERPRETED:
            raise RuntimeError(
                f"Triton kernels need CUDA tensors, got one on {tensor.device}; on CPU set "
                "TRITON_INTERPRET=1 before importing triton, or use backend='torch'"
            )


def index_dtype(tensors, pad=(0, 0, 0, 0), dilation=(1, 1), kernel_size=(1, 1)):
    """int32 offsets inside a sample when they cannot overflow, else int64.

    The kernels add the sample's base offset in int64 and everything inside a sample in this
    dtype. Masked-off lanes may point up to a block, plus the padding and the kernel's reach,
    past an edge, so every dimension but the batch gets that much room before the int32 limit
    is checked.
    """
    room = 1024 + max(pad) + max(dilation) * max(kernel_size)
    for tensor in tensors:
        if tensor is None:
            continue
        extent = sum(abs(stride) * (size + room)
                     for size, stride in zip(tensor.shape[1:], tensor.stride()[1:]))
        if extent >= 2**31:
            return tl.int64
    return tl.int32
