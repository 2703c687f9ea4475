"""``nsr_conv2d``: argument checks, autocast, routing, padding and the choice of backend.

The data flow every backend shares lives here: check the arguments into a ConvGeometry, route
(triton_nsr.router), mix the k banks into per-sample kernels, apply non-zero padding modes, and
convolve each sample with its kernel. A backend supplies the implementations:

- 'torch': the last two steps, triton_nsr.mixing and triton_nsr.grouped_conv (plain PyTorch,
  any device);
- 'triton': routing, mixing and convolution as one layer, triton_nsr.ops.nsr_layer (Triton
  kernels on CUDA, or Triton's CPU interpreter): 3 launches forward, at most 5 backward.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from triton_nsr import grouped_conv, mixing, router
from triton_nsr.arguments import (
    ConvGeometry,
    call_key,
    check_backend,
    check_nsr_conv2d,
    check_padding_mode,
    check_temperature,
    differentiable_temperature,
    lookup,
)
from triton_nsr.router import autocast_enabled


def interpreter_enabled() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, input: torch.Tensor) -> str:
    """Map 'auto' to 'triton' for CUDA tensors or under the interpreter, else to 'torch'.

    Triton's interpreter has no bfloat16 arithmetic (its dot multiplies the raw 16 bits), so
    there 'auto' takes the torch backend for bfloat16 (and an explicit 'triton' is refused at
    the first kernel launch, see kernels/tuned_configs.py).
    """
    backend = check_backend(backend)
    triton_runs = input.is_cuda or interpreter_enabled()
    if backend == "auto":
        interpreted_bfloat16 = not input.is_cuda and input.dtype == torch.bfloat16
        return "triton" if triton_runs and not interpreted_bfloat16 else "torch"
    if backend == "triton" and not triton_runs:
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors (got a tensor on {input.device}) or the Triton "
            "interpreter (set TRITON_INTERPRET=1 before triton is imported); use backend='torch' "
            "or 'auto' to run on this device"
        )
    return backend


def as_batched(input: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Give an unbatched (C, H, W) input a batch dimension; report whether it was added."""
    if isinstance(input, torch.Tensor) and input.dim() == 3:
        return input.unsqueeze(0), True
    return input, False




def autocast_inputs(tensors: list, device_type: str) -> list:
    """Cast floating tensors to the autocast dtype, as autocast does for nn.Conv2d's inputs.

    The router upcasts what it reads to float32 again; the convolution runs in the autocast
    dtype, like the static convolution it replaces.
    """
    if not autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return [
        t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        for t in tensors
    ]


