"""The router in one kernel each way: spatial mean -> MLP -> temperature -> softmax, and back.

For input x (B, C, H, W), mlp_weight W (k*d, C) with rows ordered (k, d), mlp_bias b (k*d,):

    m[b, c]      = mean over (h, w) of x[b, c, h, w]                        (B, C)
    z[b, j, c']  = (sum_c W[j*d + c', c] m[b, c] + b[j*d + c']) / T          (B, k, d)
    s[b, :, c']  = softmax(z[b, :, c'])  over the k groups                   (B, k, d)

Backward, for g = d loss / d s (B, k, d):

    dz[b, j, c']         = s[b, j, c'] * (g[b, j, c'] - sum_i s[b, i, c'] g[b, i, c']) / T
    d mlp_weight[r, c]   = sum_b dz[b, r] m[b, c]            (r = j*d + c')
    d mlp_bias[r]        = sum_b dz[b, r]
    d x[b, c, h, w]     += sum_r dz[b, r] W[r, c] / (H*W)     (the same for every pixel)

The last line is returned as ``mean_grad`` (B, C) and added by the input-gradient kernel's
epilogue (``conv_bwd_input.conv_bwd_input``), so no x-sized tensor is made for it.

The forward is two pieces in two launches that the layer runs anyway: ``router_pool_kernel``
sums pixel chunks of every sample (B * chunks programs, so a batch of one large image still
fills the GPU) and :func:`route_samples`, called by the mixing kernel
(``mix.route_and_mix``), adds the chunks, applies the MLP, the temperature and the
softmax for the samples and the cardinal one mixing program needs, and stores the routing and
the means for the backward.

Everything runs in float32 whatever the input dtype (float64 for float64 input), as
``triton_nsr.router`` explains; the MLP parameters are read in their own dtype.
"""

from __future__ import annotations

import functools
import struct

import torch
import triton
import triton.language as tl

from triton_nsr.kernels.allocation import Empty
from triton_nsr.kernels.autotune import accumulator_dtype, check_launchable, launch_plan, tuned
from triton_nsr.kernels.known_launches import LaunchSite
from triton_nsr.kernels.tiling import (
    cdiv,
    contiguous_strides,
    format_strides,
    power_of_2_at_least,
)

# The first config is the interpreter's.
_ROUTER_POOL_CONFIGS = [
    triton.Config({"BLOCK_C": 16, "BLOCK_P": 64}, num_warps=4),
    triton.Config({"BLOCK_C": 32, "BLOCK_P": 128}, num_warps=4),
    triton.Config({"BLOCK_C": 16, "BLOCK_P": 256}, num_warps=8),
    triton.Config({"BLOCK_C": 64, "BLOCK_P": 64}, num_warps=8),
]
_ROUTER_BWD_CONFIGS = [
    triton.Config({"BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_C": 64}, num_warps=8),
]
# Pooling: a sample's pixels are cut into chunks of at least MIN_CHUNK_PIXELS so that about
# POOL_PROGRAMS programs share the pass over x (one per sample left W4's 512x512 image, 33.5 MB
# in bf16, to a single SM), and no more, since every mixing program adds the chunks again.
MIN_CHUNK_PIXELS = 4096
POOL_PROGRAMS = 128
# Channels per step when route_samples adds the chunks and applies the MLP.
ROUTE_BLOCK_C = 32


@triton.jit
def _temperature(temperature_hi, temperature_lo, ACC_DTYPE: tl.constexpr):
    # Triton passes Python floats as float32: the temperature comes as a float32 pair whose sum
    # is the float64 value, exact enough for a float64 router.
    return tl.cast(temperature_hi, ACC_DTYPE) + tl.cast(temperature_lo, ACC_DTYPE)


