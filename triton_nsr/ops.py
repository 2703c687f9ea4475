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
from triton_nsr.kernels.autotune import dot_precision
from triton_nsr.kernels.conv import conv_fwd, empty_like_layout
from triton_nsr.kernels.conv_bwd_input import conv_bwd_input
from triton_nsr.kernels.conv_bwd_weight import conv_bwd_weight
from triton_nsr.kernels.mix import mix_bwd, mix_fwd, route_and_mix
from triton_nsr.kernels.operands import channels_last_copy_helps, empty_packed_forward_weight
from triton_nsr.kernels.router import router_bwd, router_pool, routing_dtype

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

def _layer_forward(input, padded, weight, bias, mlp_weight, mlp_bias, num_groups,
                   num_cardinals, temperature, stride, pad, dilation, groups, allow_tf32,
                   input_grad_weight=False):
    """Three launches: pool (and copy an NCHW input to channels_last where that gives the
    convolution TMA boxes), route and mix weight and bias, convolve.

    Returns (output (B, out, Ho, Wo), routing (B, k, d), pooled (B, C), weight_b
    (B, out, Cg, kh, kw), bias_b (B, out) or None, weight_b_input_grad, input_copy); the middle
    four are what the backward needs. With ``input_grad_weight`` and TF32, the mixing also
    writes weight_b in the layout the TF32 input gradient reads (else None: it reads weight_b).
    input_copy is the channels_last copy of input the convolution read, or None.
    """
    batch = input.shape[0]
    out_channels = weight.shape[0] // num_groups
    # The pooling's chunks fill the GPU even at batch 1; the mixing kernel finishes the router
    # (MLP, temperature, softmax) for the samples and cardinal each of its programs mixes.
    # An NCHW input that TMA cannot box at tap-shifted columns is copied to channels_last on
    # the pooling's pass, and the convolution reads the copy (its output stays NCHW).
    copy = padded is None and channels_last_copy_helps(
        input, input.shape[1] // groups, stride, pad, dilation, weight.shape[2:])
    partials, channels_last = router_pool(input, copy)
    # weight_b comes in the convolution's packed layout: conv_fwd reads it without a copy.
    tf32_input_grad = input_grad_weight and dot_precision(input.dtype, allow_tf32) == "tf32"
    weight_b, bias_b, weight_b_input_grad, routing, pooled = route_and_mix(
        partials, input.shape[2] * input.shape[3], mlp_weight, mlp_bias, num_cardinals,
        temperature, weight.reshape(num_groups, num_cardinals, -1),
        None if bias is None else bias.reshape(num_groups, num_cardinals, -1), input.dtype,
        (out_channels, *weight.shape[1:]), groups if tf32_input_grad else None)
    if bias_b is not None:
        bias_b = bias_b.view(batch, out_channels)
    if copy:
        output = conv_fwd(channels_last, weight_b, bias_b, stride, pad, dilation, groups,
                          allow_tf32, torch.contiguous_format)
    else:
        output = conv_fwd(input if padded is None else padded, weight_b, bias_b, stride, pad,
                          dilation, groups, allow_tf32)
    return output, routing, pooled, weight_b, bias_b, weight_b_input_grad, channels_last


def _layer_backward(grad_output, input, padded, weight, bias, mlp_weight, has_mlp_bias,
                    routing, pooled, weight_b, num_groups, num_cardinals, temperature, stride,
                    pad, dilation, groups, allow_tf32, output_mask, weight_b_input_grad=None,
                    input_is_copy=False):
    """At most four launches, in the order each one's inputs become ready.

    ``output_mask`` says which of (input, padded, weight, bias, mlp_weight, mlp_bias) need a
    gradient; ``weight_b_input_grad`` is the forward's TF32 input-gradient layout of weight_b,
    or None (conv_bwd_input then packs one if the precision wants it). With ``input_is_copy``
    ``input`` is the forward's channels_last copy of an NCHW input (the kernel gradient reads
    it without tap-shifted 2-byte loads) and the input's gradient is made NCHW.

    Returns (grad of the convolution's input, mean_grad (B, C), grad_weight, grad_bias,
    grad_mlp_weight, grad_mlp_bias), None where not needed. Without ``padded``
    (zero padding) the convolution's input is ``input`` and its gradient already holds the
    mean's; with it, the caller spreads mean_grad over the pixels of ``input``.
    """
    need_input, need_padded, need_weight, need_bias, need_mlp_weight, need_mlp_bias = \
        output_mask
    conv_input = input if padded is None else padded
    batch, out_channels = weight_b.shape[:2]
    if batch == 0:
        return _zero_gradients(input, padded, weight, bias, mlp_weight, has_mlp_bias,
                               output_mask)
    need_routing = need_input or need_mlp_weight or need_mlp_bias
    need_banks = need_weight or need_bias
    grad_weight = grad_bias = mean_grad = grad_mlp_weight = grad_mlp_bias = None
    need_conv_input = (need_input and padded is None) or need_padded
    grad_output_copy = None
    if need_routing or need_banks:
        if need_conv_input and channels_last_copy_helps(
                grad_output, out_channels // groups, stride, pad, dilation,
                weight_b.shape[3:]):
            # The kernel gradient reads all of dy first: it also writes the channels_last copy
            # that the input gradient boxes with TMA (an NCHW dy cannot be boxed at its taps).
            grad_output_copy = torch.empty_like(grad_output, memory_format=torch.channels_last)
        # The kernel gradient as S pixel-split partial sums (S = 1 but for few large images);
        # the mixing backward adds them as it reads them.
        weight_parts, bias_parts = conv_bwd_weight(
            grad_output, conv_input, tuple(weight_b.shape[3:]), stride, pad, dilation, groups,
            allow_tf32, weight_b.new_empty(weight_b.shape),
            None if bias is None else weight_b.new_empty((batch, out_channels)),
            sum_splits=False, grad_output_copy=grad_output_copy)
        splits = weight_parts.shape[0]
        routing_parts, grad_weight, grad_bias = mix_bwd(
            weight_parts.view(splits, batch, num_cardinals, -1),
            None if bias is None else bias_parts.view(splits, batch, num_cardinals, -1),
            routing, weight.reshape(num_groups, num_cardinals, -1),
            None if bias is None else bias.reshape(num_groups, num_cardinals, -1),
            need_banks=need_banks, need_routing=need_routing)
        if need_routing:
            pixels = input.shape[2] * input.shape[3]
            mean_grad, grad_mlp_weight, grad_mlp_bias = router_bwd(
                routing_parts, routing, pooled, mlp_weight, has_mlp_bias, temperature, pixels)
    grad_conv_input = None
    if need_conv_input:
        grad_conv_input = conv_bwd_input(
            grad_output if grad_output_copy is None else grad_output_copy, weight_b, stride,
            pad, dilation, groups, allow_tf32,
            torch.empty_like(conv_input, memory_format=torch.contiguous_format)
            if input_is_copy else torch.empty_like(conv_input),
            mean_grad if padded is None else None,
            weight_b_input_grad)
    return (grad_conv_input, mean_grad,
            None if grad_weight is None else grad_weight.view(weight.shape),
            None if grad_bias is None else grad_bias.view(bias.shape),
            grad_mlp_weight, grad_mlp_bias)


def _zero_gradients(input, padded, weight, bias, mlp_weight, has_mlp_bias, output_mask):
    """The gradients of a layer call on an empty batch: zeros (an empty input gets none)."""
    need_input, need_padded, need_weight, need_bias, need_mlp_weight, need_mlp_bias = \
        output_mask
    conv_input = input if padded is None else padded
    return (
        torch.zeros_like(conv_input) if need_input or need_padded else None,
        input.new_zeros(input.shape[:2], dtype=routing_dtype(input.dtype)),
        torch.zeros_like(weight) if need_weight else None,
        torch.zeros_like(bias) if need_bias else None,
        torch.zeros_like(mlp_weight) if need_mlp_weight else None,
        mlp_weight.new_zeros(mlp_weight.shape[0]) if need_mlp_bias and has_mlp_bias else None,
    )


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


def _save(ctx, args, routing, pooled, weight_b, weight_b_input_grad=None,
          input_copy=None) -> None:
    """Save what the backward reads; the forward's channels_last copy of the input, when it
    made one, in place of the input (same values, and it is what the kernel gradient reads
    best: one x-sized tensor either way)."""
    (input, padded, weight, bias, mlp_weight, mlp_bias, *static) = args
    ctx.save_for_backward(input if input_copy is None else input_copy, padded, weight, bias,
                          mlp_weight, routing, pooled, weight_b, weight_b_input_grad)
    ctx.input_is_copy = input_copy is not None
    ctx.has_padded = padded is not None
    ctx.has_mlp_bias = mlp_bias is not None
    ctx.static = static


def _output_mask(ctx) -> list[bool]:
    return [bool(need) for need in ctx.needs_input_grad[:6]]


class NSRLayerFunction(torch.autograd.Function):
    """The layer in eager mode: the forward and backward halves called directly (no dispatch).

    Refuses what it cannot do at the first call, naming it: double backward (the backward is
    not differentiable), forward-mode AD, and the torch.func transforms (:func:`nsr_layer`).
    """

    @staticmethod
    def forward(ctx, *args):
        # The convolution's input gradient is wanted (of input, or of its padded copy).
        input_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        output, routing, pooled, weight_b, _, weight_b_input_grad, input_copy = _layer_forward(
            *args, input_grad_weight=input_grad)
        _save(ctx, args, routing, pooled, weight_b, weight_b_input_grad, input_copy)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward()
        (input, padded, weight, bias, mlp_weight, routing, pooled, weight_b,
         weight_b_input_grad) = ctx.saved_tensors
        grad_conv_input, mean_grad, *param_grads = _layer_backward(
            grad_output, input, padded, weight, bias, mlp_weight, ctx.has_mlp_bias, routing,
            pooled, weight_b, *ctx.static, _output_mask(ctx), weight_b_input_grad,
            ctx.input_is_copy)
        return (*_input_gradients(ctx, input, grad_conv_input, mean_grad), *param_grads,
                *([None] * len(ctx.static)))

    @staticmethod
    def jvp(ctx, *tangents):
        refuse("forward-mode AD (jvp)")


class _TracedLayerFunction(torch.autograd.Function):
    """The layer under torch.compile: the same halves as the opaque custom ops below."""

    @staticmethod
    def forward(ctx, *args):
        output, routing, pooled, weight_b, _ = nsr_layer_op(*args)
        _save(ctx, args, routing, pooled, weight_b)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        input, padded, weight, bias, mlp_weight, routing, pooled, weight_b, _ = ctx.saved_tensors
        grads = nsr_layer_backward_op(
            grad_output, input, padded, weight, bias, mlp_weight, ctx.has_mlp_bias, routing,
            pooled, weight_b, *ctx.static, _output_mask(ctx))
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
    args = (input, padded, weight, bias, mlp_weight, mlp_bias, geometry.num_sparsity_groups,
            geometry.num_sparsity_cardinals, temperature, list(geometry.stride), list(pad),
            list(geometry.dilation), geometry.groups, allow_tf32)
    if torch.compiler.is_compiling():
        return _TracedLayerFunction.apply(*args)
    if torch._C._are_functorch_transforms_active():
        refuse("torch.func (vmap, grad, jacrev, jvp, functional_call under a transform)")
    if torch.is_grad_enabled() or forward_ad._current_level >= 0:
        return NSRLayerFunction.apply(*args)
    # Inference (no_grad, inference_mode): nothing to save, so no Function around the launches.
    return _layer_forward(*args)[0]


@torch.library.custom_op("triton_nsr::nsr_layer", mutates_args=())
def nsr_layer_op(
    input: Tensor, padded: Tensor | None, weight: Tensor, bias: Tensor | None,
    mlp_weight: Tensor, mlp_bias: Tensor | None, num_groups: int, num_cardinals: int,
    temperature: float, stride: list[int], pad: list[int], dilation: list[int], groups: int,
    allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The layer's forward as one op: (output, routing, pooled, weight_b, bias_b).

    bias_b has 0 elements without a bias. Shapes as :func:`nsr_layer` and ``_layer_forward``.
    """
    output, routing, pooled, weight_b, bias_b, *_ = _layer_forward(
        input, padded, weight, bias, mlp_weight, mlp_bias, num_groups, num_cardinals,
        temperature, stride, pad, dilation, groups, allow_tf32)
    return (output, routing, pooled, weight_b,
            bias_b if bias_b is not None else weight_b.new_empty(0))


@nsr_layer_op.register_fake
def _nsr_layer_fake(input, padded, weight, bias, mlp_weight, mlp_bias, num_groups,
                    num_cardinals, temperature, stride, pad, dilation, groups, allow_tf32):
    conv_input = input if padded is None else padded
    batch, channels = input.shape[:2]
    out_channels = weight.shape[0] // num_groups
    out_size = conv_output_size(tuple(conv_input.shape[2:]), tuple(weight.shape[2:]), stride,
                                pad, dilation)
    dtype = routing_dtype(input.dtype)
    return (empty_like_layout(conv_input, (batch, out_channels, *out_size)),
            input.new_empty((batch, num_groups, num_cardinals), dtype=dtype),
            input.new_empty((batch, channels), dtype=dtype),
            empty_packed_forward_weight((batch, out_channels, *weight.shape[1:]), input.dtype,
                                        input.device),
            input.new_empty((batch, out_channels) if bias is not None else (0,)))


@torch.library.custom_op("triton_nsr::nsr_layer_backward", mutates_args=())
def nsr_layer_backward_op(
    grad_output: Tensor, input: Tensor, padded: Tensor | None, weight: Tensor,
    bias: Tensor | None, mlp_weight: Tensor, has_mlp_bias: bool, routing: Tensor,
    pooled: Tensor, weight_b: Tensor, num_groups: int, num_cardinals: int, temperature: float,
    stride: list[int], pad: list[int], dilation: list[int], groups: int, allow_tf32: bool,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The layer's backward as one op; results as ``_layer_backward``'s, with 0-element tensors
    for the gradients not computed."""
    grads = _layer_backward(grad_output, input, padded, weight, bias, mlp_weight, has_mlp_bias,
                            routing, pooled, weight_b, num_groups, num_cardinals, temperature,
                            stride, pad, dilation, groups, allow_tf32, output_mask)
    return tuple(g if g is not None else input.new_empty(0) for g in grads)


@nsr_layer_backward_op.register_fake
def _nsr_layer_backward_fake(grad_output, input, padded, weight, bias, mlp_weight, has_mlp_bias,
                             routing, pooled, weight_b, num_groups, num_cardinals, temperature,
                             stride, pad, dilation, groups, allow_tf32, output_mask):
    need_input, need_padded, need_weight, need_bias, need_mlp_weight, need_mlp_bias = \
        output_mask
    conv_input = input if padded is None else padded
    need_routing = need_input or need_mlp_weight or need_mlp_bias

    def empty_unless(needed, like, shape=None):
        if not needed:
            return input.new_empty(0)
        return like.new_empty(like.shape if shape is None else shape)

    return (
        torch.empty_like(conv_input) if (need_input and padded is None) or need_padded
        else input.new_empty(0),
        empty_unless(need_routing, pooled),
        empty_unless(need_weight, weight),
        empty_unless(need_bias and bias is not None, weight, (weight.shape[0],)),
        empty_unless(need_mlp_weight, mlp_weight),
        empty_unless(need_mlp_bias and has_mlp_bias, mlp_weight, (mlp_weight.shape[0],)),
    )
