"""Triton kernels: weight mixing (mix.py), per-sample convolution (conv.py) and its backward
(conv_backward.py). Launchers take torch tensors and return torch tensors; autograd lives in
triton_nsr.ops."""
