"""Kernel gradient of the per-sample convolution: the kernels' and the bias' gradients.

A per-sample correlation, one GEMM per tap (r, t): M = OG output channels, N = Cg input
channels, K = Ho*Wo output pixels:

    dw[b, g*OG + m, n, r, t] = sum_p dy[b, g*OG + m, p] * x[b, g*Cg + n, ih(p, r), iw(p, t)]

The bias gradient dbias[b, o] = sum_p dy[b, o, p] is the row sum of the dy tiles that the
programs of tap (0, 0) and the first input-channel tile load anyway.

Two kernels: the per-tap ``conv_bwd_weight_kernel`` (here, any kernel size, with its transposed
TF32 variant) and the all-taps ``conv_bwd_weight_3x3_kernel`` (kernels/conv_bwd_weight_3x3.py);
``conv_bwd_weight`` chooses between them, splits the pixel sum where the batch leaves the GPU
idle, and launches.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

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
from triton_nsr.kernels.conv_bwd_weight_3x3 import conv_bwd_weight_3x3_kernel
from triton_nsr.kernels.conv_bwd_weight_row import conv_bwd_weight_row_kernel
from triton_nsr.kernels.known_launches import LaunchSite
from triton_nsr.kernels.operands import TMA_ALIGN_BYTES, route_of, set_descriptor_allocator
from triton_nsr.kernels.tiling import (
    cdiv,
    contiguous_strides,
    program_tile,
    sample_and_group,
)
from triton_nsr.kernels.weight_grad_dy import store_bias_grad, sum_and_copy_dy

WEIGHT_GRAD_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
]
# The per-tap kernel's tiles with X_IN_REGISTERS (TF32_X_IN_REGISTERS), whose MMA rows are the
# BLOCK_N input channels (wgmma's 64 at least) and whose columns the BLOCK_M output channels
# (32 fit W1-reduce's 32). Each compiles for sm_90 with no spills on W1, W4 and the odd shape in
# Triton 3.6 and 3.9. Left out: 64x64x64 on 4 warps and 4 stages, and 64x128x32 on 4 warps,
# at 255 registers (3.9: 48 B spilled on W1 and W4, 72 B on the odd shape).
X_ROWS_WEIGHT_GRAD_CONFIGS = [
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
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
# The dtypes the all-taps kernel runs for: 16-bit (in float32 its operand tiles double and
# ptxas spills in every config). On an H200 (Triton 3.6, the lease of 2026-11-30) its bf16 and
# fp16 kernel gradients were wrong by a relative 0.57 = sqrt(3/9), right in the interpreter: the
# kernel row 2 taps were zero. The compiled IR showed why: Triton's frontend takes a loop's
# carried variables to be the names whose value changes over one pass of the body, and the dy
# row then carried over two steps was initialised from the same zero tile as the other, so it
# looked unchanged, was never carried and its dots multiplied the constant. The kernel now
# carries one dy row (float32) and loads the other again; tests/test_hopper_compile.py checks
# in the sm_90 IR that every dot reads a loaded or carried operand, never a constant.
ALL_TAPS_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)
# Measured on an H200 (bench/gpu/splits.py, b49e5e9, bf16, channels_last, autotuned): the per-tap
# kernel beat the all-taps one at every split count. Best of each, per-tap against all-taps:
# W1-expand 70 us against 95 us (the layer's one split: 70 against 203), W1-reduce 72 against
# 126 (the layer's TRANSPOSED: 75 against 156), W4 212 against 278 (32 splits, near the
# layer's 29: 229, against the all-taps kernel's 323 at the layer's 64). Its 9 times more
# programs fill the 132 SMs; the L2 bytes the all-taps kernel saves were not the limit. So a
# channels_last dy takes the per-tap kernel; an NCHW dy keeps the all-taps one, which reads it
# in unshifted rows (the per-tap kernel's are 2-byte loads there) and writes its channels_last
# copy for the input gradient. bench.gpu.splits times both on every GPU lease, forcing the
# all-taps kernel for both layouts through ALL_TAPS_LAYOUTS.
ALL_TAPS_LAYOUTS: tuple[str, ...] = ("nchw",)
# The per-tap kernel keys on the layouts of both operands, the precision, the pixel class, the
# split count, the kernel size and its orientation (X_IN_REGISTERS). The all-taps kernel keys on
# its own arguments (kernels/conv_bwd_weight_3x3.py). The two lists keep the order of the one list
# they replaced (which named every argument of both, each kernel skipping those it lacked, until
# Triton 3.9 refused that), so every stored shape class is the same tuple.
PER_TAP_WEIGHT_GRAD_KEY = ["in_group_channels", "out_group_channels", "tuning_pixels",
                           "kernel_h", "kernel_w", "num_splits", "grad_output_w_stride",
                           "input_w_stride", "PRECISION", "X_IN_REGISTERS"]
# The per-tap kernel's pixel loop in TF32 runs unpipelined. On an H200 (Triton 3.6, the layer probe,
# bench.gpu.layer_probe, at 865104e) it wrote different bits on the same inputs, launch after
# launch, with 2 or more stages and 64-row tiles on an NCHW input: 1-3 of 3 repeats differed, by up
# to 34 in sums of about 1e3 (relative errors up to 4.7e-2 against float64, where a correct TF32 sum
# is 8e-4). With one stage every tile and layout repeated bit for bit, as did bf16 at any depth; the
# layer's TF32 smoke cases had failed their repeat check in both leases. The cause, read from the
# sm_90 compiles (Triton 3.6 and 3.9): the loaded dy tile also fed the bias sum and the dy copy,
# and Triton then gave its ring of shared buffers one buffer fewer than the loop's stages while
# the wgmma reading it stayed in flight, so the cp.async of the tile two steps ahead landed in the
# buffer that wgmma still read (bf16 had the same ring; its faster wgmma evidently finished
# first). The kernel now loads dy a second time for those uses and the ring is as deep as the
# stages (compiled.shared_buffer_races finds none). Pipelined TF32 waits for a GPU run to repeat
# bit for bit (the layer probe's kernel repeats run it at 1, 2 and the config's stages).
TF32_LOOP_STAGES = 1
# The TF32 per-tap kernel gradient of an NCHW dy, run transposed (the kernel's X_IN_REGISTERS): TF32
# wgmma reads only K-major (pixel-contiguous) operands from shared memory. dy in NCHW is one, as
# wgmma's B; x's tile is none at a tap shift (the channels_last copy the layer passes is MN-major,
# an NCHW x 4 bytes off at odd columns), so it goes to wgmma's A from registers, which takes any
# layout. Both then load by 16-byte cp.async and the loop pipelines at the config's depth: wgmma,
# wait depth >= 1, no spills in the sm_90 compiles (docs/kernels.md, rows marked alternative), where
# the unpipelined loop above has neither. Off until an H200 shows it repeats bit for bit, which the
# untransposed pipelined loop did not: bench.gpu.layer_probe repeats and times it right after its
# layer repeats (capture.kernel_gradient_variant("per_tap_x_in_registers")).
TF32_X_IN_REGISTERS = False
# The dy layouts for which a kernel three taps wide runs one program per kernel row
# (kernels/conv_bwd_weight_row.py: the row's taps share each dy tile) instead of one per tap.
# None yet: the candidate ranking models it fastest for a channels_last dy (docs/design.md,
# "Kernel-gradient candidates"); bench.gpu.candidates times it against the per-tap kernel, and
# a GPU run's result decides (capture.kernel_gradient_variant("row_of_3") forces it).
ROW_LAYOUTS: tuple[str, ...] = ()
# A split of the kernel gradient's pixel sum gets at least this many pixels.
MIN_PIXELS_PER_SPLIT = 4096


_FITS_DY_ROWS = fits_shape("out_group_channels", "in_group_channels", "tuning_pixels")
_FITS_X_ROWS = fits_shape("out_group_channels", "in_group_channels", "tuning_pixels",
                          rows="BLOCK_N")


def _fits_per_tap_tile(configs, named_args, **kwargs):
    """fits_shape for the per-tap kernel gradient over the configs of its orientation: the MMA
    rows are the BLOCK_M output channels (WEIGHT_GRAD_CONFIGS) or, with X_IN_REGISTERS, the
    BLOCK_N input channels (X_ROWS_WEIGHT_GRAD_CONFIGS)."""
    if {**named_args, **kwargs}.get("X_IN_REGISTERS"):
        mine, fits = X_ROWS_WEIGHT_GRAD_CONFIGS, _FITS_X_ROWS
    else:
        mine, fits = WEIGHT_GRAD_CONFIGS, _FITS_DY_ROWS
    return fits([c for c in configs if any(c is m for m in mine)], named_args, **kwargs)


@tuned(WEIGHT_GRAD_CONFIGS + X_ROWS_WEIGHT_GRAD_CONFIGS, key=PER_TAP_WEIGHT_GRAD_KEY,
       prune=_fits_per_tap_tile)
@triton.jit
def conv_bwd_weight_kernel(
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
    X_IN_REGISTERS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw[b] = correlate(x[b], dy[b]) and dbias[b] = dy[b] summed over pixels, for every b.

    LOOP_STAGES: the pixel loop's pipeline depth, or None for the config's num_stages (see
    TF32_LOOP_STAGES).
    X_IN_REGISTERS: the GEMM runs transposed, dw^T = x^T dy^T, with the x tile as wgmma's A
    operand from registers (see TF32_X_IN_REGISTERS): the BLOCK_N input channels are the MMA's
    rows, and dy, (pixels, out) K-major when it is NCHW, is its B operand in shared memory.

    With WRITE_COPY the programs of tap 0 and the first input-channel tile, which between them
    load every dy element once, also store it to copy (B, out, Ho, Wo) in the copy's strides
    (the input gradient's channels_last copy of an NCHW dy).

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
    outer, _, n_block, offs_m, offs_n = program_tile(
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
    input_rows = (input_pointer + sample * input_batch_stride
                  + in_channel[:, None] * input_channel_stride)
    copy_rows = (copy_pointer + sample * copy_batch_stride
                 + out_channel[:, None] * copy_channel_stride)
    copier = (tap == 0) & (n_block == 0)

    if X_IN_REGISTERS:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC_DTYPE)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    # A pipelined loop of asynchronous wgmma (16-bit, or TF32 at more than one stage) keeps its
    # operands in rings of shared buffers; an unpipelined or IEEE float32 loop has none, and
    # there the second load of dy would only cost registers (spills in float32 tiles).
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
        in_col = out_col * stride_w - pad_w + t * dilation_w
        pixel_ok = mask_k & (in_row >= 0) & (in_row < in_h) & (in_col >= 0) & (in_col < in_w)
        dy = tl.load(grad_output_rows + (out_row * grad_output_h_stride
                                         + out_col * grad_output_w_stride)[None, :],
                     mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        in_pixel = in_row * input_h_stride + in_col * input_w_stride
        if X_IN_REGISTERS:
            # x's tile as wgmma's A needs no K-major copy in shared memory, but Triton takes an
            # operand straight from a load to be one; computed (+ 0.0 leaves every value as it
            # is), it stays in registers. Loaded (BLOCK_N, BLOCK_K) as the dot takes it: a
            # tl.trans of a (BLOCK_K, BLOCK_N) load makes its cp.async 4 bytes wide.
            x = tl.load(input_rows + in_pixel[None, :],
                        mask=mask_n[:, None] & pixel_ok[None, :], other=0.0)
            acc = tl.dot(x + 0.0, tl.trans(dy), acc, input_precision=PRECISION,
                         out_dtype=ACC_DTYPE)
        else:
            x = tl.load(input_cols + in_pixel[:, None], mask=pixel_ok[:, None] & mask_n[None, :],
                        other=0.0)
            acc = tl.dot(dy, x, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
        if HAS_BIAS or WRITE_COPY:
            # The sum and the copy of dy (kernels/weight_grad_dy.py: loaded once more where
            # the loop is pipelined).
            bias_acc = sum_and_copy_dy(
                bias_acc, dy, grad_output_rows,
                out_row * grad_output_h_stride + out_col * grad_output_w_stride, copy_rows,
                out_row * copy_h_stride + out_col * copy_w_stride, mask_m, mask_k,
                offs_k * 0 + tap + n_block == 0, copier, HAS_BIAS, WRITE_COPY, ASYNC_RING,
                ACC_DTYPE)

    # One pointer expression per orientation, each summed in this order: summed from a shared
    # base instead, the untransposed store took more registers (Triton 3.6: 168 -> 227 in bf16
    # 64x128 tiles, and float32 tiles spilled).
    if X_IN_REGISTERS:
        grad_weight = (grad_weight_pointer + split.to(tl.int64) * grad_weight_split_stride
                       + sample * grad_weight_batch_stride
                       + offs_n[:, None] * grad_weight_in_stride
                       + out_channel[None, :] * grad_weight_out_stride
                       + r * grad_weight_h_stride + t * grad_weight_w_stride)
        tl.store(grad_weight, acc.to(grad_weight_pointer.dtype.element_ty),
                 mask=mask_n[:, None] & mask_m[None, :])
    else:
        grad_weight = (grad_weight_pointer + split.to(tl.int64) * grad_weight_split_stride
                       + sample * grad_weight_batch_stride
                       + out_channel[:, None] * grad_weight_out_stride
                       + offs_n[None, :] * grad_weight_in_stride
                       + r * grad_weight_h_stride + t * grad_weight_w_stride)
        tl.store(grad_weight, acc.to(grad_weight_pointer.dtype.element_ty),
                 mask=mask_m[:, None] & mask_n[None, :])
    # Every (tap, input-channel tile) program summed the same dy rows; one of them writes.
    if HAS_BIAS:
        store_bias_grad(grad_bias_pointer, split, grad_bias_split_stride, sample,
                        grad_bias_batch_stride, out_channel, grad_bias_channel_stride, bias_acc,
                        mask_m, copier)


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 0 elsewhere (the interpreter)."""
    if device.type != "cuda":
        return 0
    return _cuda_multiprocessors(torch.device(device).index or 0)


