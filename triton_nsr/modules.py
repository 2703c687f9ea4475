"""The drop-in module :class:`NSRConv2d`."""

from __future__ import annotations

import torch

from triton_nsr import reference
from triton_nsr.functional import nsr_conv2d


class NSRConv2d(reference.NSRConv2d):
    """Drop-in NSR convolution with the authors' constructor and state_dict, on Triton kernels.

    ``NSRConv2d(in_channels, out_channels, kernel_size, num_sparsity_groups=1,
    num_sparsity_cardinals=1, stride=1, padding=0, dilation=1, groups=1, bias=True,
    padding_mode='zeros', device=None, dtype=None, *, temperature=1.0, backend='auto')``

    Parameters (state_dict keys as in the authors' layer, so their checkpoints load strictly):
        weight: (k*out_channels, in_channels/groups, kh, kw)
        bias: (k*out_channels,), when bias=True
        mlp.0.weight: (k*d, in_channels); mlp.0.bias: (k*d,)

    Input (B, in_channels, H, W) or (in_channels, H, W); output (B, out_channels, Ho, Wo).
    ``temperature`` and ``backend`` are plain attributes and may be changed between steps.

    Example:
        >>> layer = NSRConv2d(32, 128, 3, num_sparsity_groups=4, num_sparsity_cardinals=16,
        ...                   padding=1, backend="torch")
        >>> layer(torch.randn(2, 32, 24, 24)).shape
        torch.Size([2, 128, 24, 24])
    """

    def _functional(self, *args, **kwargs) -> torch.Tensor:
        return nsr_conv2d(*args, **kwargs)


Conv2d = NSRConv2d
