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
epilogue (``conv_backward.conv_bwd_input``), so no x-sized tensor is made for it.

Everything runs in float32 whatever the input dtype (float64 for float64 input), as
``triton_nsr.router`` explains; the MLP parameters are read in their own dtype.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from triton_nsr.kernels.autotune import accumulator_dtype, check_launchable, launch_plan, tuned
from triton_nsr.kernels.mix import contiguous_strides, power_of_2_at_least
from triton_nsr.kernels.tiling import cdiv

# The first config is the interpreter's.
_ROUTER_FWD_CONFIGS = [
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


@triton.jit
def _temperature(temperature_hi, temperature_lo, ACC_DTYPE: tl.constexpr):
    # Triton passes Python floats as float32: the temperature comes as a float32 pair whose sum
    # is the float64 value, exact enough for a float64 router.
    return tl.cast(temperature_hi, ACC_DTYPE) + tl.cast(temperature_lo, ACC_DTYPE)


@tuned(_ROUTER_FWD_CONFIGS, key=["channels", "num_groups", "num_cardinals", "input_w_stride"])
@triton.jit
def router_fwd_kernel(
    input_pointer, mlp_weight_pointer, mlp_bias_pointer, pooled_pointer, routing_pointer,
    channels, width, pixels, num_groups, num_cardinals, temperature_hi, temperature_lo,
    input_batch_stride, input_channel_stride, input_h_stride, input_w_stride,
    mlp_weight_row_stride, mlp_weight_col_stride, mlp_bias_stride,
    pooled_batch_stride, pooled_channel_stride,
    routing_batch_stride, routing_group_stride, routing_cardinal_stride,
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_GROUPS: tl.constexpr, BLOCK_CARDINALS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """pooled = mean(x over H, W); routing = softmax((pooled @ W.T + b) / T over k).

    Pointers:
        input (B, C, H, W), any strides (NCHW, channels_last, sliced).
        mlp_weight (k*d, C), mlp_bias (k*d,) when HAS_BIAS: any strides.
        pooled (B, C) and routing (B, k, d): outputs in ACC_DTYPE, any strides.
    Grid: (B,). One program per sample: it streams the sample's pixels one channel block at a
    time, and each block's means go straight into the logits, so the MLP costs no second pass.
    """
    sample = tl.program_id(0).to(tl.int64)
    offs_j = tl.arange(0, BLOCK_GROUPS)
    offs_d = tl.arange(0, BLOCK_CARDINALS)
    mask_jd = (offs_j < num_groups)[:, None] & (offs_d < num_cardinals)[None, :]
    rows = offs_j[:, None] * num_cardinals + offs_d[None, :]  # MLP row of (group, cardinal)
    input_sample = input_pointer + sample * input_batch_stride

    logits = tl.zeros((BLOCK_GROUPS, BLOCK_CARDINALS), dtype=ACC_DTYPE)
    for c_start in range(0, channels, BLOCK_C):
        offs_c = c_start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < channels
        sums = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC_DTYPE)
        for p_start in range(0, pixels, BLOCK_P):
            offs_p = p_start + tl.arange(0, BLOCK_P)
            pixel = (offs_p // width) * input_h_stride + (offs_p % width) * input_w_stride
            values = tl.load(input_sample + offs_c[:, None] * input_channel_stride
                             + pixel[None, :],
                             mask=mask_c[:, None] & (offs_p < pixels)[None, :], other=0.0)
            sums += values.to(ACC_DTYPE)
        # Divided by the integer count: exact in float64, unlike a float32 reciprocal.
        mean = tl.sum(sums, axis=1) / pixels
        tl.store(pooled_pointer + sample * pooled_batch_stride + offs_c * pooled_channel_stride,
                 mean.to(pooled_pointer.dtype.element_ty), mask=mask_c)
        weights = tl.load(mlp_weight_pointer + rows[:, :, None] * mlp_weight_row_stride
                          + offs_c[None, None, :] * mlp_weight_col_stride,
                          mask=mask_jd[:, :, None] & mask_c[None, None, :], other=0.0)
        logits += tl.sum(weights.to(ACC_DTYPE) * mean[None, None, :], axis=2)

    if HAS_BIAS:
        logits += tl.load(mlp_bias_pointer + rows * mlp_bias_stride, mask=mask_jd,
                          other=0.0).to(ACC_DTYPE)
    logits = logits / _temperature(temperature_hi, temperature_lo, ACC_DTYPE)
    logits = tl.where(mask_jd, logits, float("-inf"))
    # Padding cardinals have no finite logit: a zero peak and a unit total keep them from
    # computing inf - inf and 0 / 0.
    mask_d = offs_d < num_cardinals
    peak = tl.where(mask_d, tl.max(logits, axis=0), 0.0)
    exps = tl.exp(logits - peak[None, :])
    total = tl.where(mask_d, tl.sum(exps, axis=0), 1.0)
    routing = exps / total[None, :]
    tl.store(routing_pointer + sample * routing_batch_stride
             + offs_j[:, None] * routing_group_stride + offs_d[None, :] * routing_cardinal_stride,
             routing.to(routing_pointer.dtype.element_ty), mask=mask_jd)


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
    BLOCK_GROUPS: tl.constexpr, BLOCK_CARDINALS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The router's backward: mean_grad (B, C), grad_mlp_weight (k*d, C), grad_mlp_bias (k*d,).

    Pointers:
        grad_routing (P, B, k, d): the routing gradient in P parts, added here (the mixing
        backward's per-tile sums); routing (B, k, d); pooled (B, C); mlp_weight (k*d, C): any
        strides.
        mean_grad (B, C): d loss / d x for every pixel of (b, c), i.e. already divided by H*W.
        grad_mlp_weight (k*d, C), grad_mlp_bias (k*d,) when HAS_BIAS.
    Grid: (cdiv(C, BLOCK_C),). A program owns a block of channels and walks the samples in
    order, so the sums over the batch are deterministic without atomics; the softmax's
    backward (k*d values per sample) is recomputed by every program, which is nothing next to
    the pass over the batch. The program of the first block writes grad_mlp_bias.
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
    for sample in range(batch):
        sample = tl.cast(sample, tl.int64)
        grad_rows = (grad_routing_pointer + sample * grad_routing_batch_stride
                     + offs_j[:, None] * grad_routing_group_stride
                     + offs_d[None, :] * grad_routing_cardinal_stride)
        grads = tl.zeros((BLOCK_GROUPS, BLOCK_CARDINALS), dtype=ACC_DTYPE)
        for part in range(num_parts):
            grads += tl.load(grad_rows + part * grad_routing_part_stride, mask=mask_jd,
                             other=0.0).to(ACC_DTYPE)
        routing = tl.load(routing_pointer + sample * routing_batch_stride
                          + offs_j[:, None] * routing_group_stride
                          + offs_d[None, :] * routing_cardinal_stride,
                          mask=mask_jd, other=0.0).to(ACC_DTYPE)
        inner = tl.sum(routing * grads, axis=0)
        grad_logits = routing * (grads - inner[None, :]) / temperature
        mean = tl.load(pooled_pointer + sample * pooled_batch_stride
                       + offs_c * pooled_channel_stride, mask=mask_c, other=0.0).to(ACC_DTYPE)
        grad_weight += grad_logits[:, :, None] * mean[None, None, :]
        grad_bias += grad_logits
        grad_mean = tl.sum(tl.sum(grad_logits[:, :, None] * weights, axis=0), axis=0)
        tl.store(mean_grad_pointer + sample * mean_grad_batch_stride
                 + offs_c * mean_grad_channel_stride,
                 (grad_mean / pixels).to(mean_grad_pointer.dtype.element_ty), mask=mask_c)

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


def _temperature_pair(temperature: float) -> tuple[float, float]:
    """(hi, lo): float32 values whose float64 sum is ``temperature`` to about 2**-48."""
    hi = struct.unpack("f", struct.pack("f", temperature))[0]
    return hi, temperature - hi


@launch_plan
def _router_fwd_plan(input_shape, input_stride, input_dtype, mlp_weight_stride, mlp_bias_stride,
                     num_groups, num_cardinals, temperature):
    """Everything router_fwd decides from shapes, strides and dtypes, once per shape class:
    (routing dtype, routing shape, pooled shape, grid, integer arguments, constexprs)."""
    batch, channels, height, width = input_shape
    dtype = routing_dtype(input_dtype)
    routing_shape = (batch, num_groups, num_cardinals)
    pooled_shape = (batch, channels)
    args = (channels, width, height * width, num_groups, num_cardinals,
            *_temperature_pair(temperature), *input_stride, *mlp_weight_stride,
            mlp_bias_stride if mlp_bias_stride is not None else 0,
            *contiguous_strides(pooled_shape), *contiguous_strides(routing_shape))
    constexprs = {"HAS_BIAS": mlp_bias_stride is not None,
                  "ACC_DTYPE": accumulator_dtype(dtype),
                  "BLOCK_GROUPS": power_of_2_at_least(num_groups),
                  "BLOCK_CARDINALS": power_of_2_at_least(num_cardinals)}
    return dtype, routing_shape, pooled_shape, (batch,), args, constexprs


def router_fwd(
    input: torch.Tensor,
    mlp_weight: torch.Tensor,
    mlp_bias: torch.Tensor | None,
    num_groups: int,
    num_cardinals: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing weights and the pooled input, in one launch.

    Args:
        input: (B, C, H, W), any dtype and layout, H*W > 0 unless B == 0.
        mlp_weight: (k*d, C); mlp_bias: (k*d,) or None.

    Returns:
        routing (B, k, d) and pooled (B, C), float32 (float64 for float64 input).
    """
    check_launchable(input, mlp_weight, mlp_bias)
    dtype, routing_shape, pooled_shape, grid, args, constexprs = _router_fwd_plan(
        input.shape, input.stride(), input.dtype, mlp_weight.stride(),
        None if mlp_bias is None else mlp_bias.stride(0), num_groups, num_cardinals,
        temperature)
    routing = torch.empty(routing_shape, dtype=dtype, device=input.device)
    pooled = torch.empty(pooled_shape, dtype=dtype, device=input.device)
    if grid[0] == 0:
        return routing, pooled
    router_fwd_kernel[grid](
        input, mlp_weight, mlp_bias if mlp_bias is not None else mlp_weight, pooled, routing,
        *args, **constexprs)
    return routing, pooled


@launch_plan
def _router_bwd_plan(grad_routing_shape, grad_routing_stride, routing_shape, routing_stride,
                     routing_dtype,
                     pooled_shape, pooled_stride, mlp_weight_shape, mlp_weight_stride,
                     has_mlp_bias, temperature, pixels):
    """router_bwd's decisions per shape class: (grid, integer arguments, constexprs)."""
    batch, num_groups, num_cardinals = routing_shape
    channels = pooled_shape[1]
    args = (batch, grad_routing_shape[0], channels, pixels, num_groups, num_cardinals,
            *_temperature_pair(temperature),
            *grad_routing_stride, *routing_stride, *pooled_stride, *mlp_weight_stride,
            *contiguous_strides(pooled_shape), *contiguous_strides(mlp_weight_shape),
            1 if has_mlp_bias else 0)
    constexprs = {"HAS_BIAS": has_mlp_bias, "ACC_DTYPE": accumulator_dtype(routing_dtype),
                  "BLOCK_GROUPS": power_of_2_at_least(num_groups),
                  "BLOCK_CARDINALS": power_of_2_at_least(num_cardinals)}

    def grid(meta):
        return (cdiv(channels, meta["BLOCK_C"]),)

    return grid, args, constexprs


def router_bwd(
    grad_routing: torch.Tensor,
    routing: torch.Tensor,
    pooled: torch.Tensor,
    mlp_weight: torch.Tensor,
    has_mlp_bias: bool,
    temperature: float,
    pixels: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`router_fwd`, in one launch.

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
    mean_grad = torch.empty(pooled.shape, dtype=pooled.dtype, device=pooled.device)
    grad_mlp_weight = torch.empty(mlp_weight.shape, dtype=mlp_weight.dtype,
                                  device=mlp_weight.device)
    grad_mlp_bias = mlp_weight.new_empty(mlp_weight.shape[0]) if has_mlp_bias else None
    if routing.shape[0] == 0:
        grad_mlp_weight.zero_()
        return mean_grad, grad_mlp_weight, grad_mlp_bias.zero_() if has_mlp_bias else None
    grid, args, constexprs = _router_bwd_plan(
        grad_routing.shape, grad_routing.stride(), routing.shape, routing.stride(),
        routing.dtype, pooled.shape, pooled.stride(), mlp_weight.shape, mlp_weight.stride(),
        has_mlp_bias, temperature, pixels)
    router_bwd_kernel[grid](
        grad_routing, routing, pooled, mlp_weight,
        mean_grad, grad_mlp_weight, grad_mlp_bias if has_mlp_bias else grad_mlp_weight,
        *args, **constexprs)
    return mean_grad, grad_mlp_weight, grad_mlp_bias