@functools.cache
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# Programs of the split kernel gradient per SM: two 64x64 (or 128x64) tiles fit one SM's
# registers and shared memory, so the grid is one full wave rather than a wave and a tail.
PROGRAMS_PER_MULTIPROCESSOR = 2


def weight_grad_splits(device: torch.device, programs: int, out_pixels: int) -> int:
    """Into how many pieces the kernel gradient cuts its sum over output pixels.

    One program per (sample, tap, tile) leaves most of the GPU idle when there are few samples
    and large images (batch 1 at 512x512, 64 channels: 9 programs of 64x64 tiles for 132 SMs,
    each walking 262144 pixels). Cutting the pixel sum into pieces, added up afterwards, fills
    the GPU; the pieces are float32 partial sums that the mixing backward reads, so no more are
    made than one wave needs (PROGRAMS_PER_MULTIPROCESSOR per SM, rounded down) and each keeps
    at least MIN_PIXELS_PER_SPLIT pixels.
    """
    multiprocessors = multiprocessor_count(device)
    if multiprocessors == 0:
        return 1
    wanted = PROGRAMS_PER_MULTIPROCESSOR * multiprocessors // max(programs, 1)
    return max(1, min(wanted, out_pixels // MIN_PIXELS_PER_SPLIT))


def _channels_last(tensor: torch.Tensor) -> bool:
    """Whether a (B, C, H, W) tensor's channels are its innermost dimension (C > 1)."""
    return tensor.shape[1] > 1 and tensor.stride(1) == 1


def _transposes(out_group_channels: int, in_group_channels: int, pad, copy_stride,
                grad_output_route: str) -> bool:
    """Whether the all-taps kernel runs TRANSPOSED (x the carried rows, dy the shifted tensor).

    Its rows are read twice and its shifted tensor three times, and the rows' channels fill
    wgmma's M (64 rows at least): the wider of dy and x should be the rows. Taken when x has
    more channels per group than dy (W1-reduce: 128 against 32), at padding 1 and only where dy
    can be boxed by TMA at tap-shifted pixels (``grad_output_route``, operands.route_of:
    channels_last): an NCHW dy shifted by a column is 2-byte loads, and there the kernel also
    writes dy's channels_last copy, which it takes from unshifted rows.
    """
    return (in_group_channels > out_group_channels and pad == (1, 1, 1, 1)
            and copy_stride is None and grad_output_route == "tma_channels_last")


class ConvWeightGradient:
    """The kernel gradient's launch for one shape class, decided once (which kernel, how many
    pixel splits, tiles' grid, arguments): call it with dy, x and the gradients to write.

    aligned and grad_output_aligned: whether input's and grad_output's addresses are 16-byte
    aligned; grad_bias_stride is None without a bias gradient, copy_stride without a copy of
    dy to write; tf32_x_in_registers: the per-tap kernel runs X_IN_REGISTERS if the dot is
    TF32. ``partial``: the partial sums' dtype, or None: written straight into grad_weight and
    grad_bias (one split).
    """

    __slots__ = ("partial", "num_splits", "all_taps", "rows", "grid", "args", "constexprs",
                 "launch")

    def __init__(self, grad_output_shape, grad_output_stride, input_shape, input_stride, dtype,
                 aligned, grad_output_aligned, kernel_size, stride, pad, dilation, groups,
                 allow_tf32, grad_weight_stride, grad_bias_stride, num_splits, all_taps,
                 copy_stride, tf32_x_in_registers, rows: bool = False) -> None:
        batch, channels, in_h, in_w = input_shape
        out_channels, out_h, out_w = grad_output_shape[1:]
        kernel_h, kernel_w = kernel_size
        in_group_channels = channels // groups
        out_group_channels = out_channels // groups
        out_pixels = out_h * out_w
        acc_dtype = accumulator_dtype(dtype)
        weight_shape = (batch, out_channels, in_group_channels, kernel_h, kernel_w)
        if num_splits == 1:
            partial = None
            # unsqueeze(0) of grad_weight and grad_bias: the split stride is never stepped.
            weight_parts_stride = (0, *grad_weight_stride)
            bias_parts_stride = (0, *grad_bias_stride) if grad_bias_stride else (0, 0, 0)
        else:
            # Partial sums in the accumulator's precision, added by the consumer.
            partial = torch.float64 if acc_dtype == tl.float64 else torch.float32
            weight_parts_stride = contiguous_strides((num_splits, *weight_shape))
            bias_parts_stride = (contiguous_strides((num_splits, batch, out_channels))
                                 if grad_bias_stride else (0, 0, 0))
        layouts = [(grad_output_shape, grad_output_stride), (input_shape, input_stride),
                   (weight_shape, weight_parts_stride[1:]),
                   ((batch, out_channels), bias_parts_stride[1:])]
        if copy_stride is not None:
            layouts.append((grad_output_shape, copy_stride))
        index = index_dtype_of(layouts, pad, dilation, kernel_size)
        precision = dot_precision(dtype, allow_tf32)
        constexprs = {"HAS_BIAS": grad_bias_stride is not None, "ACC_DTYPE": acc_dtype,
                      "PRECISION": precision, "INDEX_DTYPE": index}
        if all_taps:
            # dy's route: whether it can be the shifted tensor, and its route when it is.
            grad_output_route, _ = route_of(grad_output_shape, grad_output_stride, dtype,
                                            grad_output_aligned, out_group_channels, stride, pad,
                                            dilation, kernel_size)
            transposed = _transposes(out_group_channels, in_group_channels, pad, copy_stride,
                                     grad_output_route)
            # The carried rows (the GEMM's M) and the shifted tensor (N): dy and x, or x and dy.
            if transposed:
                # Padding 2 - 1 = 1 either way; grad_weight's out and in strides swap (see the
                # kernel's docstring).
                rows_shape, rows_stride, m_channels = input_shape, input_stride, in_group_channels
                shifted_shape, shifted_stride, n_channels = (grad_output_shape, grad_output_stride,
                                                             out_group_channels)
                route = grad_output_route
                split_, batch_, out_, in_, h_, w_ = weight_parts_stride
                weight_parts_stride = (split_, batch_, in_, out_, h_, w_)
            else:
                rows_shape, rows_stride, m_channels = (grad_output_shape, grad_output_stride,
                                                       out_group_channels)
                shifted_shape, shifted_stride, n_channels = (input_shape, input_stride,
                                                             in_group_channels)
                route, _ = route_of(input_shape, input_stride, dtype, aligned, in_group_channels,
                                    stride, pad, dilation, kernel_size)
            # An NCHW box at tap-shifted columns is never taken (operands.route_of): TMA or gather.
            constexprs["INPUT_ROUTE"] = ("tma_channels_last" if route == "tma_channels_last"
                                         else "gather")
            constexprs["TRANSPOSED"] = transposed

            def grid(meta):
                return (batch * groups * num_splits * cdiv(m_channels, meta["BLOCK_M"])
                        * cdiv(n_channels, meta["BLOCK_N"]),)

            rows_h, rows_w = rows_shape[2:]
            args = (groups, n_channels, m_channels, size_class(out_pixels),
                    *shifted_shape[2:], rows_h, rows_w, pad[0], pad[2], cdiv(rows_h, num_splits),
                    *rows_stride, *shifted_stride,
                    num_splits, *weight_parts_stride, *bias_parts_stride,
                    *(copy_stride or (0, 0, 0, 0)))
        else:
            # One program per tap, or with ``rows`` per kernel row (its three taps).
            taps = kernel_h if rows else kernel_h * kernel_w

            def grid(meta):
                return (batch * groups * taps * num_splits
                        * cdiv(out_group_channels, meta["BLOCK_M"])
                        * cdiv(in_group_channels, meta["BLOCK_N"]),)

            args = (groups, in_group_channels, out_group_channels, out_pixels,
                    size_class(out_pixels), in_h, in_w, out_h, out_w, kernel_h, kernel_w,
                    stride[0], stride[1], pad[0], pad[2], dilation[0], dilation[1],
                    *grad_output_stride, *input_stride,
                    num_splits, *weight_parts_stride, *bias_parts_stride,
                    *(copy_stride or (0, 0, 0, 0)))
            x_in_registers = precision == "tf32" and tf32_x_in_registers and not rows
            if not rows:
                constexprs["X_IN_REGISTERS"] = x_in_registers
            constexprs["LOOP_STAGES"] = (TF32_LOOP_STAGES if precision == "tf32"
                                         and not x_in_registers else None)
        constexprs["WRITE_COPY"] = copy_stride is not None
        self.partial, self.num_splits, self.all_taps = partial, num_splits, all_taps
        self.rows = rows
        self.grid, self.args, self.constexprs = grid, args, constexprs
        kernel = (conv_bwd_weight_3x3_kernel if all_taps
                  else conv_bwd_weight_row_kernel if rows else conv_bwd_weight_kernel)
        self.launch = LaunchSite(kernel, grid, constexprs)

    def __call__(self, grad_output, input, grad_weight, grad_bias, grad_output_copy=None,
                 sum_splits: bool = True):
        """(weight_parts (S, B, out, Cg, kh, kw), bias_parts (S, B, out) or None); see
        :func:`conv_bwd_weight`."""
        if self.partial is None:
            weight_parts = grad_weight.unsqueeze(0)
            bias_parts = grad_bias.unsqueeze(0) if grad_bias is not None else None
        else:
            weight_parts = grad_weight.new_empty((self.num_splits, *grad_weight.shape),
                                                 dtype=self.partial)
            bias_parts = (grad_bias.new_empty((self.num_splits, *grad_bias.shape),
                                              dtype=self.partial)
                          if grad_bias is not None else None)
        self.launch_parts(grad_output, input, weight_parts, bias_parts, grad_output_copy)
        if self.partial is not None and sum_splits:
            grad_weight.copy_(weight_parts.sum(dim=0))
            if grad_bias is not None:
                grad_bias.copy_(bias_parts.sum(dim=0))
        return weight_parts, bias_parts

    def launch_parts(self, grad_output, input, weight_parts, bias_parts,
                     grad_output_copy=None, signature=None) -> None:
        """Launch into outputs the caller made: with splits (``partial``), weight_parts
        (S, B, out, Cg, kh, kw) and bias_parts (S, B, out) contiguous in ``partial``'s dtype;
        without, grad_weight and grad_bias themselves, in the strides the plan was made for
        (the layer allocates them so, with no view per call)."""
        tensors = (grad_output, input, weight_parts,
                   bias_parts if bias_parts is not None else weight_parts,
                   grad_output_copy if grad_output_copy is not None else grad_output)
        if self.all_taps:
            if self.constexprs["INPUT_ROUTE"] != "gather":
                set_descriptor_allocator(input)
            if self.constexprs["TRANSPOSED"]:
                tensors = (input, grad_output, *tensors[2:])
        self.launch(tensors, self.args, signature)


@launch_plan
def conv_weight_gradient_plan(grad_output_shape, grad_output_stride, input_shape, input_stride,
                              dtype, aligned, grad_output_aligned, kernel_size, stride, pad,
                              dilation, groups, allow_tf32, grad_weight_stride,
                              grad_bias_stride, num_splits, all_taps, copy_stride,
                              tf32_x_in_registers, rows: bool = False) -> ConvWeightGradient:
    """The :class:`ConvWeightGradient` of a shape class, made once."""
    return ConvWeightGradient(grad_output_shape, grad_output_stride, input_shape, input_stride,
                              dtype, aligned, grad_output_aligned, kernel_size, stride, pad,
                              dilation, groups, allow_tf32, grad_weight_stride,
                              grad_bias_stride, num_splits, all_taps, copy_stride,
                              tf32_x_in_registers, rows)


def conv_weight_gradient_for(grad_output, input, kernel_size, stride, pad, dilation, groups,
                             allow_tf32, grad_weight, grad_bias,
                             grad_output_copy=None) -> ConvWeightGradient:
    """The :class:`ConvWeightGradient` of these tensors: the kernel (all taps for a 16-bit
    3x3 layer with an NCHW dy; per kernel row for a kernel three taps wide and a dy layout in
    ROW_LAYOUTS; else per tap), the pixel splits for this device."""
    batch, channels = input.shape[:2]
    out_channels, out_h, out_w = grad_output.shape[1:]
    kernel_size, stride, pad, dilation = (tuple(kernel_size), tuple(stride), tuple(pad),
                                          tuple(dilation))
    grad_output_layout = "channels_last" if _channels_last(grad_output) else "nchw"
    # 3x3 at stride 1 and dilation 1: one kernel for all taps (reads dy twice and x three
    # times, or x twice and dy three times: _transposes).
    all_taps = (kernel_size == (3, 3) and stride == (1, 1) and dilation == (1, 1)
                and input.dtype in ALL_TAPS_DTYPES and grad_output_layout in ALL_TAPS_LAYOUTS)
    rows = (not all_taps and kernel_size[1] == 3 and grad_output_layout in ROW_LAYOUTS)
    # Estimated with 64x64 tiles; the autotuned tile changes it by a small factor at most.
    taps = 1 if all_taps else kernel_size[0] if rows else kernel_size[0] * kernel_size[1]
    programs = (batch * groups * taps
                * cdiv(out_channels // groups, 64) * cdiv(channels // groups, 64))
    num_splits = weight_grad_splits(grad_output.device, programs, out_h * out_w)
    if all_taps:
        # Splits are bands of output rows.
        num_splits = min(num_splits, out_h)
    return conv_weight_gradient_plan(
        tuple(grad_output.shape), grad_output.stride(), tuple(input.shape), input.stride(),
        input.dtype, input.data_ptr() % TMA_ALIGN_BYTES == 0,
        grad_output.data_ptr() % TMA_ALIGN_BYTES == 0, kernel_size, stride, pad,
        dilation, groups, allow_tf32, grad_weight.stride(),
        None if grad_bias is None else grad_bias.stride(), num_splits, all_taps,
        None if grad_output_copy is None else grad_output_copy.stride(),
        # Only an NCHW dy is K-major for wgmma's B (TF32_X_IN_REGISTERS).
        TF32_X_IN_REGISTERS and grad_output_layout == "nchw", rows)


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
    grad_output_copy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Write d loss / d weight (B, out, Cg, kh, kw) and, if given, d loss / d bias (B, out).

    Args:
        grad_output: (B, out, Ho, Wo). input: (B, C, H, W), the forward input.
        sum_splits: add the pixel splits' partial sums into grad_weight and grad_bias; with
            False they are returned as they are, for a consumer that adds them as it reads
            (the mixing backward), and grad_weight and grad_bias are written only when there
            is a single split.
        grad_output_copy: (B, out, Ho, Wo) in other strides, or None: every value of
            grad_output is also written there as it is read.

    Returns:
        The gradients as S partial sums, (S, B, out, Cg, kh, kw) and (S, B, out) or None
        (S = 1: views of grad_weight and grad_bias).
    """
    check_launchable(grad_output, input)
    plan = conv_weight_gradient_for(grad_output, input, kernel_size, stride, pad, dilation,
                                    groups, allow_tf32, grad_weight, grad_bias,
                                    grad_output_copy)
    return plan(grad_output, input, grad_weight, grad_bias, grad_output_copy, sum_splits)
