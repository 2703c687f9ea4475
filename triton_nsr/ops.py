"""The Triton path as torch: the whole NSR layer, and its two parts as ops of their own.

The layer (:func:`nsr_layer`, what ``nsr_conv2d(backend='triton')`` runs) is one
``autograd.Function`` whose forward and backward call the kernel launchers directly:

    forward:  router_pool (chunk sums) -> mix_fwd (mean, MLP, softmax; weight and bias)
              -> conv_fwd
    backward: conv_bwd_weight -> mix_bwd (banks and routing) -> router_bwd -> conv_bwd_input,
              the router's gradient through the mean added in conv_bwd_input's epilogue

3 launches forward, at most 4 backward, and no torch op between them but views and
allocations. Under ``torch.compile`` the same two halves run as the custom ops
``triton_nsr::nsr_layer`` and ``triton_nsr::nsr_layer_backward``, whose fake implementations
compute shapes only, so the compiler traces the layer with a symbolic batch; in eager mode the
Function calls the halves directly, skipping the dispatcher's cost per op (docs/design.md).

The parts, for benchmarks and tests, registered with ``torch.library.custom_op``:

- ``triton_nsr::mix`` (routing (B, k, d), bank (k, d, F)) -> (B, d, F)
- ``triton_nsr::per_sample_conv2d`` (input, per-sample weight, per-sample bias, ...) -> output
"""

from __future__ import annotations

from typing import NoReturn

import torch
from torch import Tensor
from torch.autograd import forward_ad

from triton_nsr.arguments import ConvGeometry, conv_output_size
from triton_nsr.functional import forget_known_calls
from triton_nsr.kernels.autotune import dot_precision, on_clear_launch_plans
from triton_nsr.kernels.conv import conv_fwd, empty_like_layout
from triton_nsr.kernels.conv_bwd_input import conv_bwd_input
from triton_nsr.kernels.conv_bwd_weight import conv_bwd_weight
from triton_nsr.kernels.mix import mix_bwd, mix_fwd
from triton_nsr.kernels.operands import (
    copy_helps_for,
    empty_packed_input_grad_weight,
    empty_packed_storage,
)
from triton_nsr.kernels.router import routing_dtype
from triton_nsr.layer import LayerPlan, layer_plan, weight_read_in_place

# ----------------------------------------------------------------------------- mixing


@torch.library.custom_op("triton_nsr::mix", mutates_args=())
def mix(routing: Tensor, bank: Tensor) -> Tensor:
    """mixed[b, c, f] = sum_j routing[b, j, c] * bank[j, c, f].

    Shapes: routing (B, k, d), bank (k, d, F) -> mixed (B, d, F).
    """
    return mix_fwd(routing, bank)[0]


@mix.register_fake
def _mix_fake(routing: Tensor, bank: Tensor) -> Tensor:
    return bank.new_empty((routing.shape[0], bank.shape[1], bank.shape[2]))


