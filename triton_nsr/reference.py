"""The NSR layer as the paper writes it: the ground truth that every backend is tested against.

Nothing here is shared with the backends (triton_nsr.functional and what it calls): the router,
the mixing, the padding and the convolution are written again, in the paper's formulation, so a
test that compares a backend with this module compares two independent computations.

Data flow for input x (B, C, H, W), k sparsity groups, d cardinals, out output channels:

1. pool:     m = mean(x, over H and W)                          (B, C)
2. MLP:      logits = m @ mlp_weight.T + mlp_bias               (B, k*d) viewed (B, k, d)
3. softmax:  s = softmax(logits / temperature, over k)          (B, k, d)
4. mix:      W_b = sum_j s[b, j, c] * W[j, c]                    (B, d, out/d, C/groups, kh, kw)
             bias_b likewise from bias viewed (k, d, out/d)     (B, out)
5. conv:     y[b] = conv2d(x[b], W_b, bias_b)                   (B, out, Ho, Wo)

Step 5 is the supplementary's trick: one grouped F.conv2d with groups = groups * B over the
batch folded into the channels. Everything runs in the input's dtype, as the authors' code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triton_nsr.modules import NSRConv2dBase


def routing_weights(
    input: torch.Tensor,
    mlp_weight: torch.Tensor,
    mlp_bias: torch.Tensor | None,
    num_sparsity_groups: int,
    num_sparsity_cardinals: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Softmax weights (B, k, d) of the k sparsity groups, for input (B, C, H, W)."""
    logits = F.linear(input.mean(dim=(2, 3)), mlp_weight, mlp_bias)
    logits = logits.view(input.shape[0], num_sparsity_groups, num_sparsity_cardinals)
    return torch.softmax(logits / temperature, dim=1)


def mix_kernels(
    routing: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample kernels (B, out, C/groups, kh, kw) and biases (B, out) or None.

    routing (B, k, d); weight (k*out, C/groups, kh, kw) and bias (k*out,), rows (k, d, out/d).
    """
    batch, k, d = routing.shape
    out_channels = weight.shape[0] // k
    # A no-op but under autocast, where the MLP ran in the autocast dtype and einsum, not
    # autocast itself, would refuse the mixed dtypes.
    routing = routing.to(weight.dtype)
    banks = weight.reshape(k, d, out_channels // d, *weight.shape[1:])
    mixed = torch.einsum("abc,bcdefg->acdefg", routing, banks)
    mixed = mixed.reshape(batch, out_channels, *weight.shape[1:])
    if bias is None:
        return mixed, None
    mixed_bias = torch.einsum("abc,bcd->acd", routing, bias.reshape(k, d, out_channels // d))
    return mixed, mixed_bias.reshape(batch, out_channels)


def per_sample_conv2d(
    input: torch.Tensor,
    weight_b: torch.Tensor,
    bias_b: torch.Tensor | None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """Convolve each sample with its own kernel: one F.conv2d with groups = groups * B.

    Args:
        input: (B, C, H, W), B >= 1. weight_b: (B, out, C/groups, kh, kw). bias_b: (B, out).
        stride, padding, dilation: as F.conv2d takes them (padding may be 'same' or 'valid').

    Returns:
        (B, out, Ho, Wo).
    """
    batch, channels = input.shape[:2]
    out_channels = weight_b.shape[1]
    output = F.conv2d(
        input.reshape(1, batch * channels, *input.shape[2:]),
        weight_b.reshape(batch * out_channels, *weight_b.shape[2:]),
        None if bias_b is None else bias_b.reshape(-1),
        stride, padding, dilation, groups * batch,
    )
    return output.view(batch, out_channels, *output.shape[2:])


def _pair(value) -> tuple[int, int]:
    return tuple(value) * (2 // len(value)) if isinstance(value, (tuple, list)) else (value,) * 2


def _explicit_padding(padding, kernel_size, dilation) -> tuple[int, int, int, int]:
    """nn.Conv2d's padding as F.pad's (left, right, top, bottom), for non-zero padding modes."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(_pair(dilation), kernel_size)]
        (top, left) = (t // 2 for t in totals)
        return (left, totals[1] - left, top, totals[0] - top)
    ph, pw = _pair(padding)
    return (pw, pw, ph, ph)


def nsr_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mlp_weight: torch.Tensor,
    mlp_bias: torch.Tensor | None,
    num_sparsity_groups: int,
    num_sparsity_cardinals: int = 1,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    temperature: float = 1.0,
    padding_mode: str = "zeros",
    backend: str = "torch",
) -> torch.Tensor:
    """NSR convolution in the paper's formulation (the ground truth).

    Args:
        input: (B, C, H, W) or unbatched (C, H, W).
        weight: (k*out, C/groups, kh, kw). bias: (k*out,) or None.
        mlp_weight: (k*d, C). mlp_bias: (k*d,) or None.
        backend: accepted for signature parity with :func:`triton_nsr.nsr_conv2d`; this is
            always plain PyTorch, so only 'auto' and 'torch' are allowed.

    Returns:
        (B, out, Ho, Wo), or (out, Ho, Wo) for unbatched input.

    Example:
        >>> x = torch.randn(2, 8, 16, 16)
        >>> w, mw = torch.randn(4 * 16, 8, 3, 3), torch.randn(4 * 2, 8)
        >>> nsr_conv2d(x, w, None, mw, None, 4, 2, padding=1).shape
        torch.Size([2, 16, 16, 16])
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"triton_nsr.reference.nsr_conv2d is plain PyTorch; got {backend=!r}")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    routing = routing_weights(input, mlp_weight, mlp_bias, num_sparsity_groups,
                              num_sparsity_cardinals, temperature)
    weight_b, bias_b = mix_kernels(routing, weight, bias)
    if padding_mode != "zeros":
        input = F.pad(input, _explicit_padding(padding, weight.shape[2:], dilation),
                      mode=padding_mode)
        padding = 0
    if input.shape[0] == 0:
        # groups = groups * B cannot be 0: convolve the empty batch with one bank instead,
        # keeping every parameter in the graph so that backward gives (zero) gradients.
        output = F.conv2d(input, weight[: weight_b.shape[1]], None, stride, padding, dilation,
                          groups)
        output = output + 0 * routing.sum() + (0 if bias is None else 0 * bias.sum())
    else:
        output = per_sample_conv2d(input, weight_b, bias_b, stride, padding, dilation, groups)
    return output.squeeze(0) if unbatched else output


class NSRConv2d(NSRConv2dBase):
    """The NSR layer computed by :func:`nsr_conv2d`: the ground truth for
    :class:`triton_nsr.NSRConv2d`, with the same constructor, parameters and state_dict."""

    def _functional(self, *args, **kwargs) -> torch.Tensor:
        return nsr_conv2d(*args, **{**kwargs, "backend": "torch"})
