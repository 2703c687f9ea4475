"""The NSR layer in plain PyTorch: the semantics every other backend is tested against.

Data flow for input x (B, C, H, W), k sparsity groups and d cardinals, out output channels:

1. pool:     m = mean(x, over H and W)                          (B, C)
2. MLP:      logits = m @ mlp_weight.T + mlp_bias               (B, k*d) viewed (B, k, d)
3. softmax:  s = softmax(logits / temperature, over k)          (B, k, d)
4. mix:      W_b = sum_j s[b, j, c] * W[j, c]                    (B, d, out/d, C/groups, kh, kw)
             bias_b likewise from bias viewed (k, d, out/d)     (B, out)
5. conv:     y[b] = conv2d(x[b], W_b, bias_b)                   (B, out, Ho, Wo)

The convolution is written the way the paper's supplementary does it: one grouped F.conv2d whose
groups are groups * B, over the batch folded into channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triton_nsr.arguments import (
    ConvGeometry,
    check_backend,
    check_nsr_conv2d,
    check_padding_mode,
    check_positive_int,
    check_temperature,
)


def routing_weights(
    input: torch.Tensor,
    mlp_weight: torch.Tensor,
    mlp_bias: torch.Tensor | None,
    num_sparsity_groups: int,
    num_sparsity_cardinals: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Softmax weights of the k sparsity groups for each sample and cardinal.

    Args:
        input: (B, C, H, W), unpadded.
        mlp_weight: (k*d, C); mlp_bias: (k*d,) or None.

    Returns:
        (B, k, d), summing to one over k.
    """
    pooled = input.mean(dim=(-2, -1))
    logits = F.linear(pooled, mlp_weight, mlp_bias)
    logits = logits.view(-1, num_sparsity_groups, num_sparsity_cardinals)
    return torch.softmax(logits / temperature, dim=1)


