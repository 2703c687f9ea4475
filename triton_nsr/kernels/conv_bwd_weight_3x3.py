"""The all-taps kernel gradient of a 3x3 per-sample convolution at stride 1 and dilation 1.

The same sums as the per-tap kernel (kernels/conv_bwd_weight.py, which chooses between the two
and launches this one), with the 9 taps' accumulators in one program, each row of one operand
read once per three kernel rows.
"""

from __future__ import annotations

import triton
import triton.language as tl

from triton_nsr.kernels.autotune import fits_shape, tuned
from triton_nsr.kernels.tiling import program_tile, sample_and_group

# All 9 taps' accumulators live in registers: 9 * BLOCK_M * BLOCK_N float32 per program, with
# the carried row (float32; dy's, or x's when TRANSPOSED) beside them.
WEIGHT_GRAD_3X3_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 16}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=8, num_stages=4),
]
REMOVED_WEIGHT_GRAD_3X3_CONFIGS = [
    (triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=8, num_stages=4),
     "with the NCHW dy copy's stores 255 registers: 128 B spilled on W4 (Triton 3.9) and "
     "200-288 B on the odd shape; the same tile runs with BLOCK_K=16"),
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=4),
     "with the NCHW dy copy's stores 255 registers on 4 warps: 120 B spilled on W4 (Triton "
     "3.9) and 192-216 B on the odd shape; the same tile runs on 8 warps (165-211 registers)"),
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
     "9 accumulators and the dy tiles pass 255 registers on 4 warps: 16-80 B spilled"),
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3),
     "the carried 64-pixel dy row beside 9 accumulators reaches 255 registers: 24 B spilled on "
     "W4; replaced by the same tile with BLOCK_K=32"),
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=4),
     "a fourth stage with the NCHW dy copy's stores: 40 B spilled on W4; the same tile runs "
     "with 3 stages"),
    (triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=8, num_stages=3),
     "the 64-pixel dy tiles with the NCHW dy copy's stores: 136 B spilled on W1-expand; the "
     "same tile runs with BLOCK_K=32"),
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=16, num_stages=3),
     "16 warps get 128 registers each (65536 per SM): 9 accumulators spill 360-490 B"),
]
# The all-taps kernel keys on the layouts of both operands, the precision, the pixel class, the
# split count and the shifted operand's route (TMA or gather at the same strides, an unaligned
# address, want different tiles). A TRANSPOSED launch passes x and dy swapped, so it keys like
# the untransposed launch of a layer with in and out channels swapped: the same GEMMs, and the
# same best tile. The names keep the order of the one list both kernel gradients shared until
# Triton 3.9 refused names a kernel lacks, so every stored shape class is the same tuple.
ALL_TAPS_WEIGHT_GRAD_KEY = ["in_group_channels", "out_group_channels", "tuning_pixels",
                            "num_splits", "grad_output_w_stride", "input_w_stride",
                            "INPUT_ROUTE", "PRECISION"]


