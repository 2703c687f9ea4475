"""Analytic cost of an NSR layer against a static convolution (supplementary, section 2).

Counts are exact for the operations as written (multiply-adds count as two FLOPs); bytes are the
minimum traffic: each input, parameter and output read or written once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from triton_nsr.arguments import as_pair, conv_output_size


@dataclass(frozen=True)
class LayerCost:
    """Parameters, FLOPs and minimum bytes of one NSR layer and of its static counterpart.

    FLOP fields are for the whole batch; ``*_macs`` fields are multiply-adds.
    """

    static_params: int
    nsr_params: int
    conv_macs: int
    pool_flops: int
    mlp_macs: int
    mix_macs: int
    static_flops: int
    nsr_flops: int
    static_bytes: int
    nsr_bytes: int

    @property
    def extra_flops_ratio(self) -> float:
        """(NSR FLOPs - static FLOPs) / static FLOPs: the overhead the paper calls negligible."""
        return (self.nsr_flops - self.static_flops) / self.static_flops

    def as_dict(self) -> dict:
        return {**asdict(self), "extra_flops_ratio": self.extra_flops_ratio}


def nsr_layer_cost(
    batch: int,
    in_channels: int,
    out_channels: int,
    height: int,
    width: int,
    kernel_size=3,
    num_sparsity_groups: int = 4,
    num_sparsity_cardinals: int = 16,
    stride=1,
    padding=1,
    dilation=1,
    groups: int = 1,
    bias: bool = True,
    itemsize: int = 4,
) -> LayerCost:
    """Cost of one NSR layer on input (batch, in_channels, height, width).

    Example:
        >>> cost = nsr_layer_cost(16, 32, 128, 48, 48)
        >>> round(cost.extra_flops_ratio, 4)
        0.0022
    """
    kh, kw = as_pair(kernel_size, "kernel_size")
    sh, sw = as_pair(stride, "stride")
    ph, pw = as_pair(padding, "padding")
    dh, dw = as_pair(dilation, "dilation")
    k, d = num_sparsity_groups, num_sparsity_cardinals
    ho, wo = conv_output_size((height, width), (kh, kw), (sh, sw), (ph, ph, pw, pw), (dh, dw))
    kernel_elems = out_channels * (in_channels // groups) * kh * kw
    bias_elems = out_channels if bias else 0
    static_params = kernel_elems + bias_elems
    nsr_params = k * static_params + k * d * (in_channels + 1)

    conv_macs = batch * ho * wo * kernel_elems
    pool_flops = batch * in_channels * height * width
    mlp_macs = batch * in_channels * k * d
    # Every sample mixes its own kernel (and bias) from the k banks.
    mix_macs = batch * k * (kernel_elems + bias_elems)
    # Softmax over k per (sample, cardinal): exp, sum, divide and the temperature scaling.
    softmax_flops = 4 * batch * k * d
    bias_flops = batch * ho * wo * bias_elems
    static_flops = 2 * conv_macs + bias_flops
    nsr_flops = static_flops + pool_flops + 2 * mlp_macs + softmax_flops + 2 * mix_macs

    activations = batch * in_channels * height * width + batch * out_channels * ho * wo
    static_bytes = itemsize * (activations + static_params)
    nsr_bytes = itemsize * (activations + nsr_params)
    return LayerCost(
        static_params=static_params,
        nsr_params=nsr_params,
        conv_macs=conv_macs,
        pool_flops=pool_flops,
        mlp_macs=mlp_macs,
        mix_macs=mix_macs,
        static_flops=static_flops,
        nsr_flops=nsr_flops,
        static_bytes=static_bytes,
        nsr_bytes=nsr_bytes,
    )


def paper_overhead_bound(size: int, channels: int, kernel: int, k: int, d: int) -> float:
    """The supplementary's overhead ratio (p^2 c + k c d + k q^2 c^2) / (p^2 q^2 c^2)."""
    p, c, q = size, channels, kernel
    return (p * p * c + k * c * d + k * q * q * c * c) / (p * p * q * q * c * c)
