"""Mixing of the k kernel banks into per-sample kernels, forward and backward.

A *bank* is any tensor viewed as (k, d, F): the conv weight (k*out, Cg, kh, kw) is the bank
(k, d, F = out/d * Cg * kh * kw) and the bias (k*out,) is the bank (k, d, F = out/d). Each
kernel takes a first bank and an optional second one (the weight and the bias), whose tiles
follow the first bank's in the same grid: one launch mixes, or differentiates, both. The
routing weights s have shape (B, k, d). Forward:

    mixed[b, c, f] = sum_j s[b, j, c] * bank[j, c, f]                   (B, d, F)

Backward, for the gradient g = d loss / d mixed (B, d, F):

    d bank[j, c, f] = sum_b s[b, j, c] * g[b, c, f]                      (k, d, F)
    d s[b, j, c]    = sum_f bank[j, c, f] * g[b, c, f]                   (B, k, d)

summed over both banks for d s. One backward kernel computes both, reading the gradient once.
The gradient may come as S partial sums (S, B, d, F) (the kernel gradient's pixel splits,
``conv_bwd_weight.conv_bwd_weight``): the kernel adds the S parts as it reads them, so no summed
copy is made.

In the layer the forward kernel also finishes the router (:func:`route_and_mix`): each program
computes the routing of its samples and cardinal from the pooling's partial sums
(``router.route_samples``) instead of reading s, and writes the kernels straight into the
convolution's packed layouts (``operands``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_nsr.kernels.allocation import Empty
from triton_nsr.kernels.autotune import accumulator_dtype, check_launchable, launch_plan, tuned
from triton_nsr.kernels.known_launches import LaunchSite
from triton_nsr.kernels.operands import (
    forward_weight_view,
    input_grad_weight_shape,
    packed_channels,
    packed_input_grad_weight,
    packed_storage,
)
from triton_nsr.kernels.router import ROUTE_BLOCK_C, route_samples, temperature_pair
from triton_nsr.kernels.tiling import cdiv, contiguous_strides, power_of_2_at_least

_MIX_CONFIGS = [
    triton.Config({"BLOCK_B": 16, "BLOCK_F": 128}, num_warps=4),
    triton.Config({"BLOCK_B": 16, "BLOCK_F": 256}, num_warps=4),
    triton.Config({"BLOCK_B": 32, "BLOCK_F": 128}, num_warps=4),
    triton.Config({"BLOCK_B": 32, "BLOCK_F": 256}, num_warps=8),
    triton.Config({"BLOCK_B": 64, "BLOCK_F": 128}, num_warps=8),
    triton.Config({"BLOCK_B": 8, "BLOCK_F": 512}, num_warps=4),
]
# BLOCK_F of the backward is the launcher's (MIX_BWD_BLOCK_F): it decides how many parts the
# routing gradient comes in, which must be known to allocate them.
_MIX_BWD_CONFIGS = [
    triton.Config({}, num_warps=4),
    triton.Config({}, num_warps=8),
    triton.Config({}, num_warps=2),
]
MIX_BWD_BLOCK_F = 256


@triton.jit
def _mix_tile(
    routing_pointer, bank_pointer, output_pointer, tile,
    batch, num_groups, num_cardinals, features,
    routing_batch_stride, routing_group_stride, routing_cardinal_stride,
    bank_group_stride, bank_cardinal_stride, bank_row_stride, bank_channel_stride,
    bank_tap_stride,
    output_batch_stride, output_cardinal_stride,
    channels, taps, output_row_stride, output_channel_stride, output_tap_stride,
    copy_pointer, copy_batch_stride, copy_group_rows, copy_group_stride, copy_row_stride,
    copy_channel_stride, copy_tap_stride, routed,
    HAS_COPY: tl.constexpr, ROUTE: tl.constexpr, CHANNELS_INNER: tl.constexpr,
    ACC_DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr,
    BLOCK_GROUPS: tl.constexpr,
):
    """One (BLOCK_B, BLOCK_F) tile of one cardinal of mixed = sum_j routing[:, j] * bank[j].

    The routing comes from routing_pointer, or with ROUTE from ``routed`` (BLOCK_B,
    BLOCK_GROUPS), this tile's samples' routing column as router.route_samples computed it.

    Feature f is read from the bank and stored at (f // (channels*taps)) * row +
    (f // taps % channels) * channel + (f % taps) * tap strides, each tensor with its own: a
    conv weight's (o, c, tap) order in any layout (a channels_last weight read as it is, the
    forward convolution's packed layout written), or a flat row with channels = taps = 1.
    With HAS_COPY the tile is also stored in a second conv-weight layout whose output
    channels come in convolution groups: row o of the weight (o = cardinal * d-th share + f's
    row) at (o // copy_group_rows) * group + (o % copy_group_rows) * row + channel + tap
    strides (the TF32 input gradient's packed layout).

    A tile's BLOCK_F features are consecutive in the bank's (o, c, tap) order, or with
    CHANNELS_INNER in (o, tap, c) order: where the output's channel stride is 1 and its tap
    stride is not (the forward's packed layout), consecutive threads then store to consecutive
    addresses. The stored mix is the big tensor (B times the bank); the bank tile, read with
    stride `taps` instead, is shared by every sample and stays in L2.
    """
    num_f_blocks = tl.cdiv(features, BLOCK_F)
    f_block = tile % num_f_blocks
    cardinal = (tile // num_f_blocks) % num_cardinals
    b_block = tile // (num_f_blocks * num_cardinals)

    offs_b = b_block * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_t = f_block * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_b = offs_b < batch
    mask_f = offs_t < features
    row = offs_t // (channels * taps)
    if CHANNELS_INNER:
        tap = offs_t // channels % taps
        channel = offs_t % channels
    else:
        channel = offs_t // taps % channels
        tap = offs_t % taps

    routing_rows = (routing_pointer + offs_b * routing_batch_stride
                    + cardinal * routing_cardinal_stride)
    bank_row = (bank_pointer + cardinal * bank_cardinal_stride + row * bank_row_stride
                + channel * bank_channel_stride + tap * bank_tap_stride)
    acc = tl.zeros((BLOCK_B, BLOCK_F), dtype=ACC_DTYPE)
    for group in range(num_groups):
        if ROUTE:
            weights = tl.sum(tl.where(tl.arange(0, BLOCK_GROUPS)[None, :] == group, routed,
                                      0.0), axis=1)
        else:
            weights = tl.load(routing_rows + group * routing_group_stride, mask=mask_b,
                              other=0.0)
        values = tl.load(bank_row + group * bank_group_stride, mask=mask_f, other=0.0)
        acc += weights.to(ACC_DTYPE)[:, None] * values.to(ACC_DTYPE)[None, :]

    feature_offset = (row * output_row_stride + channel * output_channel_stride
                      + tap * output_tap_stride)
    output = (
        output_pointer
        + offs_b[:, None] * output_batch_stride
        + cardinal * output_cardinal_stride
        + feature_offset[None, :]
    )
    tl.store(output, acc.to(output_pointer.dtype.element_ty),
             mask=mask_b[:, None] & mask_f[None, :])
    if HAS_COPY:
        rows_per_cardinal = features // (channels * taps)
        weight_row = cardinal * rows_per_cardinal + row
        copy_offset = ((weight_row // copy_group_rows) * copy_group_stride
                       + (weight_row % copy_group_rows) * copy_row_stride
                       + channel * copy_channel_stride + tap * copy_tap_stride)
        tl.store(copy_pointer + offs_b[:, None] * copy_batch_stride + copy_offset[None, :],
                 acc.to(copy_pointer.dtype.element_ty), mask=mask_b[:, None] & mask_f[None, :])


@tuned(_MIX_CONFIGS, key=["num_groups", "features", "second_features"])
@triton.jit
def mix_fwd_kernel(
    routing_pointer, bank_pointer, second_bank_pointer, output_pointer, second_output_pointer,
    copy_pointer, partials_pointer, mlp_weight_pointer, mlp_bias_pointer, pooled_pointer,
    batch, num_groups, num_cardinals, features, second_features,
    routing_batch_stride, routing_group_stride, routing_cardinal_stride,
    bank_group_stride, bank_cardinal_stride, bank_row_stride, bank_channel_stride,
    bank_tap_stride,
    second_bank_group_stride, second_bank_cardinal_stride, second_bank_feature_stride,
    output_batch_stride, output_cardinal_stride,
    channels, taps, output_row_stride, output_channel_stride, output_tap_stride,
    second_output_batch_stride, second_output_cardinal_stride, second_output_feature_stride,
    copy_batch_stride, copy_group_rows, copy_group_stride, copy_row_stride,
    copy_channel_stride, copy_tap_stride,
    channels_in, pixels, num_chunks,
    partials_batch_stride, partials_chunk_stride, partials_channel_stride,
    mlp_weight_row_stride, mlp_weight_col_stride, mlp_bias_stride,
    pooled_batch_stride, pooled_channel_stride, temperature_hi, temperature_lo,
    HAS_SECOND: tl.constexpr, HAS_COPY: tl.constexpr, ROUTE: tl.constexpr,
    CHANNELS_INNER: tl.constexpr, HAS_MLP_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_GROUPS: tl.constexpr, ROUTE_BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    """mixed[b, c, f] = sum_j routing[b, j, c] * bank[j, c, f], for one or two banks.

    Pointers: routing (B, k, d); bank (k, d, F) and output (B, d, F), their feature dimension
    laid out as _mix_tile says; when HAS_SECOND,
    second_bank (k, d, F2) and second_output (B, d, F2); any strides. When HAS_COPY the first
    bank's mix is also written to copy_pointer, a second layout (see _mix_tile).
    With ROUTE the routing is computed here rather than read: every program runs
    router.route_samples for its samples and cardinal from the pooling's partials
    (B, chunks, C_in) and the MLP (mlp_weight (k*d, C_in), mlp_bias (k*d,) when HAS_MLP_BIAS),
    and the first F tile of each (sample block, cardinal) of the first bank writes the routing
    to routing_pointer (B, k, d) and, for cardinal 0, the means to pooled (B, C_in).
    Grid: (T1 + T2,) with T = cdiv(F, BLOCK_F) * d * cdiv(B, BLOCK_B) per bank (T2 = 0 without
    a second bank). Each program owns a (BLOCK_B, BLOCK_F) tile of one cardinal and reads each
    bank row of it once for all BLOCK_B samples.
    """
    pid = tl.program_id(0).to(tl.int64)
    first_tiles = (tl.cdiv(features, BLOCK_F) * num_cardinals * tl.cdiv(batch, BLOCK_B))
    if ROUTE:
        # This program's samples and cardinal, as _mix_tile numbers them for either bank.
        in_first = pid < first_tiles
        tile = tl.where(in_first, pid, pid - first_tiles)
        num_f_blocks = tl.cdiv(tl.where(in_first, features, second_features), BLOCK_F)
        cardinal = (tile // num_f_blocks) % num_cardinals
        offs_b = (tile // (num_f_blocks * num_cardinals)) * BLOCK_B + tl.arange(0, BLOCK_B)
        writer = in_first & (tile % num_f_blocks == 0)
        routed = route_samples(
            partials_pointer, mlp_weight_pointer, mlp_bias_pointer, pooled_pointer,
            routing_pointer, offs_b, offs_b < batch, cardinal, writer, writer & (cardinal == 0),
            channels_in, pixels, num_chunks, num_groups, num_cardinals, temperature_hi,
            temperature_lo, partials_batch_stride, partials_chunk_stride,
            partials_channel_stride, mlp_weight_row_stride, mlp_weight_col_stride,
            mlp_bias_stride, pooled_batch_stride, pooled_channel_stride,
            routing_batch_stride, routing_group_stride, routing_cardinal_stride,
            HAS_MLP_BIAS, ACC_DTYPE, BLOCK_B, BLOCK_GROUPS, ROUTE_BLOCK_C)
    else:
        routed = tl.zeros((BLOCK_B, BLOCK_GROUPS), dtype=ACC_DTYPE)
    if pid < first_tiles:
        _mix_tile(routing_pointer, bank_pointer, output_pointer, pid,
                  batch, num_groups, num_cardinals, features,
                  routing_batch_stride, routing_group_stride, routing_cardinal_stride,
                  bank_group_stride, bank_cardinal_stride, bank_row_stride,
                  bank_channel_stride, bank_tap_stride,
                  output_batch_stride, output_cardinal_stride,
                  channels, taps, output_row_stride, output_channel_stride, output_tap_stride,
                  copy_pointer, copy_batch_stride, copy_group_rows, copy_group_stride,
                  copy_row_stride, copy_channel_stride, copy_tap_stride, routed,
                  HAS_COPY, ROUTE, CHANNELS_INNER, ACC_DTYPE, BLOCK_B, BLOCK_F, BLOCK_GROUPS)
    elif HAS_SECOND:
        _mix_tile(routing_pointer, second_bank_pointer, second_output_pointer, pid - first_tiles,
                  batch, num_groups, num_cardinals, second_features,
                  routing_batch_stride, routing_group_stride, routing_cardinal_stride,
                  second_bank_group_stride, second_bank_cardinal_stride,
                  second_bank_feature_stride, 0, 0,
                  second_output_batch_stride, second_output_cardinal_stride,
                  1, 1, second_output_feature_stride, 0, 0,
                  copy_pointer, 0, 1, 0, 0, 0, 0, routed,
                  False, ROUTE, False, ACC_DTYPE, BLOCK_B, BLOCK_F, BLOCK_GROUPS)


@triton.jit
def _grad_tile(
    routing_pointer, grad_pointer, bank_pointer, grad_bank_pointer, routing_parts_pointer,
    tile, part_offset, batch, num_splits, num_groups, features, channels, taps,
    routing_batch_stride, routing_group_stride, routing_cardinal_stride,
    grad_split_stride, grad_batch_stride, grad_cardinal_stride, grad_feature_stride,
    bank_group_stride, bank_cardinal_stride, bank_row_stride, bank_channel_stride,
    bank_tap_stride,
    grad_bank_group_stride, grad_bank_cardinal_stride, grad_bank_row_stride,
    grad_bank_channel_stride, grad_bank_tap_stride,
    parts_part_stride, parts_batch_stride, parts_group_stride, parts_cardinal_stride,
    NEED_BANK: tl.constexpr, NEED_ROUTING: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_GROUPS: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """One F tile of one cardinal: its bank gradient (all k rows) and, per sample, its share
    of the routing gradient (written as part ``part_offset + f_block``).

    The gradient's features are flat; the bank's and its gradient's are a conv weight's
    (o, c, tap) order with (channels, taps), each in its own strides (as _mix_tile reads a
    bank), or flat rows with channels = taps = 1."""
    num_f_blocks = tl.cdiv(features, BLOCK_F)
    f_block = tile % num_f_blocks
    cardinal = tile // num_f_blocks

    offs_j = tl.arange(0, BLOCK_GROUPS)
    offs_f = f_block * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_j = offs_j < num_groups
    mask_f = offs_f < features
    mask_jf = mask_j[:, None] & mask_f[None, :]

    row = offs_f // (channels * taps)
    channel = offs_f // taps % channels
    tap = offs_f % taps

    routing_col = (routing_pointer + offs_j * routing_group_stride
                   + cardinal * routing_cardinal_stride)
    grad_row = grad_pointer + cardinal * grad_cardinal_stride + offs_f * grad_feature_stride
    bank_offset = row * bank_row_stride + channel * bank_channel_stride + tap * bank_tap_stride
    bank = tl.load(bank_pointer + offs_j[:, None] * bank_group_stride
                   + cardinal * bank_cardinal_stride + bank_offset[None, :],
                   mask=mask_jf, other=0.0).to(ACC_DTYPE)
    parts = (routing_parts_pointer + (part_offset + f_block) * parts_part_stride
             + offs_j * parts_group_stride + cardinal * parts_cardinal_stride)
    acc = tl.zeros((BLOCK_GROUPS, BLOCK_F), dtype=ACC_DTYPE)
    for sample in range(batch):
        # int64 before it multiplies a stride: B * d * F passes 2**31 for large layers.
        sample = tl.cast(sample, tl.int64)
        grads = tl.zeros((BLOCK_F,), dtype=ACC_DTYPE)
        for split in range(num_splits):
            grads += tl.load(grad_row + sample * grad_batch_stride
                             + tl.cast(split, tl.int64) * grad_split_stride,
                             mask=mask_f, other=0.0).to(ACC_DTYPE)
        if NEED_BANK:
            weights = tl.load(routing_col + sample * routing_batch_stride, mask=mask_j,
                              other=0.0)
            acc += weights.to(ACC_DTYPE)[:, None] * grads[None, :]
        if NEED_ROUTING:
            share = tl.sum(bank * grads[None, :], axis=1)
            tl.store(parts + sample * parts_batch_stride,
                     share.to(routing_parts_pointer.dtype.element_ty), mask=mask_j)

    if NEED_BANK:
        grad_bank_offset = (row * grad_bank_row_stride + channel * grad_bank_channel_stride
                            + tap * grad_bank_tap_stride)
        grad_bank = (grad_bank_pointer + offs_j[:, None] * grad_bank_group_stride
                     + cardinal * grad_bank_cardinal_stride + grad_bank_offset[None, :])
        tl.store(grad_bank, acc.to(grad_bank_pointer.dtype.element_ty), mask=mask_jf)


@tuned(_MIX_BWD_CONFIGS, key=["num_groups", "features", "second_features", "num_splits"])
@triton.jit
def mix_bwd_kernel(
    routing_pointer, grad_pointer, second_grad_pointer, bank_pointer, second_bank_pointer,
    grad_bank_pointer, second_grad_bank_pointer, routing_parts_pointer,
    batch, num_splits, num_groups, num_cardinals, features, second_features, channels, taps,
    routing_batch_stride, routing_group_stride, routing_cardinal_stride,
    grad_split_stride, grad_batch_stride, grad_cardinal_stride, grad_feature_stride,
    second_grad_split_stride, second_grad_batch_stride, second_grad_cardinal_stride,
    second_grad_feature_stride,
    bank_group_stride, bank_cardinal_stride, bank_row_stride, bank_channel_stride,
    bank_tap_stride,
    second_bank_group_stride, second_bank_cardinal_stride, second_bank_feature_stride,
    grad_bank_group_stride, grad_bank_cardinal_stride, grad_bank_row_stride,
    grad_bank_channel_stride, grad_bank_tap_stride,
    second_grad_bank_group_stride, second_grad_bank_cardinal_stride,
    second_grad_bank_feature_stride,
    parts_part_stride, parts_batch_stride, parts_group_stride, parts_cardinal_stride,
    HAS_SECOND: tl.constexpr, NEED_BANK: tl.constexpr, NEED_ROUTING: tl.constexpr,
    ACC_DTYPE: tl.constexpr, BLOCK_GROUPS: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Both gradients of the mixing, reading the kernel gradient once:

        grad_bank[j, c, f]          = sum_b routing[b, j, c] * g[b, c, f]
        routing_parts[t, b, j, c]   = sum_{f in tile t} bank[j, c, f] * g[b, c, f]

    with g = sum_s grad[s] (the pixel splits' partial sums, added as they are read), for one
    bank or two (the second's tiles follow the first's). The T = cdiv(F, BLOCK_F) +
    cdiv(F2, BLOCK_F) parts of the routing gradient are added by the router's backward, which
    reads them anyway: no atomics, no extra pass, deterministic.

    Pointers: routing (B, k, d); grad (S, B, d, F), bank and grad_bank (k, d, F), their
    features laid out as _grad_tile says; when HAS_SECOND, second_grad (S, B, d, F2),
    second_bank and second_grad_bank (k, d, F2); routing_parts (T, B, k, d); any strides.
    BLOCK_F is set by the launcher (it fixes T). Grid: (T * d,). Each program owns all k
    groups of one F tile of one cardinal (BLOCK_GROUPS >= k) and walks the samples in order.
    """
    pid = tl.program_id(0).to(tl.int64)
    first_parts = tl.cdiv(features, BLOCK_F)
    first_tiles = first_parts * num_cardinals
    if pid < first_tiles:
        _grad_tile(routing_pointer, grad_pointer, bank_pointer, grad_bank_pointer,
                   routing_parts_pointer, pid, 0, batch, num_splits, num_groups, features,
                   channels, taps,
                   routing_batch_stride, routing_group_stride, routing_cardinal_stride,
                   grad_split_stride, grad_batch_stride, grad_cardinal_stride,
                   grad_feature_stride,
                   bank_group_stride, bank_cardinal_stride, bank_row_stride,
                   bank_channel_stride, bank_tap_stride,
                   grad_bank_group_stride, grad_bank_cardinal_stride, grad_bank_row_stride,
                   grad_bank_channel_stride, grad_bank_tap_stride,
                   parts_part_stride, parts_batch_stride, parts_group_stride,
                   parts_cardinal_stride,
                   NEED_BANK, NEED_ROUTING, ACC_DTYPE, BLOCK_GROUPS, BLOCK_F)
    elif HAS_SECOND:
        _grad_tile(routing_pointer, second_grad_pointer, second_bank_pointer,
                   second_grad_bank_pointer, routing_parts_pointer, pid - first_tiles,
                   first_parts, batch, num_splits, num_groups, second_features, 1, 1,
                   routing_batch_stride, routing_group_stride, routing_cardinal_stride,
                   second_grad_split_stride, second_grad_batch_stride,
                   second_grad_cardinal_stride, second_grad_feature_stride,
                   second_bank_group_stride, second_bank_cardinal_stride,
                   second_bank_feature_stride, 0, 0,
                   second_grad_bank_group_stride, second_grad_bank_cardinal_stride,
                   second_grad_bank_feature_stride, 0, 0,
                   parts_part_stride, parts_batch_stride, parts_group_stride,
                   parts_cardinal_stride,
                   NEED_BANK, NEED_ROUTING, ACC_DTYPE, BLOCK_GROUPS, BLOCK_F)


def weight_bank_strides(weight_shape, weight_stride, num_groups: int, num_cardinals: int):
    """The (group, cardinal, row, channel, tap) strides that read a conv weight
    (k*out, Cg, kh, kw) as its (k, d, F) bank in place, F in (o, c, tap) order; None where no
    tap stride walks its taps (kh, kw > 1 and stride_h != kw * stride_w). Contiguous and
    channels_last weights both qualify, so a model converted to channels_last has its banks
    read where they are, not copied on every call."""
    rows, _, kernel_h, kernel_w = weight_shape
    row, channel, tap_h, tap_w = weight_stride
    if kernel_h == 1:
        tap = tap_w
    elif kernel_w == 1 or tap_h == kernel_w * tap_w:
        tap = tap_h if kernel_w == 1 else tap_w
    else:
        return None
    out = rows // num_groups
    return (out * row, out // num_cardinals * row, row, channel, tap)


def bank_layout(bank_shape: tuple, bank_stride: tuple, num_groups: int, num_cardinals: int,
                channels: int, taps: int) -> tuple[tuple, tuple]:
    """((k, d, F), its (group, cardinal, row, channel, tap) strides) of a bank: a (k, d, F)
    tensor, F read as (F / (channels*taps), channels, taps), or a conv weight
    (k*out, channels, kh, kw) read in place (:func:`weight_bank_strides`)."""
    if len(bank_shape) == 3:
        group, cardinal, feature = bank_stride
        return tuple(bank_shape), (group, cardinal, channels * taps * feature, taps * feature,
                                   feature)
    strides = weight_bank_strides(bank_shape, bank_stride, num_groups, num_cardinals)
    if strides is None:
        raise ValueError(f"a weight of strides {bank_stride} cannot be read as its bank in "
                         "place: pass its (k, d, F) reshape")
    rows, _, kernel_h, kernel_w = bank_shape
    features = rows // (num_groups * num_cardinals) * channels * kernel_h * kernel_w
    return (num_groups, num_cardinals, features), strides


def _accumulator(*dtypes: torch.dtype):
    """float64 accumulation if any operand is float64, else float32."""
    return accumulator_dtype(torch.float64 if torch.float64 in dtypes else torch.float32)


class MixForward:
    """mix_fwd_kernel's launch for one shape class, decided once: call it with the tensors
    (:meth:`__call__`); the temperature comes per call.

    ``route``: None (the routing is read), else (partials shape, partials strides, mlp_weight
    strides, mlp_bias stride or None, pixels) for :func:`route_and_mix`.
    """

    __slots__ = ("output_shape", "second_output_shape", "dtype", "packed", "copy_groups",
                 "has_second", "grid", "args", "constexprs", "launch", "new_output",
                 "new_second", "new_copy", "kept_scalars")

    def __init__(self, routing_shape, routing_stride, bank_shape, bank_layout, bank_dtype,
                 second_shape, second_stride, dtype, kernel_shape, copy_groups, route) -> None:
        batch, num_groups, num_cardinals = routing_shape
        features = bank_shape[2]
        second_features = second_shape[2] if second_shape is not None else 0
        output_shape = (batch, num_cardinals, features)
        second_output_shape = (batch, num_cardinals, second_features)

        def grid(meta):
            tiles = num_cardinals * cdiv(batch, meta["BLOCK_B"])
            return ((cdiv(features, meta["BLOCK_F"]) + cdiv(second_features, meta["BLOCK_F"]))
                    * tiles,)

        copy_layout = (0, 1, 0, 0, 0, 0)
        if kernel_shape is None:
            batch_stride, cardinal_stride, feature_stride = contiguous_strides(output_shape)
            layout = (batch_stride, cardinal_stride, 1, 1, feature_stride, 0, 0)
        else:
            # The forward convolution's packed (B, out, kh, kw, Cp) layout.
            out, in_channels, kernel_h, kernel_w = kernel_shape
            padded = packed_channels(in_channels)
            row_stride = kernel_h * kernel_w * padded
            layout = (out * row_stride, out // num_cardinals * row_stride,
                      in_channels, kernel_h * kernel_w, row_stride, 1, padded)
            output_shape = (batch, *kernel_shape)
            if copy_groups is not None:
                # The TF32 input gradient's (B, groups, kh, kw, Cg, Op) layout, via its strides.
                b, g, h, w, c, o = contiguous_strides(
                    input_grad_weight_shape(output_shape, copy_groups))
                copy_layout = (b, out // copy_groups, g, o, c, w)
        route_args = (0,) * 11
        if route is not None:
            partials_shape, partials_stride, mlp_weight_stride, mlp_bias_stride, pixels = route
            route_args = (partials_shape[2], pixels, partials_shape[1], *partials_stride,
                          *mlp_weight_stride, mlp_bias_stride or 0,
                          *contiguous_strides((batch, partials_shape[2])))
        args = (batch, num_groups, num_cardinals, features, second_features,
                *routing_stride, *bank_layout, *(second_stride or (0, 0, 0)), *layout,
                *(contiguous_strides(second_output_shape) if second_shape else (0, 0, 0)),
                *copy_layout, *route_args)
        constexprs = {"HAS_SECOND": second_shape is not None, "HAS_COPY": copy_groups is not None,
                      "ROUTE": route is not None,
                      # The packed layout's channel stride is 1 and its tap stride Cp: store the
                      # tile channel by channel (see _mix_tile).
                      "CHANNELS_INNER": kernel_shape is not None and layout[3] > 1,
                      "HAS_MLP_BIAS": route is not None and route[3] is not None,
                      "ACC_DTYPE": _accumulator(bank_dtype, dtype),
                      "BLOCK_GROUPS": power_of_2_at_least(num_groups) if route else 1,
                      "ROUTE_BLOCK_C": ROUTE_BLOCK_C}
        self.output_shape, self.second_output_shape = output_shape, second_output_shape
        self.dtype, self.packed, self.copy_groups = dtype, kernel_shape is not None, copy_groups
        self.has_second = second_shape is not None
        self.grid, self.args, self.constexprs = grid, args, constexprs
        self.launch = LaunchSite(mix_fwd_kernel, grid, constexprs)
        # The outputs' allocations; packed layouts' padding channels zeroed (operands).
        self.new_output = (Empty(output_shape) if kernel_shape is None
                           else packed_storage(output_shape))
        self.new_second = Empty(second_output_shape) if self.has_second else None
        self.new_copy = (None if copy_groups is None
                         else packed_input_grad_weight(output_shape, copy_groups))
        self.kept_scalars = (None, None)  # (temperature pair, the launch's scalars)

    def __call__(self, routing, bank, second_bank=None, route_tensors=None,
                 temperature=(1.0, 0.0), storage: bool = False, signature=None):
        """Allocate the outputs and launch. ``route_tensors``: (partials, mlp_weight, mlp_bias
        or None, pooled) when the kernel computes the routing into ``routing``; temperature:
        the (hi, lo) pair (router.temperature_pair). Returns (mixed, second mixed or None,
        input-gradient copy or None); packed mixed kernels come as their (B, out, Cg, kh, kw)
        view, or with ``storage`` as the (B, out, kh, kw, Cp) storage itself.

        Only the addresses of bank and second_bank are read (their strides are this plan's):
        a (k*out, Cg, kh, kw) weight is read in place (:func:`bank_layout`). ``signature``: as
        known_launches.LaunchSite takes it.
        """
        device, dtype = bank.device, self.dtype
        output = self.new_output(device, dtype)
        if self.packed and not storage:
            output = forward_weight_view(output, self.output_shape[2])
        second_output = self.new_second(device, dtype) if self.has_second else None
        copy = self.new_copy(device, dtype) if self.copy_groups is not None else None
        if self.output_shape[0] == 0:
            return output, second_output, copy
        if route_tensors is None:
            route_tensors = (routing, routing, routing, routing)
        else:
            partials, mlp_weight, mlp_bias, pooled = route_tensors
            route_tensors = (partials, mlp_weight,
                             mlp_bias if mlp_bias is not None else mlp_weight, pooled)
        kept = self.kept_scalars  # one object: threads sharing the plan read a whole pair
        if kept[0] is not temperature:  # the same scalars object while the temperature stays
            kept = self.kept_scalars = (temperature, (*self.args, *temperature))
        self.launch((routing, bank, second_bank if self.has_second else bank,
                     output, second_output if self.has_second else output,
                     copy if copy is not None else output, *route_tensors),
                    kept[1], signature)
        return output, second_output, copy


@launch_plan
def mix_forward_plan(routing_shape, routing_stride, bank_shape, bank_layout, bank_dtype,
                     second_shape, second_stride, dtype, kernel_shape, copy_groups,
                     route) -> MixForward:
    """The :class:`MixForward` of a shape class, made once; ``bank_layout``: the bank's five
    strides (:func:`bank_layout`)."""
    return MixForward(routing_shape, routing_stride, bank_shape, bank_layout, bank_dtype,
                      second_shape, second_stride, dtype, kernel_shape, copy_groups, route)


def mix_fwd(
    routing: torch.Tensor,
    bank: torch.Tensor,
    second_bank: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    kernel_shape: tuple[int, int, int, int] | None = None,
    input_grad_groups: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Mix one or two banks per sample, in one launch.

    Args:
        routing: (B, k, d), any floating dtype (read as is: no cast).
        bank: (k, d, F); second_bank: (k, d, F2) or None (the bias).
        dtype: of the outputs (default: bank's), e.g. bfloat16 mixed kernels from float32
            banks under autocast.
        kernel_shape: (out, Cg, kh, kw) when bank is a conv weight: the mixed kernels are then
            written straight into the forward convolution's packed layout
            (operands.empty_packed_forward_weight), so conv_fwd reads them without a copy.
        input_grad_groups: with kernel_shape, the convolution's groups to also write the
            kernels in the TF32 input gradient's packed layout
            (operands.empty_packed_input_grad_weight), so its backward makes no copy.

    Returns:
        (B, d, F), contiguous, or (B, out, Cg, kh, kw) packed with kernel_shape;
        (B, d, F2) or None, contiguous; and the (B, groups, kh, kw, Cg, Op) input-gradient
        layout with input_grad_groups, else None.
    """
    check_launchable(routing, bank, second_bank)
    return mix_forward_for(routing, bank, second_bank, dtype or bank.dtype, kernel_shape,
                           input_grad_groups)(routing, bank, second_bank)


def mix_forward_for(routing, bank, second_bank, dtype, kernel_shape=None,
                    input_grad_groups=None, partials=None, pixels=None, mlp_weight=None,
                    mlp_bias=None) -> MixForward:
    """The :class:`MixForward` of these tensors (with ``partials`` and its ``pixels``, the
    router's: :func:`route_and_mix`). ``bank``: (k, d, F), or with ``kernel_shape`` the conv
    weight (k*out, Cg, kh, kw) itself, read in place (:func:`bank_layout`)."""
    _, num_groups, num_cardinals = routing.shape
    channels, taps = ((1, 1) if kernel_shape is None
                      else (kernel_shape[1], kernel_shape[2] * kernel_shape[3]))
    shape, layout = bank_layout(tuple(bank.shape), bank.stride(), num_groups, num_cardinals,
                                channels, taps)
    route = None
    if partials is not None:
        route = (tuple(partials.shape), partials.stride(), mlp_weight.stride(),
                 None if mlp_bias is None else mlp_bias.stride(0), pixels)
    has_second = second_bank is not None
    return mix_forward_plan(
        tuple(routing.shape), routing.stride(), shape, layout, bank.dtype,
        tuple(second_bank.shape) if has_second else None,
        second_bank.stride() if has_second else None,
        dtype, kernel_shape, input_grad_groups if kernel_shape is not None else None, route)


def route_and_mix(
    partials: torch.Tensor,
    pixels: int,
    mlp_weight: torch.Tensor,
    mlp_bias: torch.Tensor | None,
    num_cardinals: int,
    temperature: float,
    bank: torch.Tensor,
    second_bank: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    kernel_shape: tuple[int, int, int, int] | None = None,
    input_grad_groups: int | None = None,
):
    """The router's MLP and softmax and the mixing, in one launch: :func:`mix_fwd` with the
    routing computed from the pooling's partial sums (router.router_pool) instead of read.

    Args:
        partials: (B, chunks, C), the per-chunk channel sums of the input; pixels: its H*W.
        mlp_weight: (k*d, C); mlp_bias: (k*d,) or None; temperature > 0.
        bank, second_bank, dtype, kernel_shape, input_grad_groups: as :func:`mix_fwd`.

    Returns:
        mix_fwd's three outputs, then routing (B, k, d) and pooled (B, C), float32 (float64
        for float64 partials), which the backward reads.
    """
    check_launchable(partials, mlp_weight, mlp_bias, bank, second_bank)
    routing, pooled = empty_routing(partials, bank.shape[0], num_cardinals)
    plan = mix_forward_for(routing, bank, second_bank, dtype or bank.dtype, kernel_shape,
                           input_grad_groups, partials, pixels, mlp_weight, mlp_bias)
    outputs = plan(routing, bank, second_bank, (partials, mlp_weight, mlp_bias, pooled),
                   temperature_pair(temperature))
    return (*outputs, routing, pooled)


def empty_routing(partials: torch.Tensor, num_groups: int, num_cardinals: int):
    """New routing (B, k, d) and pooled (B, C) tensors for :func:`route_and_mix` to fill, in
    the partial sums' dtype."""
    batch, _, channels = partials.shape
    return (torch.empty((batch, num_groups, num_cardinals), dtype=partials.dtype,
                        device=partials.device),
            torch.empty((batch, channels), dtype=partials.dtype, device=partials.device))


class MixBackward:
    """mix_bwd_kernel's launch for one shape class, decided once: call it with the tensors."""

    __slots__ = ("parts_shape", "grad_bank_shape", "grad_bank_stride", "grid", "args",
                 "constexprs", "has_second", "need_banks", "need_routing",
                 "launch", "new_parts")

    def __init__(self, grad_shape, grad_stride, grad_dtype, second_grad_stride, routing_shape,
                 routing_stride, routing_dtype, bank_shape, bank_stride, bank_dtype,
                 second_shape, second_stride, need_banks: bool, need_routing: bool) -> None:
        num_splits, batch = grad_shape[:2]
        _, num_groups, num_cardinals = routing_shape
        second_features = second_shape[2] if second_shape is not None else 0
        # A (k, d, F) bank is read with flat features and its gradient made contiguous; a conv
        # weight is read in place and its gradient made in the weight's strides, so that
        # autograd hands it to .grad as it is (a channels_last model's included).
        if len(bank_shape) == 3:
            channels, taps = 1, 1
            self.grad_bank_stride = contiguous_strides(bank_shape)
        else:
            channels, taps = bank_shape[1], bank_shape[2] * bank_shape[3]
            self.grad_bank_stride = bank_stride
        self.grad_bank_shape = bank_shape
        (_, _, features), layout = bank_layout(bank_shape, bank_stride, num_groups,
                                               num_cardinals, channels, taps)
        _, grad_layout = bank_layout(bank_shape, self.grad_bank_stride, num_groups,
                                     num_cardinals, channels, taps)
        parts = cdiv(features, MIX_BWD_BLOCK_F) + cdiv(second_features, MIX_BWD_BLOCK_F)
        self.parts_shape = (parts, batch, num_groups, num_cardinals)
        self.new_parts = Empty(self.parts_shape)
        self.args = (batch, num_splits, num_groups, num_cardinals, features, second_features,
                     channels, taps,
                     *routing_stride, *grad_stride, *(second_grad_stride or (0, 0, 0, 0)),
                     *layout, *(second_stride or (0, 0, 0)), *grad_layout,
                     *(contiguous_strides(second_shape) if second_shape else (0, 0, 0)),
                     *contiguous_strides(self.parts_shape))
        self.constexprs = {"HAS_SECOND": second_shape is not None, "NEED_BANK": need_banks,
                           "NEED_ROUTING": need_routing,
                           "ACC_DTYPE": _accumulator(bank_dtype, grad_dtype, routing_dtype),
                           "BLOCK_GROUPS": power_of_2_at_least(num_groups),
                           "BLOCK_F": MIX_BWD_BLOCK_F}
        self.grid = (parts * num_cardinals,)
        self.has_second = second_shape is not None
        self.need_banks, self.need_routing = need_banks, need_routing
        self.launch = LaunchSite(mix_bwd_kernel, self.grid, self.constexprs)

    def __call__(self, grad, second_grad, routing, bank, second_bank=None, signature=None):
        """(routing_parts or None, grad_bank or None, grad_second_bank or None); see
        :func:`mix_bwd`."""
        has_second, need_banks, need_routing = self.has_second, self.need_banks, \
            self.need_routing
        routing_parts = grad_bank = grad_second_bank = None
        if need_routing:
            routing_parts = self.new_parts(routing.device, routing.dtype)
        if need_banks:
            grad_bank = torch.empty_strided(self.grad_bank_shape, self.grad_bank_stride,
                                            dtype=bank.dtype, device=bank.device)
            if has_second:
                grad_second_bank = torch.empty_like(second_bank,
                                                    memory_format=torch.contiguous_format)
        if grad.shape[1] == 0:
            for tensor in (routing_parts, grad_bank, grad_second_bank):
                if tensor is not None:
                    tensor.zero_()
            return routing_parts, grad_bank, grad_second_bank
        if need_banks or need_routing:
            self.launch((routing, grad, second_grad if has_second else grad,
                         bank, second_bank if has_second else bank,
                         grad_bank if need_banks else bank,
                         grad_second_bank if need_banks and has_second else bank,
                         routing_parts if need_routing else routing), self.args, signature)
        return routing_parts, grad_bank, grad_second_bank


@launch_plan
def mix_backward_plan(grad_shape, grad_stride, grad_dtype, second_grad_stride, routing_shape,
                      routing_stride, routing_dtype, bank_shape, bank_stride, bank_dtype,
                      second_shape, second_stride, need_banks: bool,
                      need_routing: bool) -> MixBackward:
    """The :class:`MixBackward` of a shape class, made once."""
    return MixBackward(grad_shape, grad_stride, grad_dtype, second_grad_stride, routing_shape,
                       routing_stride, routing_dtype, bank_shape, bank_stride, bank_dtype,
                       second_shape, second_stride, need_banks, need_routing)


def mix_backward_for(grad, second_grad, routing, bank, second_bank=None, need_banks=True,
                     need_routing=True) -> MixBackward:
    """The :class:`MixBackward` of these tensors. ``bank``: (k, d, F), or the conv weight
    (k*out, Cg, kh, kw) itself, read in place and its gradient made in its strides (a weight
    :func:`weight_bank_strides` accepts, dense: contiguous or channels_last)."""
    has_second = second_bank is not None
    return mix_backward_plan(
        tuple(grad.shape), grad.stride(), grad.dtype,
        second_grad.stride() if has_second else None,
        tuple(routing.shape), routing.stride(), routing.dtype, tuple(bank.shape),
        bank.stride(), bank.dtype, tuple(second_bank.shape) if has_second else None,
        second_bank.stride() if has_second else None, need_banks, need_routing)


def mix_bwd(
    grad: torch.Tensor,
    second_grad: torch.Tensor | None,
    routing: torch.Tensor,
    bank: torch.Tensor,
    second_bank: torch.Tensor | None = None,
    need_banks: bool = True,
    need_routing: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`mix_fwd`, in one launch that reads the kernel gradient once.

    Args:
        grad: (S, B, d, F), the gradient of the first output as S partial sums (S = 1 when it
            comes whole). second_grad: (S, B, d, F2) when there is a second bank, else None.
        routing: (B, k, d). bank: (k, d, F). second_bank: (k, d, F2) or None.
        need_banks, need_routing: which gradients to compute.

    Returns:
        routing_parts (T, B, k, d) in routing's dtype, whose sum over T is the routing
        gradient (router_bwd adds them; ``.sum(0)`` elsewhere), grad_bank (k, d, F) and
        grad_second_bank (k, d, F2) in the banks' dtypes; None for what was not asked for.
    """
    check_launchable(grad, second_grad, routing, bank, second_bank)
    return mix_backward_for(grad, second_grad, routing, bank, second_bank, need_banks,
                            need_routing)(grad, second_grad, routing, bank, second_bank)