@tuned(_ROUTER_POOL_CONFIGS, key=["channels", "input_w_stride"])
@triton.jit
def router_pool_kernel(
    input_pointer, partials_pointer, copy_pointer,
    channels, width, pixels, chunk_pixels, num_chunks,
    input_batch_stride, input_channel_stride, input_h_stride, input_w_stride,
    partials_batch_stride, partials_chunk_stride, partials_channel_stride,
    copy_batch_stride, copy_channel_stride, copy_h_stride, copy_w_stride,
    WRITE_COPY: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """partials[b, q, c] = sum of x[b, c] over the pixels of chunk q (chunk_pixels each).

    Pointers: input (B, C, H, W), any strides (NCHW, channels_last, sliced); partials
    (B, num_chunks, C) in ACC_DTYPE; with WRITE_COPY, copy (B, C, H, W) receives every value
    read, in its own strides (the convolution's channels_last copy of an NCHW input).
    Grid: (B * num_chunks,), the chunk fastest: a program streams its chunk one channel block
    at a time.
    """
    pid = tl.program_id(0)
    chunk = pid % num_chunks
    sample = (pid // num_chunks).to(tl.int64)
    first = chunk * chunk_pixels
    end = tl.minimum(first + chunk_pixels, pixels)
    input_sample = input_pointer + sample * input_batch_stride
    copy_sample = copy_pointer + sample * copy_batch_stride
    partials_row = partials_pointer + sample * partials_batch_stride + chunk * partials_chunk_stride
    for c_start in range(0, channels, BLOCK_C):
        offs_c = c_start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < channels
        sums = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC_DTYPE)
        for p_start in range(first, end, BLOCK_P):
            offs_p = p_start + tl.arange(0, BLOCK_P)
            row, column = offs_p // width, offs_p % width
            mask = mask_c[:, None] & (offs_p < end)[None, :]
            values = tl.load(input_sample + offs_c[:, None] * input_channel_stride
                             + (row * input_h_stride + column * input_w_stride)[None, :],
                             mask=mask, other=0.0)
            if WRITE_COPY:
                tl.store(copy_sample + offs_c[:, None] * copy_channel_stride
                         + (row * copy_h_stride + column * copy_w_stride)[None, :], values,
                         mask=mask)
            sums += values.to(ACC_DTYPE)
        tl.store(partials_row + offs_c * partials_channel_stride,
                 tl.sum(sums, axis=1).to(partials_pointer.dtype.element_ty), mask=mask_c)


@triton.jit
def route_samples(
    partials_pointer, mlp_weight_pointer, mlp_bias_pointer, pooled_pointer, routing_pointer,
    offs_b, mask_b, cardinal, store_routing, store_pooled,
    channels, pixels, num_chunks, num_groups, num_cardinals, temperature_hi, temperature_lo,
    partials_batch_stride, partials_chunk_stride, partials_channel_stride,
    mlp_weight_row_stride, mlp_weight_col_stride, mlp_bias_stride,
    pooled_batch_stride, pooled_channel_stride,
    routing_batch_stride, routing_group_stride, routing_cardinal_stride,
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_GROUPS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """s[b, :, cardinal] for the BLOCK_B samples offs_b: (BLOCK_B, BLOCK_GROUPS) in ACC_DTYPE.

    Adds the sample's pooling chunks in order (deterministic), divides by the pixel count,
    applies the k MLP rows of this cardinal, the bias and the temperature, and the softmax over
    the k groups (padding groups get probability 0). Stores the routing column when
    store_routing and the means (B, C) when store_pooled (runtime flags: the launcher's
    programs agree that exactly one writes each value); the backward reads both.
    """
    offs_j = tl.arange(0, BLOCK_GROUPS)
    mask_j = offs_j < num_groups
    rows = offs_j * num_cardinals + cardinal  # MLP rows of (group, cardinal)
    partials_rows = partials_pointer + offs_b.to(tl.int64) * partials_batch_stride
    logits = tl.zeros((BLOCK_B, BLOCK_GROUPS), dtype=ACC_DTYPE)
    for c_start in range(0, channels, BLOCK_C):
        offs_c = c_start + tl.arange(0, BLOCK_C)
        mask_bc = mask_b[:, None] & (offs_c < channels)[None, :]
        sums = tl.zeros((BLOCK_B, BLOCK_C), dtype=ACC_DTYPE)
        for chunk in range(num_chunks):
            sums += tl.load(partials_rows[:, None] + chunk * partials_chunk_stride
                            + offs_c[None, :] * partials_channel_stride,
                            mask=mask_bc, other=0.0).to(ACC_DTYPE)
        # Divided by the integer count: exact in float64, unlike a float32 reciprocal.
        means = sums / pixels
        if store_pooled:
            tl.store(pooled_pointer + offs_b.to(tl.int64)[:, None] * pooled_batch_stride
                     + offs_c[None, :] * pooled_channel_stride,
                     means.to(pooled_pointer.dtype.element_ty), mask=mask_bc)
        weights = tl.load(mlp_weight_pointer + rows[:, None] * mlp_weight_row_stride
                          + offs_c[None, :] * mlp_weight_col_stride,
                          mask=mask_j[:, None] & (offs_c < channels)[None, :],
                          other=0.0).to(ACC_DTYPE)
        logits += tl.sum(means[:, None, :] * weights[None, :, :], axis=2)
    if HAS_BIAS:
        logits += tl.load(mlp_bias_pointer + rows * mlp_bias_stride, mask=mask_j,
                          other=0.0).to(ACC_DTYPE)[None, :]
    logits = tl.where(mask_j[None, :], logits, float("-inf"))
    peak = tl.max(logits, axis=1)  # finite: every sample has k >= 1 real groups
    # Shifted by the peak before the temperature divides: (z - max z) / T is at most 0 for any
    # T, where z / T overflows to inf for a small T (and the softmax to NaN).
    exps = tl.exp((logits - peak[:, None]) / _temperature(temperature_hi, temperature_lo,
                                                          ACC_DTYPE))
    routing = exps / tl.sum(exps, axis=1)[:, None]
    if store_routing:
        tl.store(routing_pointer + offs_b.to(tl.int64)[:, None] * routing_batch_stride
                 + offs_j[None, :] * routing_group_stride + cardinal * routing_cardinal_stride,
                 routing.to(routing_pointer.dtype.element_ty),
                 mask=mask_b[:, None] & mask_j[None, :])
    return routing


@tuned(_ROUTER_BWD_CONFIGS, key=["channels", "num_groups", "num_cardinals"])
@triton.jit
def router_bwd_kernel(
    grad_routing_pointer, routing_pointer, pooled_pointer, mlp_weight_pointer,
    mean_grad_pointer, grad_mlp_weight_pointer, grad_mlp_bias_pointer,
    batch, num_parts, channels, pixels, num_groups, num_cardinals, temperature_hi,
    temperature_lo,
    grad_routing_part_stride, grad_routing_batch_stride, grad_routing_group_stride,
    grad_routing_cardinal_stride,
    routing_batch_stride, routing_group_stride, routing_cardinal_stride,
    pooled_batch_stride, pooled_channel_stride,
    mlp_weight_row_stride, mlp_weight_col_stride,
    mean_grad_batch_stride, mean_grad_channel_stride,
    grad_mlp_weight_row_stride, grad_mlp_weight_col_stride, grad_mlp_bias_stride,
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_GROUPS: tl.constexpr, BLOCK_CARDINALS: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """The router's backward: mean_grad (B, C), grad_mlp_weight (k*d, C), grad_mlp_bias (k*d,).

    Pointers:
        grad_routing (P, B, k, d): the routing gradient in P parts, added here (the mixing
        backward's per-tile sums); routing (B, k, d); pooled (B, C); mlp_weight (k*d, C): any
        strides.
        mean_grad (B, C): d loss / d x for every pixel of (b, c), i.e. already divided by H*W.
        grad_mlp_weight (k*d, C), grad_mlp_bias (k*d,) when HAS_BIAS.
    Grid: (cdiv(C, BLOCK_C),). A program owns a block of channels and walks the samples in
    order, BLOCK_B at a time, so the sums over the batch are deterministic without atomics;
    the softmax's backward (k*d values per sample) is recomputed by every program, which is
    nothing next to the pass over the batch. The program of the first block writes
    grad_mlp_bias. A block of samples is loaded at once: one sample at a time, W1's 16 samples
    were 16 rounds of dependent loads in a single program (C = 32), 35 us on an H200.
    """
    c_block = tl.program_id(0)
    offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < channels
    offs_j = tl.arange(0, BLOCK_GROUPS)
    offs_d = tl.arange(0, BLOCK_CARDINALS)
    mask_jd = (offs_j < num_groups)[:, None] & (offs_d < num_cardinals)[None, :]
    rows = offs_j[:, None] * num_cardinals + offs_d[None, :]
    mask_w = mask_jd[:, :, None] & mask_c[None, None, :]
    weights = tl.load(mlp_weight_pointer + rows[:, :, None] * mlp_weight_row_stride
                      + offs_c[None, None, :] * mlp_weight_col_stride,
                      mask=mask_w, other=0.0).to(ACC_DTYPE)
    temperature = _temperature(temperature_hi, temperature_lo, ACC_DTYPE)

    grad_weight = tl.zeros((BLOCK_GROUPS, BLOCK_CARDINALS, BLOCK_C), dtype=ACC_DTYPE)
    grad_bias = tl.zeros((BLOCK_GROUPS, BLOCK_CARDINALS), dtype=ACC_DTYPE)
    # (sample, group, cardinal) offsets of a block of samples; masked samples load zeros, so
    # their logits' gradient is zero and adds nothing.
    offs_s = tl.arange(0, BLOCK_B)
    jd = offs_j[None, :, None], offs_d[None, None, :]
    for first in range(0, batch, BLOCK_B):
        samples = first + offs_s.to(tl.int64)
        mask_s = samples < batch
        mask_sjd = mask_s[:, None, None] & mask_jd[None, :, :]
        mask_sc = mask_s[:, None] & mask_c[None, :]
        grad_rows = (grad_routing_pointer + samples[:, None, None] * grad_routing_batch_stride
                     + jd[0] * grad_routing_group_stride + jd[1] * grad_routing_cardinal_stride)
        grads = tl.zeros((BLOCK_B, BLOCK_GROUPS, BLOCK_CARDINALS), dtype=ACC_DTYPE)
        for part in range(num_parts):
            grads += tl.load(grad_rows + part * grad_routing_part_stride, mask=mask_sjd,
                             other=0.0).to(ACC_DTYPE)
        routing = tl.load(routing_pointer + samples[:, None, None] * routing_batch_stride
                          + jd[0] * routing_group_stride + jd[1] * routing_cardinal_stride,
                          mask=mask_sjd, other=0.0).to(ACC_DTYPE)
        inner = tl.sum(routing * grads, axis=1)
        grad_logits = routing * (grads - inner[:, None, :]) / temperature
        mean = tl.load(pooled_pointer + samples[:, None] * pooled_batch_stride
                       + offs_c[None, :] * pooled_channel_stride, mask=mask_sc,
                       other=0.0).to(ACC_DTYPE)
        grad_weight += tl.sum(grad_logits[:, :, :, None] * mean[:, None, None, :], axis=0)
        grad_bias += tl.sum(grad_logits, axis=0)
        grad_mean = tl.sum(tl.sum(grad_logits[:, :, :, None] * weights[None, :, :, :], axis=1),
                           axis=1)
        tl.store(mean_grad_pointer + samples[:, None] * mean_grad_batch_stride
                 + offs_c[None, :] * mean_grad_channel_stride,
                 (grad_mean / pixels).to(mean_grad_pointer.dtype.element_ty), mask=mask_sc)

    tl.store(grad_mlp_weight_pointer + rows[:, :, None] * grad_mlp_weight_row_stride
             + offs_c[None, None, :] * grad_mlp_weight_col_stride,
             grad_weight.to(grad_mlp_weight_pointer.dtype.element_ty), mask=mask_w)
    if HAS_BIAS:  # noqa: SIM102 - a constexpr test, then a runtime one: Triton needs them apart
        if c_block == 0:
            tl.store(grad_mlp_bias_pointer + rows * grad_mlp_bias_stride,
                     grad_bias.to(grad_mlp_bias_pointer.dtype.element_ty), mask=mask_jd)


def routing_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 input, float32 for the rest (as triton_nsr.router, without
    torch.promote_types, which dispatches an aten op per call)."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=64)
def temperature_pair(temperature: float) -> tuple[float, float]:
    """(hi, lo): float32 values whose float64 sum is ``temperature`` to about 2**-48. The
    same tuple for the same temperature (launch plans keep their scalars by it)."""
    hi = struct.unpack("f", struct.pack("f", temperature))[0]
    return hi, temperature - hi


def pool_chunks(batch: int, pixels: int) -> int:
    """Into how many chunks router_pool cuts each sample's pixels: enough for about
    POOL_PROGRAMS programs in all, each of at least MIN_CHUNK_PIXELS pixels (1 for a batch of
    16 at 48x48, 64 for one 512x512 image)."""
    return max(1, min(cdiv(pixels, MIN_CHUNK_PIXELS), cdiv(POOL_PROGRAMS, max(batch, 1))))


class RouterPool:
    """router_pool's launch for one shape class of input, decided once: call it with the input.

    Returns partials (B, chunks, C) in the routing dtype, and the channels_last copy of the
    input or None.
    """

    __slots__ = ("dtype", "partials_shape", "write_copy", "grid", "args", "constexprs", "launch",
                 "new_partials")

    def __init__(self, input_shape, input_stride, input_dtype, write_copy: bool) -> None:
        batch, channels, height, width = input_shape
        pixels = height * width
        self.dtype = routing_dtype(input_dtype)
        chunks = pool_chunks(batch, pixels)
        self.partials_shape = (batch, chunks, channels)
        self.new_partials = Empty(self.partials_shape)
        self.write_copy = write_copy
        copy_stride = (format_strides(input_shape, torch.channels_last) if write_copy
                       else (0, 0, 0, 0))
        self.grid = (batch * chunks,)
        self.args = (channels, width, pixels, cdiv(pixels, chunks), chunks, *input_stride,
                     *contiguous_strides(self.partials_shape), *copy_stride)
        self.constexprs = {"WRITE_COPY": write_copy,
                           "ACC_DTYPE": accumulator_dtype(self.dtype)}
        self.launch = LaunchSite(router_pool_kernel, self.grid, self.constexprs)

    def __call__(self, input: torch.Tensor,
                 signature=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        partials = self.new_partials(input.device, self.dtype)
        copy = (torch.empty_like(input, memory_format=torch.channels_last) if self.write_copy
                else None)
        if self.grid[0] == 0:
            return partials, copy
        self.launch((input, partials, copy if copy is not None else partials), self.args,
                    signature)
        return partials, copy


@launch_plan
def router_pool_plan(input_shape, input_stride, input_dtype, write_copy: bool) -> RouterPool:
    """The :class:`RouterPool` of a shape class, made once."""
    return RouterPool(input_shape, input_stride, input_dtype, write_copy)


def router_pool(input: torch.Tensor,
                channels_last_copy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The router's first half, in one launch: per-chunk channel sums of the input, and
    optionally a channels_last copy of it made on the same pass.

    Args:
        input: (B, C, H, W), any dtype and layout, H*W > 0 unless B == 0.
        channels_last_copy: also return input in channels_last memory format (the convolution
            of an NCHW input reads it through TMA boxes; operands.channels_last_copy_helps).

    Returns:
        partials (B, chunks, C), float32 (float64 for float64 input), chunks = pool_chunks(B,
        H*W), which mix.route_and_mix adds to compute the routing; and the copy, or None.
    """
    check_launchable(input)
    return router_pool_plan(tuple(input.shape), input.stride(), input.dtype,
                            channels_last_copy)(input)


class RouterBackward:
    """router_bwd's launch for one shape class, decided once; the temperature comes per call
    (an annealed temperature changes every step, and Triton does not specialise on floats).
    """

    __slots__ = ("grid", "head", "tail", "constexprs", "has_mlp_bias", "launch", "new_mlp_bias",
                 "kept_scalars")

    def __init__(self, grad_routing_shape, grad_routing_stride, routing_shape, routing_stride,
                 routing_dtype, pooled_shape, pooled_stride, mlp_weight_shape,
                 mlp_weight_stride, has_mlp_bias: bool, pixels: int) -> None:
        batch, num_groups, num_cardinals = routing_shape
        channels = pooled_shape[1]
        # The kernel's arguments before and after the temperature pair.
        self.head = (batch, grad_routing_shape[0], channels, pixels, num_groups, num_cardinals)
        self.tail = (*grad_routing_stride, *routing_stride, *pooled_stride, *mlp_weight_stride,
                     *contiguous_strides(pooled_shape), *contiguous_strides(mlp_weight_shape),
                     1 if has_mlp_bias else 0)
        self.has_mlp_bias = has_mlp_bias
        self.new_mlp_bias = Empty(mlp_weight_shape[:1])
        self.kept_scalars = (None, None)  # (temperature pair, the launch's scalars)
        block_groups = power_of_2_at_least(num_groups)
        block_cardinals = power_of_2_at_least(num_cardinals)
        self.constexprs = {"HAS_BIAS": has_mlp_bias,
                           "ACC_DTYPE": accumulator_dtype(routing_dtype),
                           "BLOCK_GROUPS": block_groups, "BLOCK_CARDINALS": block_cardinals,
                           "BLOCK_B": router_bwd_block_b(block_groups * block_cardinals, batch)}

        def grid(meta):
            return (cdiv(channels, meta["BLOCK_C"]),)

        self.grid = grid
        self.launch = LaunchSite(router_bwd_kernel, grid, self.constexprs)

    def __call__(self, grad_routing, routing, pooled, mlp_weight, temperature: float,
                 signature=None):
        mean_grad = torch.empty_like(pooled, memory_format=torch.contiguous_format)
        grad_mlp_weight = torch.empty_like(mlp_weight, memory_format=torch.contiguous_format)
        grad_mlp_bias = (self.new_mlp_bias(mlp_weight.device, mlp_weight.dtype)
                         if self.has_mlp_bias else None)
        if routing.shape[0] == 0:
            grad_mlp_weight.zero_()
            return (mean_grad, grad_mlp_weight,
                    grad_mlp_bias.zero_() if grad_mlp_bias is not None else None)
        pair, kept = temperature_pair(temperature), self.kept_scalars
        if kept[0] is not pair:  # the same scalars object while the temperature stays
            kept = self.kept_scalars = (pair, (*self.head, *pair, *self.tail))
        self.launch((grad_routing, routing, pooled, mlp_weight, mean_grad, grad_mlp_weight,
                     grad_mlp_bias if grad_mlp_bias is not None else grad_mlp_weight),
                    kept[1], signature)
        return mean_grad, grad_mlp_weight, grad_mlp_bias


@launch_plan
def router_bwd_plan(grad_routing_shape, grad_routing_stride, routing_shape, routing_stride,
                    routing_dtype, pooled_shape, pooled_stride, mlp_weight_shape,
                    mlp_weight_stride, has_mlp_bias: bool, pixels: int) -> RouterBackward:
    """The :class:`RouterBackward` of a shape class, made once."""
    return RouterBackward(grad_routing_shape, grad_routing_stride, routing_shape,
                          routing_stride, routing_dtype, pooled_shape, pooled_stride,
                          mlp_weight_shape, mlp_weight_stride, has_mlp_bias, pixels)


# Samples per step of router_bwd_kernel's walk over the batch, times its (k, d) block: the
# (samples, k, d, BLOCK_C) products stay within 256 * 64 values (64 registers a thread).
ROUTER_BWD_BLOCK_VALUES = 256
ROUTER_BWD_MAX_BLOCK_B = 8


def router_bwd_block_b(block_routing: int, batch: int) -> int:
    """How many samples router_bwd_kernel loads at once: a power of 2 with at most
    ROUTER_BWD_BLOCK_VALUES routing values per step, no more than the batch needs."""
    wanted = max(1, min(ROUTER_BWD_MAX_BLOCK_B, ROUTER_BWD_BLOCK_VALUES // block_routing,
                        batch))
    return 1 << (wanted.bit_length() - 1)


def router_bwd(
    grad_routing: torch.Tensor,
    routing: torch.Tensor,
    pooled: torch.Tensor,
    mlp_weight: torch.Tensor,
    has_mlp_bias: bool,
    temperature: float,
    pixels: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of the router (router_pool, then route_samples in the mixing), in one launch.

    Args:
        grad_routing: (P, B, k, d), the routing gradient as P parts to add (P = 1: whole).
        routing: (B, k, d). pooled: (B, C). mlp_weight: (k*d, C).
        pixels: H*W of the input the router averaged.

    Returns:
        mean_grad (B, C) in routing's dtype: the gradient every pixel of input channel c of
        sample b receives; grad_mlp_weight (k*d, C) and grad_mlp_bias (k*d,) (or None) in
        mlp_weight's dtype.
    """
    check_launchable(grad_routing, routing, pooled, mlp_weight)
    plan = router_bwd_plan(tuple(grad_routing.shape), grad_routing.stride(),
                           tuple(routing.shape), routing.stride(), routing.dtype,
                           tuple(pooled.shape), pooled.stride(), tuple(mlp_weight.shape),
                           mlp_weight.stride(), has_mlp_bias, pixels)
    return plan(grad_routing, routing, pooled, mlp_weight, temperature)