def pad_input(input: torch.Tensor, geometry: ConvGeometry, padding_mode: str
              ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Apply non-zero padding modes up front, as nn.Conv2d does.

    Returns the (possibly padded) input (B, C, H', W') and the zero padding
    (top, bottom, left, right) the convolution still has to apply.
    """
    if padding_mode == "zeros" or geometry.pad == (0, 0, 0, 0):
        return input, geometry.pad
    return F.pad(input, geometry.fpad, mode=padding_mode), (0, 0, 0, 0)


# Dynamo does not trace torch.backends' precision objects: a compiled graph takes the setting of
# its compile time, as it does for the legacy flag.
@torch.compiler.assume_constant_result
def conv_allows_tf32() -> bool:
    """Whether float32 convolutions may use TF32, as cuDNN's convolutions decide it.

    Reads the precision API (``torch.backends.cudnn.conv.fp32_precision``, where 'none' defers
    to ``torch.backends.cudnn.fp32_precision`` and then ``torch.backends.fp32_precision``); the
    legacy ``allow_tf32`` flag only where that API is missing or says nothing, since reading the
    legacy flag raises once the two APIs have been mixed.
    """
    if _PRECISION is not None:
        # The getters behind torch.backends.cudnn.conv.fp32_precision,
        # torch.backends.cudnn.fp32_precision and torch.backends.fp32_precision, called
        # directly: the attribute route costs microseconds a call.
        for backend, op in (("cuda", "conv"), ("cuda", "all"), ("generic", "all")):
            precision = _PRECISION(backend, op)
            if precision in ("tf32", "ieee"):
                return precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


# torch's precision API (torch >= 2.9); None before it.
_PRECISION = getattr(torch._C, "_get_fp32_precision_getter", None)


def _autocast_stand_in(input: torch.Tensor, weight) -> torch.Tensor:
    """A free (B, C, H, W) tensor in weight's dtype, for checking the parameters against each
    other when autocast has cast the input only (the Triton path reads float32 parameters as
    they are). Kept per shape, dtype and device: a call allocates nothing for its check."""
    dtype = weight.dtype if isinstance(weight, torch.Tensor) else input.dtype
    key = (input.shape, dtype, input.device)
    stand_in = _STAND_INS.get(key)
    if stand_in is None:
        if len(_STAND_INS) >= 64:
            _STAND_INS.clear()
        stand_in = torch.empty((), dtype=dtype, device=input.device).expand(input.shape)
        if not torch.compiler.is_compiling():
            _STAND_INS[key] = stand_in
    return stand_in


_STAND_INS: dict = {}


def _ops():
    """triton_nsr.ops, imported on first use: it imports triton, which the torch backend does
    not need. Looked up in sys.modules (an import statement costs more, per call)."""
    ops = sys.modules.get("triton_nsr.ops")
    if ops is None:
        from triton_nsr import ops
    return ops


def _triton_backend(input, weight, bias, mlp_weight, mlp_bias, num_sparsity_groups,
                    num_sparsity_cardinals, stride, padding, dilation, groups, temperature,
                    padding_mode, autocasting) -> torch.Tensor:
    """The whole layer on the Triton kernels (triton_nsr.ops.nsr_layer).

    Under autocast only the input is cast (the caller has cast it), as the static convolution's
    input is; the kernels read the parameters in their own dtype (float32 weights mix straight
    into bfloat16 kernels), so no cast kernel runs per call. Forward-mode AD, double backward
    and torch.func are refused by the layer's Function (ops.nsr_layer) at the first call.

    A zero-padded call seen before (:func:`triton_nsr.arguments.call_key`: shapes, strides,
    dtypes, devices, the input's alignment, the numbers, autocast, TF32 and whether the input's
    gradient is wanted) finds its layer plan by one lookup and runs it (ops.run_layer_plan):
    its key holds everything the checks read, so it passed them.
    """
    ops = _ops()
    # Read per call, as nn.Conv2d follows the setting at call time.
    allow_tf32 = conv_allows_tf32()
    numbers = (num_sparsity_groups, num_sparsity_cardinals, stride, padding, dilation, groups)
    key = None
    # Not while compiling (the op is traced) or under a torch.func transform (its wrapped
    # tensors have no address; ops.nsr_layer refuses the call).
    if (padding_mode == "zeros" and not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active()):
        input_grad = input.requires_grad and torch.is_grad_enabled()
        known, key = lookup(_KNOWN_CALLS, call_key(input, weight, bias, mlp_weight, mlp_bias,
                                                   numbers, (autocasting, allow_tf32,
                                                             input_grad)))
        if known is not None:  # the call's LayerPlan
            return ops.run_layer_plan(known, input, None, weight, bias, mlp_weight, mlp_bias,
                                      temperature)
    checked = _autocast_stand_in(input, weight) if autocasting else input
    geometry = check_nsr_conv2d(checked, weight, bias, mlp_weight, mlp_bias, *numbers)
    if autocasting and padding_mode != "zeros":
        # CPU autocast runs the pads in float32; the convolution reads the autocast dtype.
        with torch.autocast(input.device.type, enabled=False):
            padded, pad = pad_input(input, geometry, padding_mode)
    else:
        padded, pad = pad_input(input, geometry, padding_mode)
    output = ops.nsr_layer(input, None if padded is input else padded, weight, bias,
                           mlp_weight, mlp_bias, geometry, temperature, pad, allow_tf32)
    if key is not None:
        # Remembered after the first call (whose plan nsr_layer made: this finds it).
        if len(_KNOWN_CALLS) >= _KNOWN_CALLS_MAX:
            _KNOWN_CALLS.clear()
        _KNOWN_CALLS[key] = ops.layer_plan_for(
            input, None, weight, bias, mlp_weight, mlp_bias, geometry, pad, allow_tf32,
            input_grad)
    return output


# Known zero-padded calls of the Triton layer: their LayerPlan by call_key (the key holds all
# the checks read, so a known call passed them). Forgotten with the launch plans
# (triton_nsr.ops registers the clearing), so a tool's forced kernel choice or cleared plans
# reach every later call.
_KNOWN_CALLS: dict = {}
_KNOWN_CALLS_MAX = 256


def forget_known_calls() -> None:
    """Forget every known call (their plans with them)."""
    _KNOWN_CALLS.clear()


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
    backend: str = "auto",
) -> torch.Tensor:
    """Neural Sparse Representation convolution (Fan et al., NeurIPS 2020).

    Each sample gets its own kernel: the spatial mean of the (unpadded) input goes through a
    one-layer MLP to k*d logits; a softmax over the k sparsity groups, per cardinal, weights the
    k base kernels; the weighted sum convolves that sample.

    Args:
        input: (B, C, H, W) or unbatched (C, H, W), any memory layout.
        weight: (k*out, C/groups, kh, kw), rows ordered (k, d, out/d) as in the authors' code.
        bias: (k*out,) or None.
        mlp_weight: (k*d, C). mlp_bias: (k*d,) or None.
        num_sparsity_groups: k. num_sparsity_cardinals: d (divides out).
        stride, padding, dilation, groups: as in F.conv2d; padding may be 'same' or 'valid'.
        temperature: divides the logits before the softmax; a number (or one-element tensor)
            in float32's normal range. A tensor that requires grad gets its gradient on the
            torch backend; the triton backend refuses it (detach it to keep it fixed).
        padding_mode: 'zeros', 'reflect', 'replicate' or 'circular', as in nn.Conv2d.
        backend: 'torch' (plain PyTorch: the per-sample convolutions as one grouped convolution,
            opaque to torch.compile so the batch stays symbolic; see triton_nsr.grouped_conv),
            'triton' (Triton kernels; CUDA, or the interpreter with TRITON_INTERPRET=1), or
            'auto' (triton for CUDA tensors or under the interpreter, else torch).

    Returns:
        (B, out, Ho, Wo), or (out, Ho, Wo) for unbatched input; channels_last when the input is.

    Example:
        >>> x = torch.randn(2, 8, 16, 16)
        >>> w, mw = torch.randn(4 * 16, 8, 3, 3), torch.randn(4 * 2, 8)
        >>> nsr_conv2d(x, w, None, mw, None, 4, 2, padding=1, backend="torch").shape
        torch.Size([2, 16, 16, 16])
    """
    # The value checked and, where its gradient is wanted, the tensor itself for the router.
    learned_temperature = temperature if differentiable_temperature(temperature) else None
    temperature = check_temperature(temperature)
    padding_mode = check_padding_mode(padding_mode)
    check_backend(backend)
    input, unbatched = as_batched(input)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    autocasting = autocast_enabled(input.device.type)
    if autocasting:
        # Cast before the backend is resolved: bfloat16 under the interpreter takes 'torch'.
        input = autocast_inputs([input], input.device.type)[0]
    backend = resolve_backend(backend, input)
    if backend == "triton":
        if learned_temperature is not None:
            raise NotImplementedError(
                "nsr_conv2d(backend='triton') does not differentiate the temperature, and this "
                "one is a tensor that requires grad: use backend='torch', which does, or pass "
                "temperature.detach() (or a float) to keep it fixed")
        output = _triton_backend(input, weight, bias, mlp_weight, mlp_bias, num_sparsity_groups,
                                 num_sparsity_cardinals, stride, padding, dilation, groups,
                                 temperature, padding_mode, autocasting)
        return output.squeeze(0) if unbatched else output
    weight, bias, mlp_weight, mlp_bias = autocast_inputs(
        [weight, bias, mlp_weight, mlp_bias], input.device.type)
    geometry = check_nsr_conv2d(
        input, weight, bias, mlp_weight, mlp_bias, num_sparsity_groups,
        num_sparsity_cardinals, stride, padding, dilation, groups,
    )
    routing = router.routing_weights(
        input, mlp_weight, mlp_bias, geometry.num_sparsity_groups,
        geometry.num_sparsity_cardinals,
        temperature if learned_temperature is None else learned_temperature)
    weight_b, bias_b = mixing.mix_kernels(routing.to(weight.dtype), weight, bias)
    padded, pad = pad_input(input, geometry, padding_mode)
    output = grouped_conv.per_sample_conv2d(padded, weight_b, bias_b, geometry.stride, pad,
                                            geometry.dilation, geometry.groups)
    return output.squeeze(0) if unbatched else output