@torch.library.custom_op("triton_nsr::mix_backward", mutates_args=())
def mix_backward(grad: Tensor, routing: Tensor, bank: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`mix` for routing (B, k, d) and bank (k, d, F), given grad (B, d, F)."""
    routing_parts, grad_bank, _ = mix_bwd(grad.unsqueeze(0), None, routing, bank)
    return routing_parts.sum(0), grad_bank


@mix_backward.register_fake
def _mix_backward_fake(grad: Tensor, routing: Tensor, bank: Tensor) -> tuple[Tensor, Tensor]:
    return (torch.empty_like(routing, memory_format=torch.contiguous_format),
            torch.empty_like(bank, memory_format=torch.contiguous_format))


def _mix_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


UNSUPPORTED = ("nsr_conv2d(backend='triton') supports reverse-mode autograd only (one "
               "backward); {what} is not implemented on the Triton path: use backend='torch', "
               "which supports it")


def refuse(what: str) -> NoReturn:
    """Raise NotImplementedError naming what the Triton path cannot do, and what can."""
    raise NotImplementedError(UNSUPPORTED.format(what=what))


def refuse_double_backward() -> None:
    """The backward kernels have no autograd of their own: refuse create_graph=True at the first
    backward, rather than fail at the second one."""
    if torch.is_grad_enabled():
        refuse("double backward (create_graph=True)")


def _mix_grad(ctx, grad: Tensor):
    refuse_double_backward()
    routing, bank = ctx.saved_tensors
    return mix_backward(grad, routing, bank)


mix.register_autograd(_mix_grad, setup_context=_mix_setup)


def mix_kernels(
    routing: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Per-sample kernels from the k banks, with Triton.

    Args:
        routing: (B, k, d) softmax weights.
        weight: (k*out, Cg, kh, kw), rows ordered (k, d, out/d). bias: (k*out,) or None.

    Returns:
        weight_b (B, out, Cg, kh, kw) and bias_b (B, out) or None.

    Example:
        >>> s = torch.softmax(torch.randn(2, 4, 16), dim=1).cuda()
        >>> w_b, b_b = mix_kernels(s, torch.randn(512, 32, 3, 3).cuda(), torch.randn(512).cuda())
        >>> w_b.shape, b_b.shape
        (torch.Size([2, 128, 32, 3, 3]), torch.Size([2, 128]))
    """
    batch, k, d = routing.shape
    out_channels = weight.shape[0] // k
    weight_b = mix(routing, weight.reshape(k, d, -1))
    weight_b = weight_b.view(batch, out_channels, *weight.shape[1:])
    if bias is None:
        return weight_b, None
    bias_b = mix(routing, bias.reshape(k, d, -1)).view(batch, out_channels)
    return weight_b, bias_b


# ----------------------------------------------------------------------------- convolution


@torch.library.custom_op("triton_nsr::per_sample_conv2d", mutates_args=())
def per_sample_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    pad: list[int],
    dilation: list[int],
    groups: int,
    allow_tf32: bool,
) -> Tensor:
    """Convolve each sample with its own kernel, with Triton.

    Args:
        input: (B, C, H, W), any layout. weight: (B, out, C/groups, kh, kw). bias: (B, out) or None.
        stride, dilation: (h, w). pad: zero padding (top, bottom, left, right).
        allow_tf32: let float32 products use TF32 (pass torch.backends.cudnn.allow_tf32).

    Returns:
        (B, out, Ho, Wo), channels_last when the input is.
    """
    return conv_fwd(input, weight, bias, tuple(stride), tuple(pad), tuple(dilation), groups,
                    allow_tf32)


@per_sample_conv2d.register_fake
def _per_sample_conv2d_fake(input, weight, bias, stride, pad, dilation, groups, allow_tf32):
    out_h, out_w = conv_output_size(tuple(input.shape[2:]), tuple(weight.shape[3:]), stride,
                                    pad, dilation)
    return empty_like_layout(input, (input.shape[0], weight.shape[1], out_h, out_w))


def _backward_buffers(grad_output, input, weight, output_mask):
    """Gradient tensors, empty (0 elements) where output_mask says they are not needed."""
    need_input, need_weight, need_bias = output_mask
    grad_input = (torch.empty_like(input) if need_input else input.new_empty(0))
    grad_weight = (torch.empty_like(weight, memory_format=torch.contiguous_format)
                   if need_weight or need_bias else weight.new_empty(0))
    grad_bias = (weight.new_empty(weight.shape[:2]) if need_bias else weight.new_empty(0))
    return grad_input, grad_weight, grad_bias


