"""Per-sample 2-D convolution as an implicit GEMM: every sample has its own kernel and bias.

For sample b and convolution group g the output is a GEMM

    y[b, g*OG + n, m] = sum_{r, t, c} x[b, g*Cg + c, ih(m, r), iw(m, t)] * w[b, g*OG + n, c, r, t]

with M = Ho*Wo output pixels, N = OG = out/groups output channels, K = kh * kw * Cg. The input
patch matrix is never materialised: each (r, t) tap turns the output pixels of a tile into input
coordinates once, and zero padding is a load mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_nsr.arguments import conv_output_size
from triton_nsr.kernels.allocation import Empty
from triton_nsr.kernels.autotune import (
    accumulator_dtype,
    check_launchable,
    dot_precision,
    fits_shape,
    index_dtype_of,
    launch_plan,
    size_class,
    tuned,
)
from triton_nsr.kernels.known_launches import LaunchSite
from triton_nsr.kernels.operands import (
    TMA_ALIGN_BYTES,
    pack_forward_weight,
    route_of,
    set_descriptor_allocator,
    tile_width,
)
from triton_nsr.kernels.tiling import (
    cdiv,
    format_strides,
    program_blocks,
    sample_and_group,
    spatial_tile,
    spatial_tiles,
)

# The first config is the interpreter's; the rest are searched on the GPU.
CONV_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
]
# Taken out of CONV_CONFIGS, with the compiler's reason (docs/kernels.md lists them).
_SMALL_K = ("a bf16 weight tile of BLOCK_K=16 gives each thread 8 bytes: cp.async 8B, and "
            "wgmma waited at depth 0; replaced by the same tile with BLOCK_K=32")
REMOVED_CONV_CONFIGS = [
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=2, num_stages=4),
     "2 warps cannot form a warpgroup: compiles to mma.sync, never wgmma"),
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16}, num_warps=4, num_stages=3),
     _SMALL_K),
    (triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=3),
     _SMALL_K),
]
# The shape class that changes the best tile: channels, kernel size, the pixel count's power of
# two, the layout (the input's column stride: 1 for NCHW, C for channels_last), the input's route
# (TMA or gather) and the dot precision; Triton adds the tensors' dtypes.
CONV_KEY = ["in_group_channels", "out_group_channels", "tuning_pixels", "kernel_h", "kernel_w",
            "input_w_stride", "INPUT_ROUTE", "PRECISION"]


@tuned(CONV_CONFIGS, key=CONV_KEY,
       prune=fits_shape("tuning_pixels", "out_group_channels", "in_group_channels"))
@triton.jit
def conv_fwd_kernel(
    input_pointer, weight_pointer, bias_pointer, output_pointer,
    groups, in_group_channels, out_group_channels, tuning_pixels, weight_channels,
    in_h, in_w, out_h, out_w, kernel_h, kernel_w,
    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    input_batch_stride, input_channel_stride, input_h_stride, input_w_stride,
    weight_batch_stride, weight_group_stride, weight_out_stride, weight_in_stride,
    weight_h_stride, weight_w_stride,
    bias_batch_stride, bias_channel_stride,
    output_batch_stride, output_channel_stride, output_h_stride, output_w_stride,
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    INDEX_DTYPE: tl.constexpr, INPUT_ROUTE: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y = conv2d(x[b], w[b]) + bias[b] for every sample b.

    Pointers:
        input (B, C, H, W), any strides (NCHW, channels_last, sliced). INPUT_ROUTE "tma_nchw" /
            "tma_channels_last" reads it through a TMA descriptor (operands.input_route says
            when it may), "gather" by pointers.
        weight: per-sample kernels w[b, g*OG + o, c, r, t] at b*batch + g*group + o*out + c*in
            + r*h + t*w strides; channels c in [Cg, weight_channels) must read as zeros
            (operands.pack_forward_weight's layout keeps c contiguous).
        bias (B, out) when HAS_BIAS.
        output (B, out, Ho, Wo), any strides.
    tuning_pixels: size_class(Ho*Wo), read by the autotuner's key only.
    Offsets: the sample's base offset is int64; offsets inside a sample use INDEX_DTYPE (int32
    when every tensor's per-sample extent fits, which halves the index registers).
    Grid: (B * groups * spatial_tiles(Ho, Wo, BLOCK_M, TILE_W) * cdiv(OG, BLOCK_N),): each
    program owns (BLOCK_M // TILE_W) x TILE_W output pixels and BLOCK_N output channels.
    """
    num_m_blocks = tl.cdiv(out_h, BLOCK_M // TILE_W) * tl.cdiv(out_w, TILE_W)
    sample_group, m_block, n_block = program_blocks(
        tl.program_id(0), num_m_blocks, tl.cdiv(out_group_channels, BLOCK_N))
    sample, group = sample_and_group(sample_group, groups, INDEX_DTYPE)
    row0, col0, out_row, out_col = spatial_tile(m_block, out_w, BLOCK_M, TILE_W, INDEX_DTYPE)
    offs_n = (n_block * BLOCK_N + tl.arange(0, BLOCK_N)).to(INDEX_DTYPE)
    mask_m = (out_row < out_h) & (out_col < out_w)
    mask_n = offs_n < out_group_channels
    out_channel = group * out_group_channels + offs_n
    row_origin = out_row * stride_h - pad_h
    col_origin = out_col * stride_w - pad_w

    input_sample = (input_pointer + sample * input_batch_stride
                    + group * in_group_channels * input_channel_stride)
    if INPUT_ROUTE == "tma_nchw":
        input_boxes = tl.make_tensor_descriptor(
            input_sample, shape=[in_group_channels, in_h, in_w],
            strides=[input_channel_stride, input_h_stride, 1],
            block_shape=[BLOCK_K, BLOCK_M // TILE_W, TILE_W])
    elif INPUT_ROUTE == "tma_channels_last":
        input_boxes = tl.make_tensor_descriptor(
            input_sample, shape=[in_h, in_w, in_group_channels],
            strides=[input_h_stride, input_w_stride, 1],
            block_shape=[BLOCK_M // TILE_W, TILE_W, BLOCK_K])
    weight_sample = (weight_pointer + sample * weight_batch_stride + group * weight_group_stride
                     + offs_n[None, :] * weight_out_stride)

    # One flat loop over (tap, channel block) so that Triton pipelines all of K, not just the
    # channel blocks of one tap.
    num_c_blocks = tl.cdiv(in_group_channels, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for step in range(kernel_h * kernel_w * num_c_blocks):
        tap = step // num_c_blocks
        c_start = (step % num_c_blocks) * BLOCK_K
        r = tap // kernel_w
        t = tap % kernel_w
        offs_k = (c_start + tl.arange(0, BLOCK_K)).to(INDEX_DTYPE)
        if INPUT_ROUTE == "tma_nchw":
            # The box's out-of-bounds zero fill is the padding (and the channels past Cg).
            a = input_boxes.load([c_start, row0 - pad_h + r * dilation_h,
                                  col0 - pad_w + t * dilation_w])
            a = tl.trans(tl.reshape(a, (BLOCK_K, BLOCK_M)))
        elif INPUT_ROUTE == "tma_channels_last":
            a = input_boxes.load([row0 - pad_h + r * dilation_h, col0 - pad_w + t * dilation_w,
                                  c_start])
            a = tl.reshape(a, (BLOCK_M, BLOCK_K))
        else:
            in_row = row_origin + r * dilation_h
            in_col = col_origin + t * dilation_w
            pixel_ok = (mask_m & (in_row >= 0) & (in_row < in_h) & (in_col >= 0)
                        & (in_col < in_w))
            pixel = in_row * input_h_stride + in_col * input_w_stride
            a = tl.load(input_sample + pixel[:, None] + offs_k[None, :] * input_channel_stride,
                        mask=pixel_ok[:, None] & (offs_k < in_group_channels)[None, :],
                        other=0.0)
        w = tl.load(weight_sample + offs_k[:, None] * weight_in_stride
                    + (r * weight_h_stride + t * weight_w_stride),
                    mask=(offs_k < weight_channels)[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)

    if HAS_BIAS:
        bias = tl.load(bias_pointer + sample * bias_batch_stride
                       + out_channel * bias_channel_stride, mask=mask_n, other=0.0)
        acc += bias.to(ACC_DTYPE)[None, :]
    output = (output_pointer + sample * output_batch_stride
              + out_channel[None, :] * output_channel_stride
              + (out_row * output_h_stride + out_col * output_w_stride)[:, None])
    tl.store(output, acc.to(output_pointer.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def empty_like_layout(input: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """An empty (B, C', H', W') tensor in input's memory format (channels_last stays so)."""
    return torch.empty(shape, dtype=dtype or input.dtype, device=input.device,
                       memory_format=output_format(tuple(input.shape), input.stride()))


def output_format(shape, strides) -> torch.memory_format:
    """channels_last for a 4-D input that is channels_last and not also contiguous, as conv2d
    does; contiguous otherwise. From shape and strides alone (no tensor: plans run no op)."""
    channels_last = (len(shape) == 4 and not _dense_in_order(shape, strides, (3, 2, 1, 0))
                     and _dense_in_order(shape, strides, (1, 3, 2, 0)))
    return torch.channels_last if channels_last else torch.contiguous_format


def _dense_in_order(shape, strides, order) -> bool:
    """torch's is_contiguous for the dimension order ``order`` (innermost first): size-1
    dimensions may have any stride, and an empty tensor is contiguous."""
    if 0 in shape:
        return True
    expected = 1
    for dim in order:
        if shape[dim] != 1:
            if strides[dim] != expected:
                return False
            expected *= shape[dim]
    return True


def gemm_constexprs(dtype, allow_tf32: bool, layouts, pad, dilation, kernel_size, route: str,
                    tile_w) -> dict:
    """The constexprs conv_fwd_kernel and conv_bwd_input_kernel share: the accumulator, the
    dot's precision, the index width for ``layouts`` (index_dtype_of), the pixel operand's
    route and the TMA tile's width."""
    return {"ACC_DTYPE": accumulator_dtype(dtype), "PRECISION": dot_precision(dtype, allow_tf32),
            "INDEX_DTYPE": index_dtype_of(layouts, pad, dilation, kernel_size),
            "INPUT_ROUTE": route, "TILE_W": tile_w}


class ConvForward:
    """conv_fwd_kernel's launch for one shape class, decided once: call it with the input, the
    weight in the forward's packed layout (operands.pack_forward_weight: only its address is
    read, the strides are decided here) and the bias.

    memory_format: of the output; None: the input's.
    """

    __slots__ = ("output_shape", "memory_format", "grid", "args", "constexprs", "launch",
                 "new_output")

    def __init__(self, input_shape, input_stride, dtype, aligned, weight_shape, weight_strides,
                 weight_channels, bias_stride, stride, pad, dilation, groups, allow_tf32,
                 memory_format) -> None:
        batch, channels, in_h, in_w = input_shape
        out_channels, in_group_channels, kernel_h, kernel_w = weight_shape[1:]
        out_h, out_w = conv_output_size((in_h, in_w), (kernel_h, kernel_w), stride, pad, dilation)
        output_shape = (batch, out_channels, out_h, out_w)
        memory_format = memory_format or output_format(input_shape, input_stride)
        output_stride = format_strides(output_shape, memory_format)
        out_group_channels = out_channels // groups
        route, _ = route_of(input_shape, input_stride, dtype, aligned, in_group_channels, stride,
                            pad, dilation, (kernel_h, kernel_w))
        tile_w = tile_width(out_w)

        def grid(meta):
            return (batch * groups * spatial_tiles(out_h, out_w, meta["BLOCK_M"], tile_w)
                    * cdiv(out_group_channels, meta["BLOCK_N"]),)

        args = (groups, in_group_channels, out_group_channels, size_class(out_h * out_w),
                weight_channels, in_h, in_w, out_h, out_w, kernel_h, kernel_w,
                stride[0], stride[1], pad[0], pad[2], dilation[0], dilation[1],
                *input_stride, *weight_strides, *(bias_stride or (0, 0)), *output_stride)
        # The packed weight as the kernel indexes it: (B, groups, o, c, kh, kw) up to its bounds.
        layouts = [(input_shape, input_stride), (output_shape, output_stride),
                   ((batch, groups, out_group_channels, weight_channels, kernel_h, kernel_w),
                    weight_strides)]
        if bias_stride is not None:
            layouts.append(((batch, out_channels), bias_stride))
        constexprs = {"HAS_BIAS": bias_stride is not None,
                      **gemm_constexprs(dtype, allow_tf32, layouts, pad, dilation,
                                        (kernel_h, kernel_w), route, tile_w)}
        self.output_shape, self.memory_format = output_shape, memory_format
        self.grid, self.args, self.constexprs = grid, args, constexprs
        self.launch = LaunchSite(conv_fwd_kernel, grid, constexprs)
        self.new_output = Empty(output_shape, memory_format)

    def __call__(self, input: torch.Tensor, packed_weight: torch.Tensor,
                 bias: torch.Tensor | None, signature=None) -> torch.Tensor:
        output = self.new_output(input.device, input.dtype)
        if output.numel() == 0:
            return output
        if self.constexprs["INPUT_ROUTE"] != "gather":
            set_descriptor_allocator(input)
        self.launch((input, packed_weight, bias if bias is not None else packed_weight, output),
                    self.args, signature)
        return output


@launch_plan
def conv_forward_plan(input_shape, input_stride, dtype, aligned, weight_shape, weight_strides,
                      weight_channels, bias_stride, stride, pad, dilation, groups, allow_tf32,
                      memory_format) -> ConvForward:
    """The :class:`ConvForward` of a shape class, made once. bias_stride is None without a
    bias; aligned: whether the input's address is 16-byte aligned (TMA)."""
    return ConvForward(input_shape, input_stride, dtype, aligned, weight_shape, weight_strides,
                       weight_channels, bias_stride, stride, pad, dilation, groups, allow_tf32,
                       memory_format)


def conv_forward_for(input, weight, bias, stride, pad, dilation, groups, allow_tf32,
                     memory_format=None):
    """(the :class:`ConvForward` of these tensors, the weight's packed operand)."""
    packed, weight_strides, weight_channels = pack_forward_weight(weight, groups)
    plan = conv_forward_plan(
        tuple(input.shape), input.stride(), input.dtype,
        input.data_ptr() % TMA_ALIGN_BYTES == 0, tuple(weight.shape), weight_strides,
        weight_channels, None if bias is None else bias.stride(), tuple(stride), tuple(pad),
        tuple(dilation), groups, allow_tf32, memory_format)
    return plan, packed


def conv_fwd(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    allow_tf32: bool,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """Per-sample convolution.

    Args:
        input: (B, C, H, W). weight: (B, out, C/groups, kh, kw). bias: (B, out) or None.
        pad: zero padding (top, bottom, left, right).
        memory_format: of the output; None: channels_last when the input is (the layer asks
            for contiguous output when it convolves a channels_last copy of an NCHW input).

    Returns:
        (B, out, Ho, Wo).
    """
    check_launchable(input, weight, bias)
    plan, packed = conv_forward_for(input, weight, bias, stride, pad, dilation, groups,
                                    allow_tf32, memory_format)
    return plan(input, packed, bias)
