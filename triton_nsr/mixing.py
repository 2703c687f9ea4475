"""The mixing in plain torch: each sample's kernel as the routing-weighted sum of k banks."""

from __future__ import annotations

import torch
from torch import Tensor


def mix_kernels(routing: Tensor, weight: Tensor, bias: Tensor | None
                ) -> tuple[Tensor, Tensor | None]:
    """Per-sample kernels and biases from the k banks.

    Args:
        routing: (B, k, d) softmax weights, in the dtype of ``weight``.
        weight: (k*out, Cg, kh, kw), rows ordered (k, d, out/d). bias: (k*out,) or None.

    Returns:
        weight_b (B, out, Cg, kh, kw) and bias_b (B, out) or None.

    Example:
        >>> s = torch.softmax(torch.randn(2, 4, 8), dim=1)
        >>> w_b, b_b = mix_kernels(s, torch.randn(4 * 16, 3, 3, 3), torch.randn(4 * 16))
        >>> w_b.shape, b_b.shape
        (torch.Size([2, 16, 3, 3, 3]), torch.Size([2, 16]))
    """
    batch, k, d = routing.shape
    out_channels = weight.shape[0] // k
    # One (B, k) x (k, F) product per cardinal: a batched matmul over d.
    banks = weight.reshape(k, d, -1)
    weight_b = torch.bmm(routing.permute(2, 0, 1), banks.transpose(0, 1))  # (d, B, F)
    weight_b = weight_b.transpose(0, 1).reshape(batch, out_channels, *weight.shape[1:])
    if bias is None:
        return weight_b, None
    bias_b = torch.bmm(routing.permute(2, 0, 1), bias.reshape(k, d, -1).transpose(0, 1))
    return weight_b, bias_b.transpose(0, 1).reshape(batch, out_channels)