@torch.library.custom_op("triton_nsr::per_sample_conv2d_backward", mutates_args=())
def per_sample_conv2d_backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    stride: list[int],
    pad: list[int],
    dilation: list[int],
    groups: int,
    allow_tf32: bool,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`per_sample_conv2d` for (input, weight, bias); unneeded ones are empty.

    Args:
        grad_output: (B, out, Ho, Wo). input: (B, C, H, W). weight: (B, out, C/groups, kh, kw).
        output_mask: which of (input, weight, bias) need a gradient.

    Returns:
        grad_input (B, C, H, W), grad_weight (B, out, Cg, kh, kw), grad_bias (B, out).
    """
    grad_input, grad_weight, grad_bias = _backward_buffers(grad_output, input, weight, output_mask)
    stride, pad, dilation = tuple(stride), tuple(pad), tuple(dilation)
    if grad_output.numel() == 0:
        return grad_input.zero_(), grad_weight.zero_(), grad_bias.zero_()
    if output_mask[0]:
        conv_bwd_input(grad_output, weight, stride, pad, dilation, groups, allow_tf32,
                       grad_input)
    if grad_weight.numel():
        conv_bwd_weight(grad_output, input, tuple(weight.shape[3:]), stride, pad, dilation, groups,
                        allow_tf32, grad_weight, grad_bias if output_mask[2] else None)
    return grad_input, grad_weight, grad_bias


@per_sample_conv2d_backward.register_fake
def _per_sample_conv2d_backward_fake(grad_output, input, weight, stride, pad, dilation, groups,
                                     allow_tf32, output_mask):
    return _backward_buffers(grad_output, input, weight, output_mask)


def _conv_setup(ctx, inputs, output) -> None:
    input, weight, bias, stride, pad, dilation, groups, allow_tf32 = inputs
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.conv_args = (stride, pad, dilation, groups, allow_tf32)


def _conv_grad(ctx, grad_output: Tensor):
    refuse_double_backward()
    input, weight = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    mask = [need_input, need_weight, need_bias and ctx.has_bias]
    grad_input, grad_weight, grad_bias = per_sample_conv2d_backward(
        grad_output, input, weight, *ctx.conv_args, mask
    )
    return (
        grad_input if mask[0] else None,
        grad_weight if mask[1] else None,
        grad_bias if mask[2] else None,
        None, None, None, None, None,
    )


per_sample_conv2d.register_autograd(_conv_grad, setup_context=_conv_setup)


# ----------------------------------------------------------------------------- the layer

# nsr_conv2d keeps each known call's LayerPlan: forgotten when the plans are.
on_clear_launch_plans(forget_known_calls)

def _input_gradients(ctx, input, grad_conv_input, mean_grad):
    """(grad of input, grad of padded) from the convolution's input gradient and mean_grad."""
    if not ctx.has_padded:
        return grad_conv_input, None
    grad_input = None
    if ctx.needs_input_grad[0]:
        # Non-zero padding modes: the convolution's gradient goes back through F.pad's autograd;
        # the mean's is the same value at every pixel, an expanded (B, C, 1, 1) view.
        grad_input = mean_grad.to(input.dtype)[:, :, None, None].expand(input.shape)
    return grad_input, grad_conv_input


def _save(ctx, input, padded, weight, bias, mlp_weight, mlp_bias, saved) -> None:
    """Save what the backward reads: the forward's channels_last copy of the input, when it
    made one, in place of the input (same values, and what the kernel gradient reads best:
    one x-sized tensor either way)."""
    routing, pooled, weights, weights_input_grad, input_copy = saved
    copied = input_copy is not None and input_copy.numel() > 0
    ctx.save_for_backward(input_copy if copied else input, padded, weight, bias, mlp_weight,
                          routing, pooled, weights,
                          weights_input_grad if weights_input_grad is not None
                          and weights_input_grad.numel() else None)
    ctx.input_is_copy = copied
    ctx.has_padded = padded is not None
    ctx.has_mlp_bias = mlp_bias is not None


def _output_mask(ctx) -> tuple[bool, ...]:
    return tuple(map(bool, ctx.needs_input_grad[:6]))


