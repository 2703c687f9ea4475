"""Backward of the per-sample convolution: gradients of the input, the kernels and the bias.

Input gradient, a per-sample transposed convolution (GEMM with M = H*W input pixels,
N = Cg input channels, K = kh * kw * OG):

    dx[b, g*Cg + n, h, w] = sum_{r, t, o} dy[b, g*OG + o, oh, ow] * w[b, g*OG + o, n, r, t]
    where oh = (h + pad_h - r*dil_h) / stride_h and likewise ow, for the taps that divide evenly
    and land inside the output.

Kernel gradient, a per-sample correlation (one GEMM per tap (r, t): M = OG output channels,
N = Cg input channels, K = Ho*Wo output pixels):

    dw[b, g*OG + m, n, r, t] = sum_p dy[b, g*OG + m, p] * x[b, g*Cg + n, ih(p, r), iw(p, t)]

The bias gradient dbias[b, o] = sum_p dy[b, o, p] is the row sum of the dy tiles that the
programs of tap (0, 0) and the first input-channel tile load anyway.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_nsr.kernels.autotune import (
    accumulator_dtype,
    check_launchable,
    dot_precision,
    fits_shape,
    index_dtype,
    size_class,
    tuned,
)
from triton_nsr.kernels.conv import CONV_CONFIGS
from triton_nsr.kernels.tiling import program_tile, sample_and_group

# As CONV_KEY, with dy's column stride for the layout.
INPUT_GRAD_KEY = ["in_group_channels", "out_group_channels", "tuning_pixels", "kernel_h",
                  "kernel_w", "grad_output_w_stride", "PRECISION"]
WEIGHT_GRAD_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
]
# Taken out of WEIGHT_GRAD_CONFIGS, with the compiler's reason (docs/kernels.md lists them).
REMOVED_WEIGHT_GRAD_CONFIGS = [
    (triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
     "BLOCK_M 32 is below wgmma's 64 rows: compiles to mma.sync"),
    (triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 128}, num_warps=4, num_stages=3),
     "BLOCK_M 32 is below wgmma's 64 rows: compiles to mma.sync"),
    (triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 128}, num_warps=2, num_stages=3),
     "2 warps and BLOCK_M 16: compiles to mma.sync"),
]
# Layouts of both operands, precision, pixel class and the split count.
WEIGHT_GRAD_KEY = ["in_group_channels", "out_group_channels", "tuning_pixels", "kernel_h",
                   "kernel_w", "num_splits", "grad_output_w_stride", "input_w_stride",
                   "PRECISION"]
# A split of the kernel gradient's pixel sum gets at least this many pixels.
MIN_PIXELS_PER_SPLIT = 4096


@tuned(CONV_CONFIGS, key=INPUT_GRAD_KEY,
       prune=fits_shape("tuning_pixels", "in_group_channels", "out_group_channels"))
@triton.jit
def conv_bwd_input_kernel(
    grad_output_pointer, weight_pointer, grad_input_pointer, mean_grad_pointer,
    groups, in_group_channels, out_group_channels, in_pixels, tuning_pixels,
    in_h, in_w, out_h, out_w, kernel_h, kernel_w,
    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    grad_output_batch_stride, grad_output_channel_stride, grad_output_h_stride,
    grad_output_w_stride,
    weight_batch_stride, weight_out_stride, weight_in_stride, weight_h_stride, weight_w_stride,
    grad_input_batch_stride, grad_input_channel_stride, grad_input_h_stride,
    grad_input_w_stride,
    mean_grad_batch_stride, mean_grad_channel_stride,
    HAS_MEAN_GRAD: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr, INDEX_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b] = conv_transpose2d(dy[b], w[b]) (+ mean_grad[b, c] at every pixel) for every b.

    Pointers:
        grad_output (B, out, Ho, Wo), any strides.
        weight (B, out, Cg, kh, kw), any strides.
        grad_input (B, C, H, W), any strides; every element is written.
        mean_grad (B, C) when HAS_MEAN_GRAD: a per-channel gradient added at every pixel (the
        router's mean), so it needs no x-sized tensor of its own.
    Offsets inside a sample use INDEX_DTYPE (see conv_fwd_kernel); tuning_pixels (the key's
    size class of H*W) is not read by the body.
    Grid: (B * groups * cdiv(H*W, BLOCK_M) * cdiv(Cg, BLOCK_N),); one flat loop over
    (tap, output-channel block).
    """
    sample_group, _, offs_m, offs_n = program_tile(
        tl.program_id(0), in_pixels, in_group_channels, BLOCK_M, BLOCK_N, INDEX_DTYPE)
    sample, group = sample_and_group(sample_group, groups, INDEX_DTYPE)
    mask_m = offs_m < in_pixels
    mask_n = offs_n < in_group_channels
    in_row = offs_m // in_w
    in_col = offs_m % in_w
    row_origin = in_row + pad_h
    col_origin = in_col + pad_w

    grad_output_sample = (grad_output_pointer + sample * grad_output_batch_stride
                          + group * out_group_channels * grad_output_channel_stride)
    weight_sample = (weight_pointer + sample * weight_batch_stride
                     + group * out_group_channels * weight_out_stride
                     + offs_n[None, :] * weight_in_stride)

    num_o_blocks = tl.cdiv(out_group_channels, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for step in range(kernel_h * kernel_w * num_o_blocks):
        tap = step // num_o_blocks
        o_start = (step % num_o_blocks) * BLOCK_K
        r = tap // kernel_w
        t = tap % kernel_w
        # The output pixel that tap (r, t) maps onto this input pixel exists only where the
        # strided grid hits it exactly and lands inside the output.
        row_span = row_origin - r * dilation_h
        col_span = col_origin - t * dilation_w
        out_row = row_span // stride_h
        out_col = col_span // stride_w
        pixel_ok = (mask_m & (row_span >= 0) & (row_span % stride_h == 0) & (out_row < out_h)
                    & (col_span >= 0) & (col_span % stride_w == 0) & (out_col < out_w))
        offs_k = (o_start + tl.arange(0, BLOCK_K)).to(INDEX_DTYPE)
        mask_k = offs_k < out_group_channels
        pixel = out_row * grad_output_h_stride + out_col * grad_output_w_stride
        a = tl.load(grad_output_sample + pixel[:, None]
                    + offs_k[None, :] * grad_output_channel_stride,
                    mask=pixel_ok[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(weight_sample + offs_k[:, None] * weight_out_stride
                    + (r * weight_h_stride + t * weight_w_stride),
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)

    in_channel = group * in_group_channels + offs_n
    if HAS_MEAN_GRAD:
        mean_grad = tl.load(mean_grad_pointer + sample * mean_grad_batch_stride
                            + in_channel * mean_grad_channel_stride, mask=mask_n, other=0.0)
        acc += mean_grad.to(ACC_DTYPE)[None, :]
    grad_input = (grad_input_pointer + sample * grad_input_batch_stride
                  + in_channel[None, :] * grad_input_channel_stride
                  + (in_row * grad_input_h_stride + in_col * grad_input_w_stride)[:, None])
    tl.store(grad_input, acc.to(grad_input_pointer.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@tuned(WEIGHT_GRAD_CONFIGS, key=WEIGHT_GRAD_KEY,
       prune=fits_shape("out_group_channels", "in_group_channels", "tuning_pixels"))
@triton.jit
def conv_bwd_weight_kernel(
    grad_output_pointer, input_pointer, grad_weight_pointer, grad_bias_pointer,
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
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    INDEX_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw[b] = correlate(x[b], dy[b]) and dbias[b] = dy[b] summed over pixels, for every b.

    Pointers:
        grad_output (B, out, Ho, Wo), input (B, C, H, W): any strides.
        grad_weight (S, B, out, Cg, kh, kw), grad_bias (S, B, out) when HAS_BIAS: any strides;
        split s holds the sum over its share of the output pixels (S = num_splits, usually 1).
    Grid: (B * groups * kh * kw * S * cdiv(OG, BLOCK_M) * cdiv(Cg, BLOCK_N),): one program per
    tap, pixel split, output-channel tile and input-channel tile, so no two programs write the
    same element.
    Offsets inside a sample use INDEX_DTYPE (see conv_fwd_kernel); tuning_pixels (the key's
    size class of Ho*Wo) is not read by the body.
    """
    outer, n_block, offs_m, offs_n = program_tile(
        tl.program_id(0), out_group_channels, in_group_channels, BLOCK_M, BLOCK_N, INDEX_DTYPE)
    split = outer % num_splits
    tap = (outer // num_splits) % (kernel_h * kernel_w)
    sample, group = sample_and_group(outer // (num_splits * kernel_h * kernel_w), groups,
                                     INDEX_DTYPE)
    r = tap // kernel_w
    t = tap % kernel_w
    mask_m = offs_m < out_group_channels
    mask_n = offs_n < in_group_channels
    out_channel = group * out_group_channels + offs_m
    in_channel = group * in_group_channels + offs_n

    grad_output_rows = (grad_output_pointer + sample * grad_output_batch_stride
                        + out_channel[:, None] * grad_output_channel_stride)
    input_cols = (input_pointer + sample * input_batch_stride
                  + in_channel[None, :] * input_channel_stride)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    chunk = tl.cdiv(tl.cdiv(out_pixels, num_splits), BLOCK_K) * BLOCK_K
    first_pixel = split * chunk
    for p_start in range(first_pixel, tl.minimum(first_pixel + chunk, out_pixels), BLOCK_K):
        offs_k = (p_start + tl.arange(0, BLOCK_K)).to(INDEX_DTYPE)
        mask_k = offs_k < out_pixels
        out_row = offs_k // out_w
        out_col = offs_k % out_w
        in_row = out_row * stride_h - pad_h + r * dilation_h
        in_col = out_col * stride_w - pad_w + t * dilation_w
        pixel_ok = mask_k & (in_row >= 0) & (in_row < in_h) & (in_col >= 0) & (in_col < in_w)
        dy = tl.load(grad_output_rows + (out_row * grad_output_h_stride
                                         + out_col * grad_output_w_stride)[None, :],
                     mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        x = tl.load(input_cols + (in_row * input_h_stride + in_col * input_w_stride)[:, None],
                    mask=pixel_ok[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(dy, x, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
        if HAS_BIAS:
            bias_acc += tl.sum(dy.to(ACC_DTYPE), axis=1)

    grad_weight = (grad_weight_pointer + split.to(tl.int64) * grad_weight_split_stride
                   + sample * grad_weight_batch_stride
                   + out_channel[:, None] * grad_weight_out_stride
                   + offs_n[None, :] * grad_weight_in_stride
                   + r * grad_weight_h_stride + t * grad_weight_w_stride)
    tl.store(grad_weight, acc.to(grad_weight_pointer.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])
    # Every (tap, input-channel tile) program summed the same dy rows; one of them writes.
    if HAS_BIAS:  # noqa: SIM102 - a constexpr test, then a runtime one: Triton needs them apart
        if tap + n_block == 0:
            tl.store(grad_bias_pointer + split.to(tl.int64) * grad_bias_split_stride
                     + sample * grad_bias_batch_stride + out_channel * grad_bias_channel_stride,
                     bias_acc.to(grad_bias_pointer.dtype.element_ty), mask=mask_m)


def conv_bwd_input(
    grad_output: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    allow_tf32: bool,
    grad_input: torch.Tensor,
    mean_grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write d loss / d input into ``grad_input`` (B, C, H, W, the input's dtype); return it.

    Args:
        grad_output: (B, out, Ho, Wo). weight: (B, out, Cg, kh, kw).
        mean_grad: (B, C) or None: added to every pixel of channel c of sample b (the router's
            gradient through the spatial mean, already divided by H*W).
    """
    check_launchable(grad_output, weight, mean_grad)
    batch, channels, in_h, in_w = grad_input.shape
    out_channels, in_group_channels, kernel_h, kernel_w = weight.shape[1:]
    out_h, out_w = grad_output.shape[2:]
    out_group_channels = out_channels // groups
    in_pixels = in_h * in_w

    def grid(meta):
        return (batch * groups * triton.cdiv(in_pixels, meta["BLOCK_M"])
                * triton.cdiv(in_group_channels, meta["BLOCK_N"]),)

    conv_bwd_input_kernel[grid](
        grad_output, weight, grad_input, mean_grad if mean_grad is not None else grad_input,
        groups, in_group_channels, out_group_channels, in_pixels, size_class(in_pixels),
        in_h, in_w, out_h, out_w, kernel_h, kernel_w,
        stride[0], stride[1], pad[0], pad[2], dilation[0], dilation[1],
        *grad_output.stride(), *weight.stride(), *grad_input.stride(),
        *(mean_grad.stride() if mean_grad is not None else (0, 0)),
        HAS_MEAN_GRAD=mean_grad is not None,
        ACC_DTYPE=accumulator_dtype(grad_input.dtype),
        PRECISION=dot_precision(grad_input.dtype, allow_tf32),
        INDEX_DTYPE=index_dtype((grad_output, weight, grad_input), pad, dilation,
                                (kernel_h, kernel_w)),
    )
    return grad_input


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 0 elsewhere (the interpreter)."""
    if device.type != "cuda":
        return 0
    return torch.cuda.get_device_properties(device).multi_processor_count


def weight_grad_splits(device: torch.device, programs: int, out_pixels: int) -> int:
    """Into how many pieces the kernel gradient cuts its sum over output pixels.

    One program per (sample, tap, tile) leaves most of the GPU idle when there are few samples
    and large images (batch 1 at 512x512, 64 channels: 36 programs of 64x64 tiles for 132 SMs,
    each walking 262144 pixels). Cutting the pixel sum into pieces, added up afterwards, gives
    every SM work; pieces keep at least MIN_PIXELS_PER_SPLIT pixels so the extra pass stays small.
    """
    multiprocessors = multiprocessor_count(device)
    if multiprocessors == 0:
        return 1
    wanted = triton.cdiv(4 * multiprocessors, max(programs, 1))
    return max(1, min(wanted, out_pixels // MIN_PIXELS_PER_SPLIT))


def conv_bwd_weight(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    allow_tf32: bool,
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor | None,
    sum_splits: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Write d loss / d weight (B, out, Cg, kh, kw) and, if given, d loss / d bias (B, out).

    Args:
        grad_output: (B, out, Ho, Wo). input: (B, C, H, W), the forward input.
        sum_splits: add the pixel splits' partial sums into grad_weight and grad_bias; with
            False they are returned as they are, for a consumer that adds them as it reads
            (the mixing backward), and grad_weight and grad_bias are written only when there
            is a single split.

    Returns:
        The gradients as S partial sums, (S, B, out, Cg, kh, kw) and (S, B, out) or None
        (S = 1: views of grad_weight and grad_bias).
    """
    check_launchable(grad_output, input)
    batch, channels, in_h, in_w = input.shape
    out_channels, out_h, out_w = grad_output.shape[1:]
    kernel_h, kernel_w = kernel_size
    in_group_channels = channels // groups
    out_group_channels = out_channels // groups
    out_pixels = out_h * out_w
    # Estimated with 64x64 tiles; the autotuned tile changes it by a small factor at most.
    programs = (batch * groups * kernel_h * kernel_w * triton.cdiv(out_group_channels, 64)
                * triton.cdiv(in_group_channels, 64))
    num_splits = weight_grad_splits(grad_output.device, programs, out_pixels)
    acc_dtype = accumulator_dtype(input.dtype)
    if num_splits == 1:
        weight_parts = grad_weight.unsqueeze(0)
        bias_parts = grad_bias.unsqueeze(0) if grad_bias is not None else None
    else:
        # Partial sums in the accumulator's precision, added once below.
        partial = torch.float64 if acc_dtype == tl.float64 else torch.float32
        weight_parts = grad_weight.new_empty((num_splits, *grad_weight.shape), dtype=partial)
        bias_parts = (grad_bias.new_empty((num_splits, *grad_bias.shape), dtype=partial)
                      if grad_bias is not None else None)

    def grid(meta):
        return (batch * groups * kernel_h * kernel_w * num_splits
                * triton.cdiv(out_group_channels, meta["BLOCK_M"])
                * triton.cdiv(in_group_channels, meta["BLOCK_N"]),)

    conv_bwd_weight_kernel[grid](
        grad_output, input, weight_parts, bias_parts if bias_parts is not None else weight_parts,
        groups, in_group_channels, out_group_channels, out_pixels, size_class(out_pixels),
        in_h, in_w, out_h, out_w, kernel_h, kernel_w,
        stride[0], stride[1], pad[0], pad[2], dilation[0], dilation[1],
        *grad_output.stride(), *input.stride(),
        num_splits, *weight_parts.stride(),
        *(bias_parts.stride() if bias_parts is not None else (0, 0, 0)),
        HAS_BIAS=grad_bias is not None,
        ACC_DTYPE=acc_dtype,
        PRECISION=dot_precision(input.dtype, allow_tf32),
        INDEX_DTYPE=index_dtype((grad_output, input, grad_weight, grad_bias), pad, dilation,
                                kernel_size),
    )
    if num_splits > 1 and sum_splits:
        grad_weight.copy_(weight_parts.sum(dim=0))
        if grad_bias is not None:
            grad_bias.copy_(bias_parts.sum(dim=0))
    return weight_parts, bias_parts
