"""A test-only stand-in for the authors' NSR layer, written for these tests in their semantics.

Like theirs (supplementary, section 5): an nn.Conv2d subclass whose ``out_channels`` is k times
the channels it outputs, an ``mlp`` holding one Linear, a softmax over the k groups without a
temperature, rows of the weight ordered (k, d, out/d), and zero padding whatever the mode. Ported
to current PyTorch: ``_conv_forward`` takes the bias argument, and bias=False works. The
convolution runs sample by sample, so it shares no code with triton_nsr.
"""

import torch
import torch.nn.functional as F
from torch import nn


class AuthorsConv2d(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size, num_sparsity_groups=1,
                 num_sparsity_cardinals=1, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        self.num_sparsity_groups = num_sparsity_groups
        self.num_sparsity_cardinals = num_sparsity_cardinals
        super().__init__(in_channels, out_channels * num_sparsity_groups, kernel_size, stride,
                         padding, dilation, groups, bias, padding_mode, device, dtype)
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, num_sparsity_groups * num_sparsity_cardinals, device=device,
                      dtype=dtype)
        )

    def _conv_forward(self, input, weight, bias):
        k, d = self.num_sparsity_groups, self.num_sparsity_cardinals
        scores = torch.softmax(self.mlp(input.mean((-2, -1))).view(-1, k, d), dim=1)
        outputs = []
        for b in range(input.shape[0]):
            # Output channel o of cardinal c = o // (out/d) mixes rows j*out + o, j < k.
            mix = scores[b].repeat_interleave(self.out_channels // (k * d), dim=1).reshape(k, -1)
            kernel = (mix[..., None, None, None] * weight.view(k, -1, *weight.shape[1:])).sum(0)
            shift = None if bias is None else (mix * bias.view(k, -1)).sum(0)
            outputs.append(F.conv2d(input[b:b + 1], kernel, shift, self.stride, self.padding,
                                    self.dilation, self.groups))
        return torch.cat(outputs)