@triton.jit
def _tap_row(acc0, acc1, acc2, rows_new, rows_mid, rows_old, shifted, PRECISION: tl.constexpr,
             ACC_DTYPE: tl.constexpr):
    """One shifted row at one column tap against the rows of kernel rows 0, 1 and 2."""
    acc0 = tl.dot(rows_new, shifted, acc0, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    acc1 = tl.dot(rows_mid, shifted, acc1, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    acc2 = tl.dot(rows_old, shifted, acc2, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    return acc0, acc1, acc2


@triton.jit
def _store_tap(grad_weight, h_stride, w_stride, kh: tl.constexpr, kw: tl.constexpr, acc, mask,
               TRANSPOSED: tl.constexpr):
    """Write the accumulator of kernel tap (kh, kw); TRANSPOSED computed tap (2 - kh, 2 - kw)."""
    tap_h: tl.constexpr = 2 - kh if TRANSPOSED else kh
    tap_w: tl.constexpr = 2 - kw if TRANSPOSED else kw
    tl.store(grad_weight + tap_h * h_stride + tap_w * w_stride,
             acc.to(grad_weight.dtype.element_ty), mask=mask)


@tuned(WEIGHT_GRAD_3X3_CONFIGS, key=ALL_TAPS_WEIGHT_GRAD_KEY,
       prune=fits_shape("out_group_channels", "in_group_channels", "tuning_pixels"))
@triton.jit
def conv_bwd_weight_3x3_kernel(
    grad_output_pointer, input_pointer, grad_weight_pointer, grad_bias_pointer, copy_pointer,
    groups, in_group_channels, out_group_channels, tuning_pixels,
    in_h, in_w, out_h, out_w, pad_h, pad_w, rows_per_split,
    grad_output_batch_stride, grad_output_channel_stride, grad_output_h_stride,
    grad_output_w_stride,
    input_batch_stride, input_channel_stride, input_h_stride, input_w_stride,
    num_splits,
    grad_weight_split_stride, grad_weight_batch_stride, grad_weight_out_stride,
    grad_weight_in_stride, grad_weight_h_stride, grad_weight_w_stride,
    grad_bias_split_stride, grad_bias_batch_stride, grad_bias_channel_stride,
    copy_batch_stride, copy_channel_stride, copy_h_stride, copy_w_stride,
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    INDEX_DTYPE: tl.constexpr, INPUT_ROUTE: tl.constexpr, WRITE_COPY: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """conv_bwd_weight_kernel for 3x3 kernels at stride 1 and dilation 1, all taps at once.

    The per-tap GEMMs of the general kernel read dy and x once per tap. Here a program keeps
    the 9 taps' accumulators and walks the rows of one tensor (the "rows", the GEMM's A): at
    step h it loads row h - pad_h of the other (the "shifted", B) at the three column taps
    (BLOCK_K pixels of the row, BLOCK_N channels) and multiplies them with rows h, h - 1 and
    h - 2 (kernel rows 0, 1, 2). Row h is loaded, row h - 1 is carried from the previous step,
    row h - 2 is loaded again (an L2 hit): the rows are read twice and the shifted tensor three
    times (plus two halo rows per split), against 9 and 9 times.

    Without TRANSPOSED the rows are dy (M: output channels) and the shifted tensor is x (N:
    input channels), as the names say. With TRANSPOSED the roles swap, for layers with more
    input than output channels (x, the wider, read twice; M its channels): grad_output_* and
    out_* describe x, input_* and in_* describe dy, pad is 2 - pad (1 for the padding-1 layers
    it is used for), and since
        dW[o, c, kh, kw] = sum_p dy[o, p] x[c, p + (kh, kw) - 1]
                         = sum_p x[c, p] dy[o, p + (2 - kh, 2 - kw) - 1]
    the accumulator of tap (kh, kw) holds dW^T at tap (2 - kh, 2 - kw): the launcher passes
    grad_weight's in and out strides swapped, the bias gradient is summed from the shifted
    dy's centre tap over the split's own rows, and the groups' offset moves to N.

    Pointers, outputs and WRITE_COPY (not with TRANSPOSED) as conv_bwd_weight_kernel (here the
    programs of the first N tile write the copy); a split s covers rows
    [s * rows_per_split, (s + 1) * rows_per_split) of the rows tensor. INPUT_ROUTE
    "tma_channels_last" reads the shifted tiles through a TMA descriptor (a tap moves the box
    by whole pixels; the zero fill is the padding), "gather" by pointers.
    Grid: (B * groups * S * cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N),).
    """
    tl.static_assert(not (TRANSPOSED and WRITE_COPY), "the copy is of an unshifted dy")
    outer, m_block, n_block, offs_m, offs_n = program_tile(
        tl.program_id(0), out_group_channels, in_group_channels, BLOCK_M, BLOCK_N, INDEX_DTYPE)
    split = outer % num_splits
    sample, group = sample_and_group(outer // num_splits, groups, INDEX_DTYPE)
    mask_m = offs_m < out_group_channels
    mask_n = offs_n < in_group_channels
    rows_channel = group * out_group_channels + offs_m
    rows_start = (grad_output_pointer + sample * grad_output_batch_stride
                  + rows_channel[:, None] * grad_output_channel_stride)
    copy_rows = (copy_pointer + sample * copy_batch_stride
                 + rows_channel[:, None] * copy_channel_stride)
    shifted_sample = (input_pointer + sample * input_batch_stride
                      + group * in_group_channels * input_channel_stride)
    if INPUT_ROUTE == "tma_channels_last":
        shifted_boxes = tl.make_tensor_descriptor(
            shifted_sample, shape=[in_h, in_w, in_group_channels],
            strides=[input_h_stride, input_w_stride, 1],
            block_shape=[1, BLOCK_K, BLOCK_N])
    first_row = split * rows_per_split
    last_row = tl.minimum(first_row + rows_per_split, out_h)
    rows_element = grad_output_pointer.dtype.element_ty

    zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc00, acc01, acc02 = zero, zero, zero
    acc10, acc11, acc12 = zero, zero, zero
    acc20, acc21, acc22 = zero, zero, zero
    # The bias gradient sums dy: the rows (per M channel), or with TRANSPOSED the shifted
    # tensor (per N channel).
    if TRANSPOSED:
        bias_acc = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    else:
        bias_acc = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    for col_start in range(0, out_w, BLOCK_K):
        cols = (col_start + tl.arange(0, BLOCK_K)).to(INDEX_DTYPE)
        # Why one row is carried and one loaded again, and why the carry is float32 (both read
        # from the sm_90 compiles): Triton's pipeliner leaves the loop's loads synchronous when
        # a loaded value is carried over two steps; and a bf16 tile carried as it is goes to
        # wgmma through shared memory, each such MMA then waited for (depth 0), while its bf16
        # conversion of a float32 carry is a computed operand, which wgmma takes from registers
        # with the MMAs kept in flight.
        rows_mid = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for h in range(first_row, last_row + 2):
            # The row index as a vector: its comparisons then mask like the columns'.
            row = tl.full((BLOCK_K,), 0, INDEX_DTYPE) + h
            col_ok = cols < out_w
            rows_new = tl.load(rows_start + h * grad_output_h_stride
                               + (cols * grad_output_w_stride)[None, :],
                               mask=mask_m[:, None] & (col_ok & (row < last_row))[None, :],
                               other=0.0)
            rows_old = tl.load(rows_start + (h - 2) * grad_output_h_stride
                               + (cols * grad_output_w_stride)[None, :],
                               mask=mask_m[:, None] & (col_ok & (row - 2 >= first_row))[None, :],
                               other=0.0)
            in_row = h - pad_h
            if INPUT_ROUTE == "tma_channels_last":
                shifted0 = tl.reshape(shifted_boxes.load([in_row, col_start - pad_w,
                                                          n_block * BLOCK_N]), (BLOCK_K, BLOCK_N))
                shifted1 = tl.reshape(shifted_boxes.load([in_row, col_start - pad_w + 1,
                                                          n_block * BLOCK_N]), (BLOCK_K, BLOCK_N))
                shifted2 = tl.reshape(shifted_boxes.load([in_row, col_start - pad_w + 2,
                                                          n_block * BLOCK_N]), (BLOCK_K, BLOCK_N))
            else:
                row_ok = (row - pad_h >= 0) & (row - pad_h < in_h)
                shifted_row = (shifted_sample + in_row * input_h_stride
                               + (offs_n * input_channel_stride)[None, :])
                shifted0 = tl.load(shifted_row + ((cols - pad_w) * input_w_stride)[:, None],
                                   mask=(row_ok & (cols - pad_w >= 0)
                                         & (cols - pad_w < in_w))[:, None] & mask_n[None, :],
                                   other=0.0)
                shifted1 = tl.load(shifted_row + ((cols - pad_w + 1) * input_w_stride)[:, None],
                                   mask=(row_ok & (cols - pad_w + 1 >= 0)
                                         & (cols - pad_w + 1 < in_w))[:, None] & mask_n[None, :],
                                   other=0.0)
                shifted2 = tl.load(shifted_row + ((cols - pad_w + 2) * input_w_stride)[:, None],
                                   mask=(row_ok & (cols - pad_w + 2 >= 0)
                                         & (cols - pad_w + 2 < in_w))[:, None] & mask_n[None, :],
                                   other=0.0)
            rows_carried = rows_mid.to(rows_element)
            # The new row also feeds the carry, the bias sum and the copy: loaded straight into
            # the wgmma, Triton would keep its shared-memory ring a buffer short of the loads in
            # flight while the MMAs run, and the copy two rows ahead would land under them
            # (docs/design.md, "A race in the pipelined kernel gradient"). Computed (+ 0.0
            # leaves every value as it is), it enters the MMAs from registers, like the carry.
            rows_computed = rows_new + 0.0
            acc00, acc10, acc20 = _tap_row(acc00, acc10, acc20, rows_computed, rows_carried,
                                           rows_old, shifted0, PRECISION, ACC_DTYPE)
            acc01, acc11, acc21 = _tap_row(acc01, acc11, acc21, rows_computed, rows_carried,
                                           rows_old, shifted1, PRECISION, ACC_DTYPE)
            acc02, acc12, acc22 = _tap_row(acc02, acc12, acc22, rows_computed, rows_carried,
                                           rows_old, shifted2, PRECISION, ACC_DTYPE)
            if HAS_BIAS:
                if TRANSPOSED:
                    # The centre tap (pad 1) is dy's row in_row unshifted; each dy row is summed
                    # by the split whose rows hold it, in the programs that store the bias
                    # (the others load nothing). Loaded again, not summed from shifted1: a
                    # second use would cost the MMAs' ring of shifted tiles a buffer while they
                    # run (docs/design.md, "A race in the pipelined kernel gradient").
                    own = ((row - pad_h >= first_row) & (row - pad_h < last_row)
                           & (row - pad_h < in_h) & (row * 0 + m_block == 0))
                    centre = tl.load(shifted_sample + in_row * input_h_stride
                                     + (offs_n * input_channel_stride)[None, :]
                                     + ((cols - pad_w + 1) * input_w_stride)[:, None],
                                     mask=(own & (cols - pad_w + 1 >= 0)
                                           & (cols - pad_w + 1 < in_w))[:, None]
                                     & mask_n[None, :], other=0.0)
                    bias_acc += tl.sum(centre.to(ACC_DTYPE), axis=0)
                else:
                    bias_acc += tl.sum(rows_new.to(ACC_DTYPE), axis=1)
            if WRITE_COPY:  # noqa: SIM102 - a constexpr test, then a runtime one
                if n_block == 0:
                    tl.store(copy_rows + h * copy_h_stride + (cols * copy_w_stride)[None, :],
                             rows_new, mask=mask_m[:, None] & (col_ok & (row < last_row))[None, :])
            rows_mid = rows_new.to(tl.float32)

    # With TRANSPOSED, M indexes input channels (no group offset in grad_weight), N output
    # channels.
    weight_m = offs_m if TRANSPOSED else rows_channel
    weight_n = group * in_group_channels + offs_n if TRANSPOSED else offs_n
    grad_weight = (grad_weight_pointer + split.to(tl.int64) * grad_weight_split_stride
                   + sample * grad_weight_batch_stride
                   + weight_m[:, None] * grad_weight_out_stride
                   + weight_n[None, :] * grad_weight_in_stride)
    mask = mask_m[:, None] & mask_n[None, :]
    h_stride, w_stride = grad_weight_h_stride, grad_weight_w_stride
    _store_tap(grad_weight, h_stride, w_stride, 0, 0, acc00, mask, TRANSPOSED)
    _store_tap(grad_weight, h_stride, w_stride, 0, 1, acc01, mask, TRANSPOSED)
    _store_tap(grad_weight, h_stride, w_stride, 0, 2, acc02, mask, TRANSPOSED)
    _store_tap(grad_weight, h_stride, w_stride, 1, 0, acc10, mask, TRANSPOSED)
    _store_tap(grad_weight, h_stride, w_stride, 1, 1, acc11, mask, TRANSPOSED)
    _store_tap(grad_weight, h_stride, w_stride, 1, 2, acc12, mask, TRANSPOSED)
    _store_tap(grad_weight, h_stride, w_stride, 2, 0, acc20, mask, TRANSPOSED)
    _store_tap(grad_weight, h_stride, w_stride, 2, 1, acc21, mask, TRANSPOSED)
    _store_tap(grad_weight, h_stride, w_stride, 2, 2, acc22, mask, TRANSPOSED)
    if HAS_BIAS:
        grad_bias = (grad_bias_pointer + split.to(tl.int64) * grad_bias_split_stride
                     + sample * grad_bias_batch_stride)
        element = grad_bias_pointer.dtype.element_ty
        # One program per tile of output channels writes them: its other-axis tile is the first.
        if TRANSPOSED:
            if m_block == 0:
                tl.store(grad_bias + (group * in_group_channels + offs_n)
                         * grad_bias_channel_stride, bias_acc.to(element), mask=mask_n)
        else:
            if n_block == 0:
                tl.store(grad_bias + rows_channel * grad_bias_channel_stride,
                         bias_acc.to(element), mask=mask_m)
