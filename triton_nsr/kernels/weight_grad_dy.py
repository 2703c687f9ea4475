"""What the kernel gradients do with dy besides their MMAs: the bias gradient (dy summed over
pixels) and the channels_last copy of an NCHW dy for the input gradient.

Shared by the per-tap kernel (kernels/conv_bwd_weight.py) and the row kernel
(kernels/conv_bwd_weight_row.py), whose programs of the first tap (or kernel row) and first
input-channel tile make them. Where the pixel loop is pipelined (16-bit, or TF32 at more than
one stage: ``ASYNC_RING``) the MMAs' own dy tile must feed nothing else: with a second use
Triton (3.6, 3.9) gives its ring of shared buffers one buffer fewer than the loop's stages while
the MMA stays in flight, and the copy of the tile two steps ahead lands in the buffer the MMA
still reads (docs/design.md, "A race in the pipelined kernel gradient"). So there dy is loaded
once more, by the owning programs only (the others load nothing).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sum_and_copy_dy(bias_acc, dy, dy_rows, dy_pixel, copy_rows, copy_pixel, mask_m, mask_k,
                    owner_k, owner, HAS_BIAS: tl.constexpr, WRITE_COPY: tl.constexpr,
                    ASYNC_RING: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """bias_acc (BLOCK_M,) plus this step's dy summed over its pixels; with WRITE_COPY the
    owner also stores the tile to the copy.

    dy: the (BLOCK_M, BLOCK_K) tile the MMAs read, at dy_rows (BLOCK_M, 1) + dy_pixel
    (BLOCK_K,); the copy's tile at copy_rows + copy_pixel; owner_k: (BLOCK_K,) true where this
    program owns the sum and the copy, owner the same as a scalar. The pointers are formed
    only where used.
    """
    if ASYNC_RING:
        dy = tl.load(dy_rows + dy_pixel[None, :],
                     mask=mask_m[:, None] & (mask_k & owner_k)[None, :], other=0.0)
    if HAS_BIAS:
        bias_acc += tl.sum(dy.to(ACC_DTYPE), axis=1)
    if WRITE_COPY:  # noqa: SIM102 - a constexpr test, then a runtime one
        if owner:
            tl.store(copy_rows + copy_pixel[None, :], dy,
                     mask=mask_m[:, None] & mask_k[None, :])
    return bias_acc


@triton.jit
def store_bias_grad(grad_bias_pointer, split, grad_bias_split_stride, sample,
                    grad_bias_batch_stride, out_channel, grad_bias_channel_stride, bias_acc,
                    mask_m, owner):
    """The owner stores its bias sum (BLOCK_M,) to grad_bias (S, B, out) at its split."""
    if owner:
        tl.store(grad_bias_pointer + split.to(tl.int64) * grad_bias_split_stride
                 + sample * grad_bias_batch_stride + out_channel * grad_bias_channel_stride,
                 bias_acc.to(grad_bias_pointer.dtype.element_ty), mask=mask_m)
