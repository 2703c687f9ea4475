"""Input gradient of the per-sample convolution: a per-sample transposed convolution.

A GEMM with M = H*W input pixels, N = Cg input channels, K = kh * kw * OG:

    dx[b, g*Cg + n, h, w] = sum_{r, t, o} dy[b, g*OG + o, oh, ow] * w[b, g*OG + o, n, r, t]
    where oh = (h + pad_h - r*dil_h) / stride_h and likewise ow, for the taps that divide evenly
    and land inside the output.

The router's gradient through the spatial mean is added in the epilogue (``mean_grad``), so the
layer makes no x-sized tensor for it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_nsr.kernels.autotune import (
    check_launchable,
    dot_precision,
    fits_shape,
    launch_plan,
    size_class,
    tuned,
)
from triton_nsr.kernels.conv import CONV_CONFIGS, gemm_constexprs
from triton_nsr.kernels.known_launches import LaunchSite
from triton_nsr.kernels.operands import (
    TMA_ALIGN_BYTES,
    input_grad_weight_strides,
    pack_forward_weight,
    pack_input_grad_weight,
    route_of,
    set_descriptor_allocator,
    tile_width,
)
from triton_nsr.kernels.tiling import (
    cdiv,
    program_blocks,
    sample_and_group,
    spatial_tile,
    spatial_tiles,
)

# As CONV_KEY, with dy's column stride for the layout and dy's route.
INPUT_GRAD_KEY = ["in_group_channels", "out_group_channels", "tuning_pixels", "kernel_h",
                  "kernel_w", "grad_output_w_stride", "INPUT_ROUTE", "PRECISION"]


@tuned(CONV_CONFIGS, key=INPUT_GRAD_KEY,
       prune=fits_shape("tuning_pixels", "in_group_channels", "out_group_channels"))
@triton.jit
def conv_bwd_input_kernel(
    grad_output_pointer, weight_pointer, grad_input_pointer, mean_grad_pointer,
    groups, in_group_channels, out_group_channels, tuning_pixels, weight_out_channels,
    weight_in_channels,
    in_h, in_w, out_h, out_w, kernel_h, kernel_w,
    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    grad_output_batch_stride, grad_output_channel_stride, grad_output_h_stride,
    grad_output_w_stride,
    weight_batch_stride, weight_group_stride, weight_out_stride, weight_in_stride,
    weight_h_stride, weight_w_stride,
    grad_input_batch_stride, grad_input_channel_stride, grad_input_h_stride,
    grad_input_w_stride,
    mean_grad_batch_stride, mean_grad_channel_stride,
    HAS_MEAN_GRAD: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr, INDEX_DTYPE: tl.constexpr,
    INPUT_ROUTE: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b] = conv_transpose2d(dy[b], w[b]) (+ mean_grad[b, c] at every pixel) for every b.

    Pointers:
        grad_output (B, out, Ho, Wo), any strides; INPUT_ROUTE "tma_nchw" / "tma_channels_last"
            reads it through a TMA descriptor (stride 1 only), "gather" by pointers.
        weight: w[b, g*OG + o, c, r, t] at b*batch + g*group + o*out + c*in + r*h + t*w strides,
            read for o < weight_out_channels and c < weight_in_channels, which must read as
            zeros past OG and Cg: one of the packed layouts of kernels/operands.py, o contiguous
            (pack_input_grad_weight, for TF32) or c contiguous (the forward's, for the rest).
        grad_input (B, C, H, W), any strides; every element is written.
        mean_grad (B, C) when HAS_MEAN_GRAD: a per-channel gradient added at every pixel (the
        router's mean), so it needs no x-sized tensor of its own.
    Offsets inside a sample use INDEX_DTYPE (see conv_fwd_kernel); tuning_pixels (the key's
    size class of H*W) is not read by the body.
    Grid: (B * groups * spatial_tiles(H, W, BLOCK_M, TILE_W) * cdiv(Cg, BLOCK_N),); one flat
    loop over (tap, output-channel block).
    """
    num_m_blocks = tl.cdiv(in_h, BLOCK_M // TILE_W) * tl.cdiv(in_w, TILE_W)
    sample_group, m_block, n_block = program_blocks(
        tl.program_id(0), num_m_blocks, tl.cdiv(in_group_channels, BLOCK_N))
    sample, group = sample_and_group(sample_group, groups, INDEX_DTYPE)
    row0, col0, in_row, in_col = spatial_tile(m_block, in_w, BLOCK_M, TILE_W, INDEX_DTYPE)
    offs_n = (n_block * BLOCK_N + tl.arange(0, BLOCK_N)).to(INDEX_DTYPE)
    mask_m = (in_row < in_h) & (in_col < in_w)
    mask_n = offs_n < in_group_channels
    row_origin = in_row + pad_h
    col_origin = in_col + pad_w

    grad_output_sample = (grad_output_pointer + sample * grad_output_batch_stride
                          + group * out_group_channels * grad_output_channel_stride)
    if INPUT_ROUTE == "tma_nchw":
        grad_output_boxes = tl.make_tensor_descriptor(
            grad_output_sample, shape=[out_group_channels, out_h, out_w],
            strides=[grad_output_channel_stride, grad_output_h_stride, 1],
            block_shape=[BLOCK_K, BLOCK_M // TILE_W, TILE_W])
    elif INPUT_ROUTE == "tma_channels_last":
        grad_output_boxes = tl.make_tensor_descriptor(
            grad_output_sample, shape=[out_h, out_w, out_group_channels],
            strides=[grad_output_h_stride, grad_output_w_stride, 1],
            block_shape=[BLOCK_M // TILE_W, TILE_W, BLOCK_K])
    weight_sample = (weight_pointer + sample * weight_batch_stride + group * weight_group_stride
                     + offs_n[None, :] * weight_in_stride)

    num_o_blocks = tl.cdiv(out_group_channels, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for step in range(kernel_h * kernel_w * num_o_blocks):
        tap = step // num_o_blocks
        o_start = (step % num_o_blocks) * BLOCK_K
        r = tap // kernel_w
        t = tap % kernel_w
        offs_k = (o_start + tl.arange(0, BLOCK_K)).to(INDEX_DTYPE)
        if INPUT_ROUTE == "tma_nchw":
            # Stride 1: tap (r, t) reads dy at (h + pad_h - r*dil_h, w + pad_w - t*dil_w); the
            # box's zero fill covers the output's edges.
            a = grad_output_boxes.load([o_start, row0 + pad_h - r * dilation_h,
                                        col0 + pad_w - t * dilation_w])
            a = tl.trans(tl.reshape(a, (BLOCK_K, BLOCK_M)))
        elif INPUT_ROUTE == "tma_channels_last":
            a = grad_output_boxes.load([row0 + pad_h - r * dilation_h,
                                        col0 + pad_w - t * dilation_w, o_start])
            a = tl.reshape(a, (BLOCK_M, BLOCK_K))
        else:
            # The output pixel that tap (r, t) maps onto this input pixel exists only where the
            # strided grid hits it exactly and lands inside the output.
            row_span = row_origin - r * dilation_h
            col_span = col_origin - t * dilation_w
            out_row = row_span // stride_h
            out_col = col_span // stride_w
            pixel_ok = (mask_m & (row_span >= 0) & (row_span % stride_h == 0)
                        & (out_row < out_h) & (col_span >= 0) & (col_span % stride_w == 0)
                        & (out_col < out_w))
            pixel = out_row * grad_output_h_stride + out_col * grad_output_w_stride
            a = tl.load(grad_output_sample + pixel[:, None]
                        + offs_k[None, :] * grad_output_channel_stride,
                        mask=pixel_ok[:, None] & (offs_k < out_group_channels)[None, :],
                        other=0.0)
        # Bounds of the packed layout, not of the GEMM: its zero padding is read unmasked, so
        # the contiguous dimension keeps its 16-byte loads when Cg or OG is not a multiple of 16.
        w = tl.load(weight_sample + offs_k[:, None] * weight_out_stride
                    + (r * weight_h_stride + t * weight_w_stride),
                    mask=(offs_k < weight_out_channels)[:, None]
                    & (offs_n < weight_in_channels)[None, :], other=0.0)
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


class ConvInputGradient:
    """conv_bwd_input_kernel's launch for one shape class, decided once: call it with dy, the
    weight operand (:func:`pack_weight_for_input_grad`: only its address is read), the
    gradient to write and mean_grad (or None). mean_grad_stride is None without a mean
    gradient."""

    __slots__ = ("grid", "args", "constexprs", "launch")

    def __init__(self, grad_output_shape, grad_output_stride, aligned, weight_shape,
                 weight_strides, weight_bounds, grad_input_shape, grad_input_stride, dtype,
                 mean_grad_stride, stride, pad, dilation, groups, allow_tf32) -> None:
        batch, channels, in_h, in_w = grad_input_shape
        out_channels, in_group_channels, kernel_h, kernel_w = weight_shape[1:]
        out_h, out_w = grad_output_shape[2:]
        out_group_channels = out_channels // groups
        route, _ = route_of(grad_output_shape, grad_output_stride, dtype, aligned,
                            out_group_channels, stride, pad, dilation, (kernel_h, kernel_w))
        tile_w = tile_width(in_w)

        def grid(meta):
            return (batch * groups * spatial_tiles(in_h, in_w, meta["BLOCK_M"], tile_w)
                    * cdiv(in_group_channels, meta["BLOCK_N"]),)

        args = (groups, in_group_channels, out_group_channels, size_class(in_h * in_w),
                *weight_bounds, in_h, in_w, out_h, out_w, kernel_h, kernel_w,
                stride[0], stride[1], pad[0], pad[2], dilation[0], dilation[1],
                *grad_output_stride, *weight_strides, *grad_input_stride,
                *(mean_grad_stride or (0, 0)))
        # The packed weight as the kernel indexes it: (B, groups, o, c, kh, kw) up to its bounds.
        layouts = [(grad_output_shape, grad_output_stride), (grad_input_shape, grad_input_stride),
                   ((batch, groups, *weight_bounds, kernel_h, kernel_w), weight_strides)]
        constexprs = {"HAS_MEAN_GRAD": mean_grad_stride is not None,
                      **gemm_constexprs(dtype, allow_tf32, layouts, pad, dilation,
                                        (kernel_h, kernel_w), route, tile_w)}
        self.grid, self.args, self.constexprs = grid, args, constexprs
        self.launch = LaunchSite(conv_bwd_input_kernel, grid, constexprs)

    def __call__(self, grad_output, packed_weight, grad_input, mean_grad=None, signature=None):
        if self.constexprs["INPUT_ROUTE"] != "gather":
            set_descriptor_allocator(grad_output)
        self.launch((grad_output, packed_weight, grad_input,
                     mean_grad if mean_grad is not None else grad_input), self.args, signature)
        return grad_input


@launch_plan
def conv_input_gradient_plan(grad_output_shape, grad_output_stride, aligned, weight_shape,
                             weight_strides, weight_bounds, grad_input_shape,
                             grad_input_stride, dtype, mean_grad_stride, stride, pad, dilation,
                             groups, allow_tf32) -> ConvInputGradient:
    """The :class:`ConvInputGradient` of a shape class, made once."""
    return ConvInputGradient(grad_output_shape, grad_output_stride, aligned, weight_shape,
                             weight_strides, weight_bounds, grad_input_shape,
                             grad_input_stride, dtype, mean_grad_stride, stride, pad, dilation,
                             groups, allow_tf32)


def pack_weight_for_input_grad(weight: torch.Tensor, groups: int, precision: str,
                               packed: torch.Tensor | None = None):
    """The input gradient's weight operand: (tensor, strides, (K bound, N bound)).

    TF32 wgmma reads only K-major operands from shared memory, so TF32 reads the layout with
    output channels contiguous: ``packed`` when the layer's mixing wrote it, else a copy
    (operands.pack_input_grad_weight). 16-bit wgmma also takes an N-major B from shared memory,
    and the FMA path (IEEE float32, float64) has no preference: those read the forward's packed
    layout (input channels contiguous), which the layer's mixing writes, so no copy is made.
    """
    out_group_channels = weight.shape[1] // groups
    if precision == "tf32":
        if packed is None:
            packed, strides, padded = pack_input_grad_weight(weight, groups)
        else:
            strides, padded = input_grad_weight_strides(packed), packed.shape[-1]
        return packed, strides, (padded, weight.shape[2])
    packed, strides, padded = pack_forward_weight(weight, groups)
    return packed, strides, (out_group_channels, padded)


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
    packed_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write d loss / d input into ``grad_input`` (B, C, H, W, the input's dtype); return it.

    Args:
        grad_output: (B, out, Ho, Wo). weight: (B, out, Cg, kh, kw).
        mean_grad: (B, C) or None: added to every pixel of channel c of sample b (the router's
            gradient through the spatial mean, already divided by H*W).
        packed_weight: weight already in the TF32 layout, (B, groups, kh, kw, Cg, Op)
            (operands.empty_packed_input_grad_weight), or None.
    """
    check_launchable(grad_output, weight, mean_grad)
    plan, packed = conv_input_gradient_for(grad_output, weight, stride, pad, dilation, groups,
                                           allow_tf32, grad_input, mean_grad, packed_weight)
    return plan(grad_output, packed, grad_input, mean_grad)


def conv_input_gradient_for(grad_output, weight, stride, pad, dilation, groups, allow_tf32,
                            grad_input, mean_grad=None, packed_weight=None):
    """(the :class:`ConvInputGradient` of these tensors, the weight operand to pass it)."""
    dtype = grad_input.dtype
    packed, weight_strides, weight_bounds = pack_weight_for_input_grad(
        weight, groups, dot_precision(dtype, allow_tf32), packed_weight)
    plan = conv_input_gradient_plan(
        tuple(grad_output.shape), grad_output.stride(),
        grad_output.data_ptr() % TMA_ALIGN_BYTES == 0, tuple(weight.shape), weight_strides,
        weight_bounds, tuple(grad_input.shape), grad_input.stride(), dtype,
        None if mean_grad is None else mean_grad.stride(), tuple(stride), tuple(pad),
        tuple(dilation), groups, allow_tf32)
    return plan, packed
