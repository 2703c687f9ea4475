"""The router: pool -> MLP -> temperature -> softmax, the first half of every NSR layer.

For input (B, C, H, W) it gives each sample's weights over the k sparsity groups, per cardinal:

    m = mean(x over H, W)                                 (B, C)
    logits = m @ mlp_weight.T + mlp_bias                  (B, k*d), viewed (B, k, d)
    s = softmax(logits / temperature, over k)             (B, k, d)

It runs in float32 at least, whatever the input dtype and autocast say: a float16 router
overflows on ordinary logits once the temperature is small (logits of 10 at temperature 1e-4 are
1e5, past float16's 65504), and a small temperature can round to zero in float16 or bfloat16.
The cost is nothing next to the convolution: the mean reads x once and accumulates in float32
without a float32 copy of x; the rest is a (B, C) x (C, k*d) product.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor


def routing_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else."""
    return torch.promote_types(dtype, torch.float32)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for this device type."""
    return (torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type))


def _no_autocast(device_type: str):
    # Autocast would run the MLP in bfloat16/float16; the router keeps float32.
    if autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def routing_weights(
    input: Tensor,
    mlp_weight: Tensor,
    mlp_bias: Tensor | None,
    num_sparsity_groups: int,
    num_sparsity_cardinals: int,
    temperature: float = 1.0,
) -> Tensor:
    """Softmax weights of the k sparsity groups for each sample and cardinal.

    Args:
        input: (B, C, H, W), unpadded, any floating dtype and layout.
        mlp_weight: (k*d, C); mlp_bias: (k*d,) or None.
        temperature: divides the logits before the softmax (a Python number, or a 0-dim
            tensor).

    Returns:
        (B, k, d) in float32 (float64 for float64 input), summing to one over k.

    Example:
        >>> x = torch.randn(2, 8, 5, 5, dtype=torch.float16)
        >>> s = routing_weights(x, torch.randn(4 * 3, 8), None, 4, 3, temperature=1e-4)
        >>> s.shape, s.dtype, bool(s.isfinite().all())
        (torch.Size([2, 4, 3]), torch.float32, True)
    """
    dtype = routing_dtype(input.dtype)
    with _no_autocast(input.device.type):
        pooled = input.mean(dim=(-2, -1), dtype=dtype)
        logits = F.linear(pooled, mlp_weight.to(dtype),
                          None if mlp_bias is None else mlp_bias.to(dtype))
        logits = logits.view(-1, num_sparsity_groups, num_sparsity_cardinals)
        # Shifted by the peak before the temperature divides, so a small temperature cannot
        # overflow the logits to inf (and the softmax to NaN). The softmax does not change
        # with a shift that is constant over k, so neither do its gradients: the peak is
        # detached.
        peak = logits.detach().amax(dim=1, keepdim=True)
        return torch.softmax((logits - peak) / temperature, dim=1)
