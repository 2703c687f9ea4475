"""Kernel gradient, one program per kernel row: the three taps of a row share each dy tile.

The per-tap kernel (kernels/conv_bwd_weight.py) gives every tap (r, t) its own programs, each
loading the same dy tile again beside its x tile. Here a program owns the three taps (r, 0),
(r, 1), (r, 2) of one kernel row: each pixel step loads one dy tile (BLOCK_M output channels x
BLOCK_K pixels) and three x tiles, the row's column shifts, and runs three MMAs into three
accumulators. A third of the programs, the same dependent steps each: ranked first for a
channels_last dy by the kernel-gradient candidate model (docs/design.md, "Kernel-gradient
candidates"), whose time rests on how much a second and third MMA add to a step. Off on the
layer's path (``conv_bwd_weight.ROW_LAYOUTS``) until a GPU run times it against the per-tap
kernel (bench/gpu/candidates.py); tools force it with
``inspection.capture.kernel_gradient_variant("row_of_3")``.

Its arguments are the per-tap kernel's (the launch plan passes the same tuple), so grad_weight,
grad_bias, the pixel splits, the bias sum and the channels_last dy copy are as there.
"""

from __future__ import annotations

import triton
import triton.language as tl

from triton_nsr.kernels.autotune import fits_shape, tuned
from triton_nsr.kernels.tiling import program_tile, sample_and_group
from triton_nsr.kernels.weight_grad_dy import store_bias_grad, sum_and_copy_dy

# Tiles of the ranking's row-of-3 candidates (W1, W2, W4): three float32 accumulators a program.
ROW_WEIGHT_GRAD_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 128}, num_warps=4, num_stages=3),
]
# The per-tap kernel's key without its orientation (this kernel has one).
ROW_WEIGHT_GRAD_KEY = ["in_group_channels", "out_group_channels", "tuning_pixels", "kernel_h",
                       "kernel_w", "num_splits", "grad_output_w_stride", "input_w_stride",
                       "PRECISION"]


@triton.jit
def _row_tap(acc, dy, x_cols, in_pixel_row, out_col, stride_w, pad_w, t, dilation_w, in_w,
             input_w_stride, row_ok, mask_n, PRECISION: tl.constexpr,
             ACC_DTYPE: tl.constexpr):
    """acc += dy @ x of tap column t: x's (BLOCK_K, BLOCK_N) tile at that column shift."""
    in_col = out_col * stride_w - pad_w + t * dilation_w
    ok = row_ok & (in_col >= 0) & (in_col < in_w)
    x = tl.load(x_cols + (in_pixel_row + in_col * input_w_stride)[:, None],
                mask=ok[:, None] & mask_n[None, :], other=0.0)
    return tl.dot(dy, x, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)


@tuned(ROW_WEIGHT_GRAD_CONFIGS, key=ROW_WEIGHT_GRAD_KEY,
       prune=fits_shape("out_group_channels", "in_group_channels", "tuning_pixels"))
