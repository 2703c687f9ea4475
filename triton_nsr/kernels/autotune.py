"""The one place that decides how kernels are tuned.

On a GPU, a kernel launches the config stored for its shape class in the committed table of
tuned configs, else autotunes (``tuned_configs``: the table, and the policy a GPU lease sets).
Triton's CPU interpreter cannot autotune (it fails with "0 active drivers"), so there the first
config of each list is used as is.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from triton_nsr.kernels.tuned_configs import TunedKernel, forget_known_launches

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def tuned(configs: list[triton.Config], key: list[str], prune=None):
    """Stored or autotuned config on a GPU (``tuned_configs``); the first one under the
    interpreter. Used like ``triton.autotune(configs, key)``.

    ``prune(configs, named_args) -> configs`` drops, per launch, configs that do not suit the
    shape (Triton's ``early_config_prune``) before any is benchmarked.
    """

    def wrap(kernel):
        return TunedKernel(kernel, configs, key, interpreted=INTERPRETED, prune=prune)

    return wrap


def size_class(size: int) -> int:
    """The autotune key's class of a size: its next power of two (48*48 and 60*60 share one)."""
    # Integer arithmetic, not triton.next_power_of_2: that is a constexpr function in Triton
    # 3.x, several microseconds of host time per call, and the launchers call this per launch.
    return 1 << (max(int(size), 1) - 1).bit_length()


# wgmma needs a warpgroup (4 warps) and at least 64 rows of M per program.
WGMMA_MIN_BLOCK_M = 64
MIN_CONFIGS = 3


def fits_shape(m_name: str, n_name: str, k_name: str, rows: str = "BLOCK_M"):
    """A pruner keeping the configs whose tiles do not overshoot the GEMM's sizes.

    A tile dimension is kept if it is at most the size's next power of two (``rows``, the block
    that is the MMA's rows, at least 64, which wgmma needs anyway, the others at least 16); when
    fewer than MIN_CONFIGS survive, the least oversized configs fill up to it.
    """

    def prune(configs, named_args, **kwargs):
        limits = {"BLOCK_M": max(16, size_class(named_args[m_name])),
                  "BLOCK_N": max(16, size_class(named_args[n_name])),
                  "BLOCK_K": max(16, size_class(named_args[k_name]))}
        limits[rows] = max(WGMMA_MIN_BLOCK_M, limits[rows])

        def overshoot(config):
            return sum(max(config.kwargs[name] / limit, 1) for name, limit in limits.items())

        ranked = sorted(configs, key=overshoot)
        kept = [c for c in ranked if overshoot(c) == len(limits)]
        return [c for c in configs if c in kept or c in ranked[:MIN_CONFIGS]]

    return prune


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


def index_dtype_of(layouts, pad=(0, 0, 0, 0), dilation=(1, 1), kernel_size=(1, 1)):
    """int32 offsets inside a sample when they cannot overflow, else int64, for tensors given
    as (shape, strides) pairs (what the launchers' plans know of them).

    The kernels add the sample's base offset in int64 and everything inside a sample in this
    dtype. Masked-off lanes may point up to a block, plus the padding and the kernel's reach,
    past an edge, so every dimension but the batch gets that much room before the int32 limit
    is checked.
    """
    room = 1024 + max(pad) + max(dilation) * max(kernel_size)
    for shape, strides in layouts:
        extent = sum(abs(stride) * (size + room) for size, stride in zip(shape[1:], strides[1:]))
        if extent >= 2**31:
            return tl.int64
    return tl.int32


_PLANS = []
_CLEARS = []


def launch_plan(build):
    """Cache a launcher's decisions per shape class (``functools.lru_cache``), so a repeated
    shape only allocates and launches: grid, integer arguments, constexprs, routes. Arguments
    must be hashable (shapes, strides, dtypes, flags). :func:`clear_launch_plans` forgets them
    (tests that patch a decision)."""
    cached = functools.lru_cache(maxsize=1024)(build)
    _PLANS.append(cached)
    return cached


def on_clear_launch_plans(clear) -> None:
    """Have :func:`clear_launch_plans` call ``clear()`` too (a cache of decisions built on the
    launch plans: triton_nsr.layer's)."""
    _CLEARS.append(clear)


def clear_launch_plans() -> None:
    """Forget every cached launch plan, and every known launch: the next launch of each shape
    decides again and goes through Triton's JIT."""
    for plan in _PLANS:
        plan.cache_clear()
    for clear in _CLEARS:
        clear()
    forget_known_launches()