class NSRLayerFunction(torch.autograd.Function):
    """The layer in eager mode: its LayerPlan's forward and backward called directly.

    Refuses what it cannot do at the first call, naming it: double backward (the backward is
    not differentiable), forward-mode AD, and the torch.func transforms (:func:`nsr_layer`).
    """

    @staticmethod
    def forward(ctx, input, padded, weight, bias, mlp_weight, mlp_bias, plan, temperature):
        output, *saved = plan.forward(input, padded, weight, bias, mlp_weight, mlp_bias,
                                      temperature)
        _save(ctx, input, padded, weight, bias, mlp_weight, mlp_bias, saved)
        ctx.plan, ctx.temperature = plan, temperature
        return output

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward()
        (input, padded, weight, bias, mlp_weight, routing, pooled, weights,
         weights_input_grad) = ctx.saved_tensors
        grad_conv_input, mean_grad, *param_grads = ctx.plan.backward(
            grad_output, input, padded, weight, bias, mlp_weight, ctx.has_mlp_bias, routing,
            pooled, weights, weights_input_grad, ctx.temperature, _output_mask(ctx),
            ctx.input_is_copy)
        return (*_input_gradients(ctx, input, grad_conv_input, mean_grad), *param_grads,
                None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        refuse("forward-mode AD (jvp)")


class _TracedLayerFunction(torch.autograd.Function):
    """The layer under torch.compile: the same LayerPlan halves as the opaque custom ops below,
    saving what the eager Function saves (the input's channels_last copy, the TF32 input
    gradient's layout of the kernels)."""

    @staticmethod
    def forward(ctx, input, padded, weight, bias, mlp_weight, mlp_bias, *static):
        input_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        output, *saved = nsr_layer_op(input, padded, weight, bias, mlp_weight, mlp_bias,
                                      *static, input_grad)
        _save(ctx, input, padded, weight, bias, mlp_weight, mlp_bias, saved)
        ctx.static = static
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (input, padded, weight, bias, mlp_weight, routing, pooled, weights,
         weights_input_grad) = ctx.saved_tensors
        grads = nsr_layer_backward_op(
            grad_output, input, padded, weight, bias, mlp_weight, ctx.has_mlp_bias, routing,
            pooled, weights, weights_input_grad, *ctx.static, list(_output_mask(ctx)),
            ctx.input_is_copy)
        grad_conv_input, mean_grad, *param_grads = (
            g if needed else None for g, needed in zip(grads, _gradient_present(ctx)))
        return (*_input_gradients(ctx, input, grad_conv_input, mean_grad), *param_grads,
                *([None] * len(ctx.static)))


def _gradient_present(ctx) -> list[bool]:
    """Which of the backward op's six results hold a gradient (the others have 0 elements)."""
    need_input, need_padded, need_weight, need_bias, need_mlp_weight, need_mlp_bias = \
        _output_mask(ctx)
    return [(need_input and not ctx.has_padded) or need_padded,
            need_input or need_mlp_weight or need_mlp_bias,
            need_weight, need_bias, need_mlp_weight, need_mlp_bias and ctx.has_mlp_bias]


def nsr_layer(input: Tensor, padded: Tensor | None, weight: Tensor, bias: Tensor | None,
              mlp_weight: Tensor, mlp_bias: Tensor | None, geometry: ConvGeometry,
              temperature: float, pad: tuple[int, int, int, int], allow_tf32: bool) -> Tensor:
    """The NSR layer on the Triton kernels, differentiable once (reverse mode).

    Args:
        input: (B, C, H, W), the unpadded input the router averages (autocast's dtype).
        padded: input after a non-zero padding mode's F.pad, which the convolution reads; None
            for zero padding (the convolution reads ``input`` and pads by masking).
        weight (k*out, Cg, kh, kw), bias (k*out,) or None, mlp_weight (k*d, C), mlp_bias
            (k*d,) or None: read in their own dtype (float32 parameters stay float32 under
            autocast: no cast kernels).
        geometry: the checked geometry (triton_nsr.arguments.check_nsr_conv2d).
        pad: the zero padding (top, bottom, left, right) the convolution applies.
        allow_tf32: let float32 products use TF32 (functional.conv_allows_tf32()).

    Returns:
        (B, out, Ho, Wo) in input's dtype, channels_last when the convolution's input is.
    """
    if torch.compiler.is_compiling():
        return _TracedLayerFunction.apply(
            input, padded, weight, bias, mlp_weight, mlp_bias, geometry.num_sparsity_groups,
            geometry.num_sparsity_cardinals, temperature, list(geometry.stride), list(pad),
            list(geometry.dilation), geometry.groups, allow_tf32)
    if torch._C._are_functorch_transforms_active():
        refuse("torch.func (vmap, grad, jacrev, jvp, functional_call under a transform)")
    input_grad = torch.is_grad_enabled() and (
        input.requires_grad or (padded is not None and padded.requires_grad))
    plan = layer_plan_for(input, padded, weight, bias, mlp_weight, mlp_bias, geometry, pad,
                          allow_tf32, input_grad)
    return run_layer_plan(plan, input, padded, weight, bias, mlp_weight, mlp_bias, temperature)


def run_layer_plan(plan: LayerPlan, input: Tensor, padded: Tensor | None, weight: Tensor,
                   bias: Tensor | None, mlp_weight: Tensor, mlp_bias: Tensor | None,
                   temperature: float) -> Tensor:
    """:func:`nsr_layer` of a call whose plan is known, outside torch.compile and torch.func
    transforms (the caller checked both): the eager Function, or the bare forward."""
    if torch.is_grad_enabled() or forward_ad._current_level >= 0:
        return NSRLayerFunction.apply(input, padded, weight, bias, mlp_weight, mlp_bias, plan,
                                      temperature)
    # Inference (no_grad, inference_mode): nothing to save, so no Function around the launches.
    return plan.forward(input, padded, weight, bias, mlp_weight, mlp_bias, temperature)[0]


def layer_plan_for(input: Tensor, padded: Tensor | None, weight: Tensor, bias: Tensor | None,
                   mlp_weight: Tensor, mlp_bias: Tensor | None, geometry: ConvGeometry,
                   pad: tuple[int, int, int, int], allow_tf32: bool,
                   input_grad: bool) -> LayerPlan:
    """The LayerPlan of a call of :func:`nsr_layer` (its arguments, and whether the
    convolution's input gradient is wanted)."""
    return layer_plan(input, padded, weight, bias, mlp_weight, mlp_bias,
                      geometry.num_sparsity_groups, geometry.num_sparsity_cardinals,
                      geometry.stride, pad, geometry.dilation, geometry.groups, allow_tf32,
                      input_grad)


def _plan_of(input, padded, weight, bias, mlp_weight, mlp_bias, num_groups, num_cardinals,
             stride, pad, dilation, groups, allow_tf32, input_grad):
    return layer_plan(input, padded, weight, bias, mlp_weight, mlp_bias, num_groups,
                      num_cardinals, tuple(stride), tuple(pad), tuple(dilation), groups,
                      allow_tf32, input_grad)


@torch.library.custom_op("triton_nsr::nsr_layer", mutates_args=())
def nsr_layer_op(
    input: Tensor, padded: Tensor | None, weight: Tensor, bias: Tensor | None,
    mlp_weight: Tensor, mlp_bias: Tensor | None, num_groups: int, num_cardinals: int,
    temperature: float, stride: list[int], pad: list[int], dilation: list[int], groups: int,
    allow_tf32: bool, input_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The layer's forward as one op: (output, routing, pooled, the mixed kernels' packed
    storage, their TF32 input-gradient layout, the input's channels_last copy), the last two
    with 0 elements where the layer makes none. Shapes as LayerPlan.forward's."""
    output, routing, pooled, weights, weights_input_grad, input_copy = _plan_of(
        input, padded, weight, bias, mlp_weight, mlp_bias, num_groups, num_cardinals, stride,
        pad, dilation, groups, allow_tf32, input_grad).forward(
            input, padded, weight, bias, mlp_weight, mlp_bias, temperature)
    return (output, routing, pooled, weights,
            weights_input_grad if weights_input_grad is not None else input.new_empty(0),
            input_copy if input_copy is not None else input.new_empty(0))


@nsr_layer_op.register_fake
def _nsr_layer_fake(input, padded, weight, bias, mlp_weight, mlp_bias, num_groups,
                    num_cardinals, temperature, stride, pad, dilation, groups, allow_tf32,
                    input_grad):
    conv_input = input if padded is None else padded
    batch, channels = input.shape[:2]
    out_channels = weight.shape[0] // num_groups
    out_size = conv_output_size(tuple(conv_input.shape[2:]), tuple(weight.shape[2:]), stride,
                                pad, dilation)
    dtype = routing_dtype(input.dtype)
    kernel_shape = (batch, out_channels, *weight.shape[1:])
    copy = padded is None and _copy_decided_statically(input, groups, stride, pad, dilation,
                                                       tuple(weight.shape[2:]))
    tf32 = input_grad and dot_precision(input.dtype, allow_tf32) == "tf32"
    output = (input.new_empty((batch, out_channels, *out_size)) if copy
              else empty_like_layout(conv_input, (batch, out_channels, *out_size)))
    return (output,
            input.new_empty((batch, num_groups, num_cardinals), dtype=dtype),
            input.new_empty((batch, channels), dtype=dtype),
            empty_packed_storage(kernel_shape, input.dtype, input.device),
            (empty_packed_input_grad_weight(kernel_shape, groups, input.dtype, input.device)
             if tf32 else input.new_empty(0)),
            (torch.empty_like(input, memory_format=torch.channels_last) if copy
             else input.new_empty(0)))


def _copy_decided_statically(input, groups, stride, pad, dilation, kernel_size) -> bool:
    """LayerPlan's copy decision from the input's shape and strides (the batch, symbolic
    under torch.compile, does not enter it)."""
    shape = (1, *(int(size) for size in input.shape[1:]))
    strides = tuple(int(step) for step in input.stride())
    return copy_helps_for(shape, strides, input.dtype, shape[1] // groups, tuple(stride),
                          tuple(pad), tuple(dilation), tuple(int(size) for size in kernel_size))


@torch.library.custom_op("triton_nsr::nsr_layer_backward", mutates_args=())
def nsr_layer_backward_op(
    grad_output: Tensor, input: Tensor, padded: Tensor | None, weight: Tensor,
    bias: Tensor | None, mlp_weight: Tensor, has_mlp_bias: bool, routing: Tensor,
    pooled: Tensor, weights: Tensor, weights_input_grad: Tensor | None, num_groups: int,
    num_cardinals: int, temperature: float, stride: list[int], pad: list[int],
    dilation: list[int], groups: int, allow_tf32: bool, output_mask: list[bool],
    input_is_copy: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The layer's backward as one op; results as LayerPlan.backward's, with 0-element tensors
    for the gradients not computed."""
    plan = _plan_of(input, padded, weight, bias, mlp_weight, None, num_groups, num_cardinals,
                    stride, pad, dilation, groups, allow_tf32, True)
    grads = plan.backward(grad_output, input, padded, weight, bias, mlp_weight, has_mlp_bias,
                          routing, pooled, weights, weights_input_grad, temperature,
                          tuple(output_mask), input_is_copy)
    return tuple(g if g is not None else input.new_empty(0) for g in grads)


@nsr_layer_backward_op.register_fake
def _nsr_layer_backward_fake(grad_output, input, padded, weight, bias, mlp_weight, has_mlp_bias,
                             routing, pooled, weights, weights_input_grad, num_groups,
                             num_cardinals, temperature, stride, pad, dilation, groups,
                             allow_tf32, output_mask, input_is_copy):
    need_input, need_padded, need_weight, need_bias, need_mlp_weight, need_mlp_bias = \
        output_mask
    conv_input = input if padded is None else padded
    need_routing = need_input or need_mlp_weight or need_mlp_bias

    def empty_unless(needed, like, shape=None):
        if not needed:
            return input.new_empty(0)
        return like.new_empty(like.shape if shape is None else shape)

    # The weight's gradient in its strides where the mixing reads it in place (LayerPlan).
    in_place = weight_read_in_place(weight, num_groups, num_cardinals)
    return (
        (torch.empty_like(conv_input, memory_format=torch.contiguous_format) if input_is_copy
         else torch.empty_like(conv_input))
        if (need_input and padded is None) or need_padded else input.new_empty(0),
        empty_unless(need_routing, pooled),
        (weight.new_empty_strided(weight.shape, weight.stride()) if need_weight and in_place
         else empty_unless(need_weight, weight)),
        empty_unless(need_bias and bias is not None, weight, (weight.shape[0],)),
        empty_unless(need_mlp_weight, mlp_weight),
        empty_unless(need_mlp_bias and has_mlp_bias, mlp_weight, (mlp_weight.shape[0],)),
    )