@triton.jit
def conv_bwd_weight_row_kernel(
    grad_output_pointer, input_pointer, grad_weight_pointer, grad_bias_pointer, copy_pointer,
    groups, in_group_channels, out_group_channels, out_pixels, tuning_pixels,
    in_h, in_w, out_h, out_w, kernel_h, kernel_w,
    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    grad_output_batch_stride, grad_output_channel_stride, grad_output_h_stride,
    grad_output_w_stride,
    input_batch_stride, input_channel_stride, input_h_stride, input_w_stride,
    num_splits,
    grad_weight_split_stride, grad_weight_batch_stride, grad_weight_out_stride,
    grad_weight_in_stride, grad_weight_h_stride, grad_weight_w_stride,
    grad_bias_split_stride, grad_bias_batch_stride, grad_bias_channel_stride,
    copy_batch_stride, copy_channel_stride, copy_h_stride, copy_w_stride,
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    INDEX_DTYPE: tl.constexpr, WRITE_COPY: tl.constexpr, LOOP_STAGES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw[b][:, :, r, 0:3] and dbias[b] for every b and kernel row r (kernel_w must be 3).

    Pointers, strides, splits, WRITE_COPY and LOOP_STAGES as conv_bwd_weight_kernel's; the bias
    and the copy come from the programs of kernel row 0 and the first input-channel tile.
    Grid: (B * groups * kh * S * cdiv(OG, BLOCK_M) * cdiv(Cg, BLOCK_N),): one program per
    kernel row, pixel split, output-channel tile and input-channel tile, so no two programs
    write the same element.
    """
    outer, _, n_block, offs_m, offs_n = program_tile(
        tl.program_id(0), out_group_channels, in_group_channels, BLOCK_M, BLOCK_N, INDEX_DTYPE)
    split = outer % num_splits
    r = (outer // num_splits) % kernel_h
    sample, group = sample_and_group(outer // (num_splits * kernel_h), groups, INDEX_DTYPE)
    mask_m = offs_m < out_group_channels
    mask_n = offs_n < in_group_channels
    out_channel = group * out_group_channels + offs_m
    in_channel = group * in_group_channels + offs_n

    grad_output_rows = (grad_output_pointer + sample * grad_output_batch_stride
                        + out_channel[:, None] * grad_output_channel_stride)
    x_cols = (input_pointer + sample * input_batch_stride
              + in_channel[None, :] * input_channel_stride)
    copy_rows = (copy_pointer + sample * copy_batch_stride
                 + out_channel[:, None] * copy_channel_stride)
    copier = (r == 0) & (n_block == 0)

    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    ASYNC_RING: tl.constexpr = LOOP_STAGES != 1 and (
        grad_output_pointer.dtype.element_ty != tl.float32 or PRECISION == "tf32")
    chunk = tl.cdiv(tl.cdiv(out_pixels, num_splits), BLOCK_K) * BLOCK_K
    first_pixel = split * chunk
    for p_start in tl.range(first_pixel, tl.minimum(first_pixel + chunk, out_pixels), BLOCK_K,
                            num_stages=LOOP_STAGES):
        offs_k = (p_start + tl.arange(0, BLOCK_K)).to(INDEX_DTYPE)
        mask_k = offs_k < out_pixels
        out_row = offs_k // out_w
        out_col = offs_k % out_w
        in_row = out_row * stride_h - pad_h + r * dilation_h
        row_ok = mask_k & (in_row >= 0) & (in_row < in_h)
        dy_pixel = out_row * grad_output_h_stride + out_col * grad_output_w_stride
        dy = tl.load(grad_output_rows + dy_pixel[None, :],
                     mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        in_pixel_row = in_row * input_h_stride
        acc0 = _row_tap(acc0, dy, x_cols, in_pixel_row, out_col, stride_w, pad_w, 0,
                        dilation_w, in_w, input_w_stride, row_ok, mask_n, PRECISION, ACC_DTYPE)
        acc1 = _row_tap(acc1, dy, x_cols, in_pixel_row, out_col, stride_w, pad_w, 1,
                        dilation_w, in_w, input_w_stride, row_ok, mask_n, PRECISION, ACC_DTYPE)
        acc2 = _row_tap(acc2, dy, x_cols, in_pixel_row, out_col, stride_w, pad_w, 2,
                        dilation_w, in_w, input_w_stride, row_ok, mask_n, PRECISION, ACC_DTYPE)
        if HAS_BIAS or WRITE_COPY:
            bias_acc = sum_and_copy_dy(
                bias_acc, dy, grad_output_rows, dy_pixel, copy_rows,
                out_row * copy_h_stride + out_col * copy_w_stride, mask_m, mask_k,
                offs_k * 0 + r + n_block == 0, copier, HAS_BIAS, WRITE_COPY, ASYNC_RING,
                ACC_DTYPE)

    grad_weight = (grad_weight_pointer + split.to(tl.int64) * grad_weight_split_stride
                   + sample * grad_weight_batch_stride
                   + out_channel[:, None] * grad_weight_out_stride
                   + offs_n[None, :] * grad_weight_in_stride + r * grad_weight_h_stride)
    mask = mask_m[:, None] & mask_n[None, :]
    element = grad_weight_pointer.dtype.element_ty
    tl.store(grad_weight, acc0.to(element), mask=mask)
    tl.store(grad_weight + grad_weight_w_stride, acc1.to(element), mask=mask)
    tl.store(grad_weight + 2 * grad_weight_w_stride, acc2.to(element), mask=mask)
    if HAS_BIAS:
        store_bias_grad(grad_bias_pointer, split, grad_bias_split_stride, sample,
                        grad_bias_batch_stride, out_channel, grad_bias_channel_stride, bias_acc,
                        mask_m, copier)
