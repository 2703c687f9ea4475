"""The Triton kernels a layer call runs, and how they are launched and tuned.

In data-flow order: router.py (pooling; the router's backward), mix.py (the per-sample kernels
from the k banks, with the rest of the router), conv.py (the per-sample convolution),
conv_bwd_weight.py and conv_bwd_weight_3x3.py (its kernel gradient), conv_bwd_input.py (its input
gradient); beside them operands.py and tiling.py (layouts, routes, tiles), autotune.py and
tuned_configs.py (how each kernel is tuned). Launchers take torch tensors and return torch
tensors; autograd lives in triton_nsr.ops. Nothing a layer call runs imports inspection/, the
tools that compile the layer's launches for sm_90 and read what came out.
"""