def mix_kernels(
    routing: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample kernels as the routing-weighted sum of the k base kernels.

    Args:
        routing: (B, k, d).
        weight: (k*out, C/groups, kh, kw), rows ordered (k, d, out/d).
        bias: (k*out,) or None.

    Returns:
        weight_b (B, out, C/groups, kh, kw) and bias_b (B, out) or None.
    """
    batch, k, d = routing.shape
    out_channels = weight.shape[0] // k
    banks = weight.reshape(k, d, out_channels // d, *weight.shape[1:])
    mixed = torch.einsum("abc,bcdefg->acdefg", routing, banks)
    mixed = mixed.reshape(batch, out_channels, *weight.shape[1:])
    if bias is None:
        return mixed, None
    mixed_bias = torch.einsum("abc,bcd->acd", routing, bias.reshape(k, d, out_channels // d))
    return mixed, mixed_bias.reshape(batch, out_channels)


def pad_input(
    input: torch.Tensor, geometry: ConvGeometry, padding_mode: str
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Apply non-zero padding modes up front, as nn.Conv2d does.

    Returns the (possibly padded) input and the zero padding (top, bottom, left, right) that is
    still to be applied by the convolution itself.
    """
    if padding_mode == "zeros" or geometry.pad == (0, 0, 0, 0):
        return input, geometry.pad
    return F.pad(input, geometry.fpad, mode=padding_mode), (0, 0, 0, 0)


def per_sample_conv2d(
    input: torch.Tensor,
    weight_b: torch.Tensor,
    bias_b: torch.Tensor | None,
    geometry: ConvGeometry,
    pad: tuple[int, int, int, int],
) -> torch.Tensor:
    """Convolve each sample with its own kernel via one grouped F.conv2d (the paper's way).

    Args:
        input: (B, C, H', W') already padded for non-zero modes.
        weight_b: (B, out, C/groups, kh, kw); bias_b: (B, out) or None.
        pad: remaining zero padding (top, bottom, left, right).

    Returns:
        (B, out, Ho, Wo).
    """
    batch, channels = input.shape[:2]
    out_channels = weight_b.shape[1]
    if batch == 0:
        return input.new_empty((0, out_channels, *geometry.out_size))
    top, bottom, left, right = pad
    if top != bottom or left != right:
        input = F.pad(input, (left, right, top, bottom))
        top = left = 0
    output = F.conv2d(
        input.reshape(1, batch * channels, *input.shape[2:]),
        weight_b.reshape(batch * out_channels, *weight_b.shape[2:]),
        None if bias_b is None else bias_b.reshape(-1),
        geometry.stride,
        (top, left),
        geometry.dilation,
        geometry.groups * batch,
    )
    return output.view(batch, out_channels, *output.shape[2:])


def as_batched(input: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Give an unbatched (C, H, W) input a batch dimension; report whether it was added."""
    if isinstance(input, torch.Tensor) and input.dim() == 3:
        return input.unsqueeze(0), True
    return input, False


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
    """NSR convolution in plain PyTorch (the ground truth).

    Args:
        input: (B, C, H, W) or unbatched (C, H, W).
        weight: (k*out, C/groups, kh, kw). bias: (k*out,) or None.
        mlp_weight: (k*d, C). mlp_bias: (k*d,) or None.
        backend: accepted for signature parity with :func:`triton_nsr.nsr_conv2d`; this
            implementation is always plain PyTorch, so only 'auto' and 'torch' are allowed.

    Returns:
        (B, out, Ho, Wo), or (out, Ho, Wo) for unbatched input.

    Example:
        >>> x = torch.randn(2, 8, 16, 16)
        >>> w, mw = torch.randn(4 * 16, 8, 3, 3), torch.randn(4 * 2, 8)
        >>> nsr_conv2d(x, w, None, mw, None, 4, 2, padding=1).shape
        torch.Size([2, 16, 16, 16])
    """
    if check_backend(backend) == "triton":
        raise ValueError("triton_nsr.reference.nsr_conv2d is plain PyTorch; use backend='torch'")
    temperature = check_temperature(temperature)
    padding_mode = check_padding_mode(padding_mode)
    input, unbatched = as_batched(input)
    geometry = check_nsr_conv2d(
        input, weight, bias, mlp_weight, mlp_bias, num_sparsity_groups,
        num_sparsity_cardinals, stride, padding, dilation, groups,
    )
    output = nsr_conv2d_checked(
        input, weight, bias, mlp_weight, mlp_bias, geometry, temperature, padding_mode
    )
    return output.squeeze(0) if unbatched else output


def nsr_conv2d_checked(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mlp_weight: torch.Tensor,
    mlp_bias: torch.Tensor | None,
    geometry: ConvGeometry,
    temperature: float,
    padding_mode: str,
    *,
    mix=mix_kernels,
    convolve=None,
) -> torch.Tensor:
    """The layer's data flow on arguments already validated into ``geometry``: route, mix,
    pad, convolve. Input (B, C, H, W); output (B, out, Ho, Wo).

    ``mix(routing, weight, bias) -> (weight_b, bias_b)`` and
    ``convolve(padded, weight_b, bias_b, pad) -> output`` default to the paper's formulation;
    the other backends of :func:`triton_nsr.nsr_conv2d` pass their own.
    """
    routing = routing_weights(
        input, mlp_weight, mlp_bias, geometry.num_sparsity_groups,
        geometry.num_sparsity_cardinals, temperature,
    )
    weight_b, bias_b = mix(routing.to(input.dtype), weight, bias)
    padded, pad = pad_input(input, geometry, padding_mode)
    if convolve is None:
        return per_sample_conv2d(padded, weight_b, bias_b, geometry, pad)
    return convolve(padded, weight_b, bias_b, pad)


class NSRConv2d(nn.Conv2d):
    """NSR convolution layer, plain PyTorch (the ground truth for :class:`triton_nsr.NSRConv2d`).

    Constructor and state_dict follow the authors' layer: ``weight`` is
    (k*out_channels, in_channels/groups, kh, kw), ``bias`` (k*out_channels,), and the router is
    ``mlp = Sequential(Linear(in_channels, k*d))``. Unlike the authors' layer, ``out_channels``
    holds the number of channels the layer outputs (theirs holds k times that).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        num_sparsity_groups: int = 1,
        num_sparsity_cardinals: int = 1,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        temperature: float = 1.0,
        backend: str = "auto",
    ) -> None:
        k = check_positive_int(num_sparsity_groups, "num_sparsity_groups")
        d = check_positive_int(num_sparsity_cardinals, "num_sparsity_cardinals")
        check_positive_int(out_channels, "out_channels")
        if out_channels % d != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by "
                f"num_sparsity_cardinals ({d})"
            )
        check_positive_int(groups, "groups")
        if out_channels % groups != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        super().__init__(
            in_channels, k * out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self.out_channels = out_channels
        self.num_sparsity_groups = k
        self.num_sparsity_cardinals = d
        self.temperature = check_temperature(temperature)
        self.backend = check_backend(backend)
        self.mlp = nn.Sequential(nn.Linear(in_channels, k * d, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_sparsity_groups={self.num_sparsity_groups}, "
            f"num_sparsity_cardinals={self.num_sparsity_cardinals}, "
            f"temperature={self.temperature}, backend={self.backend!r}"
        )

    def _functional(self, *args, **kwargs) -> torch.Tensor:
        return nsr_conv2d(*args, **{**kwargs, "backend": "torch"})

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input (B, C, H, W) or (C, H, W) -> (B, out, Ho, Wo) or (out, Ho, Wo)."""
        # self.weight is read here, at call time, so weight-norm hooks and parametrizations apply.
        return self._functional(
            input,
            self.weight,
            self.bias,
            self.mlp[0].weight,
            self.mlp[0].bias,
            self.num_sparsity_groups,
            self.num_sparsity_cardinals,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            temperature=self.temperature,
            padding_mode=self.padding_mode,
            backend=self.backend,
        )
