"""The per-sample convolution in plain torch, as a sum over kernel taps of batched matmuls.

The paper's formulation folds the batch into the channels and calls one F.conv2d with
groups = groups * B. That ties the graph to the batch size: torch.compile specialises on it and
recompiles for every new batch. Here each tap (r, t) of the kernel is one batched contraction of a
strided view of the input with the per-sample kernel slice w[:, :, :, r, t]; the batch is just a
leading dimension, so it stays symbolic. This is the torch backend of ``nsr_conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triton_nsr.arguments import conv_output_size


def per_sample_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Convolve each sample with its own kernel.

    Args:
        input: (B, C, H, W). weight: (B, out, C/groups, kh, kw). bias: (B, out) or None.
        pad: zero padding (top, bottom, left, right).

    Returns:
        (B, out, Ho, Wo).

    Example:
        >>> x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 3, 3)
        >>> per_sample_conv2d(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1).shape
        torch.Size([2, 6, 8, 8])
    """
    batch = input.shape[0]
    out_channels, in_group_channels, kernel_h, kernel_w = weight.shape[1:]
    out_h, out_w = conv_output_size(tuple(input.shape[2:]), (kernel_h, kernel_w), stride, pad,
                                    dilation)
    top, bottom, left, right = pad
    if any(pad):
        input = F.pad(input, (left, right, top, bottom))
    height, width = input.shape[2:]
    (stride_h, stride_w), (dilation_h, dilation_w) = stride, dilation
    grouped_input = input.reshape(batch, groups, in_group_channels, height, width)
    grouped_weight = weight.reshape(batch, groups, out_channels // groups, in_group_channels,
                                    kernel_h, kernel_w)
    output = None
    for r in range(kernel_h):
        row = r * dilation_h
        for t in range(kernel_w):
            col = t * dilation_w
            window = grouped_input[..., row:row + (out_h - 1) * stride_h + 1:stride_h,
                                   col:col + (out_w - 1) * stride_w + 1:stride_w]
            term = torch.einsum("bgchw,bgoc->bgohw", window, grouped_weight[..., r, t])
            output = term if output is None else output + term
    output = output.reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        output = output + bias[:, :, None, None]
    return output
