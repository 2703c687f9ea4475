"""triton_nsr: Triton kernels for Neural Sparse Representation convolutions."""

from triton_nsr.convert import convert
from triton_nsr.functional import nsr_conv2d
from triton_nsr.modules import Conv2d, NSRConv2d

__all__ = ["Conv2d", "NSRConv2d", "convert", "nsr_conv2d"]
__version__ = "0.1.0"
