"""The torch backend's per-sample convolution: one grouped convolution, opaque to the compiler.

Folding the batch into the channels turns B per-sample convolutions into one ``F.conv2d`` with
``groups = groups * B``: the paper's formulation, and on CPU as fast as anything torch offers
(docs/design.md measures the alternatives). Its one flaw is that the batch becomes an argument of
the convolution, so ``torch.compile`` specialises on it and recompiles for every batch size.

Here the forward and the backward are each a ``torch.library.custom_op`` whose fake
implementation derives its shapes from the inputs, so the compiler sees an opaque call with a
symbolic batch. An ``autograd.Function`` with ``setup_context`` ties them together and supplies
what a bare ``register_autograd`` cannot: forward-mode AD (``jvp``), ``vmap``, the ``torch.func``
transforms and double backward (the backward is itself such a Function, so every order of
derivative is again a forward or backward convolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from triton_nsr.arguments import conv_output_size


def _is_channels_last(tensor: Tensor) -> bool:
    """channels_last and not also plain contiguous (nn.Conv2d's rule for its output format)."""
    return (tensor.dim() == 4 and not tensor.is_contiguous()
            and tensor.is_contiguous(memory_format=torch.channels_last))


def _unflatten(tensor: Tensor, shape) -> Tensor:
    """Reshape a flat result for return. Not a view as autograd sees it: the callers modify op
    outputs in place (ReLU(inplace=True)), which autograd forbids on a Function's view outputs."""
    return torch.ops.aten._unsafe_view(tensor, shape)


def _output_like(input: Tensor, shape) -> Tensor:
    format = torch.channels_last if _is_channels_last(input) else torch.contiguous_format
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=format)


# ----------------------------------------------------------------------------- opaque ops


@torch.library.custom_op("triton_nsr::grouped_conv2d", mutates_args=())
def grouped_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """Convolve each sample with its own kernel as one grouped convolution.

    Args:
        input: (B, C, H, W), any layout. weight: (B, out, C/groups, kh, kw).
        bias: (B, out) or None. padding: symmetric zero padding (ph, pw).

    Returns:
        (B, out, Ho, Wo), channels_last when the input is (as nn.Conv2d).
    """
    batch, channels = input.shape[:2]
    out_channels = weight.shape[1]
    out_size = conv_output_size(tuple(input.shape[2:]), tuple(weight.shape[3:]), stride,
                                (padding[0], padding[0], padding[1], padding[1]), dilation)
    if batch == 0:
        return _output_like(input, (0, out_channels, *out_size))
    output = _unflatten(F.conv2d(
        input.reshape(1, batch * channels, *input.shape[2:]),
        weight.reshape(batch * out_channels, *weight.shape[2:]),
        None if bias is None else bias.reshape(-1),
        stride, padding, dilation, groups * batch,
    ), (batch, out_channels, *out_size))
    if _is_channels_last(input):
        return output.contiguous(memory_format=torch.channels_last)
    return output


@grouped_conv2d.register_fake
def _grouped_conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    out_size = conv_output_size(tuple(input.shape[2:]), tuple(weight.shape[3:]), stride,
                                (padding[0], padding[0], padding[1], padding[1]), dilation)
    return _output_like(input, (input.shape[0], weight.shape[1], *out_size))


def _gradient_buffers(input: Tensor, weight: Tensor, output_mask):
    """Zero gradients, or 0-element placeholders where ``output_mask`` asks for none."""
    need_input, need_weight, need_bias = output_mask
    return (
        torch.zeros_like(input) if need_input else input.new_empty(0),
        torch.zeros_like(weight) if need_weight else weight.new_empty(0),
        weight.new_zeros(weight.shape[:2]) if need_bias else weight.new_empty(0),
    )


@torch.library.custom_op("triton_nsr::grouped_conv2d_backward", mutates_args=())
def grouped_conv2d_backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`grouped_conv2d` for (input, weight, bias).

    Args:
        grad_output: (B, out, Ho, Wo). input: (B, C, H, W). weight: (B, out, C/groups, kh, kw).
        output_mask: which of (input, weight, bias) need a gradient; the others come back with
            0 elements.

    Returns:
        grad_input (B, C, H, W), grad_weight (B, out, C/groups, kh, kw), grad_bias (B, out).
    """
    batch, channels = input.shape[:2]
    out_channels = weight.shape[1]
    if batch == 0:
        return _gradient_buffers(input, weight, output_mask)
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_output.reshape(1, batch * out_channels, *grad_output.shape[2:]),
        input.reshape(1, batch * channels, *input.shape[2:]),
        weight.reshape(batch * out_channels, *weight.shape[2:]),
        [batch * out_channels] if output_mask[2] else None,
        stride, padding, dilation, False, [0, 0], groups * batch, output_mask,
    )
    return (
        _unflatten(grad_input, input.shape) if output_mask[0] else input.new_empty(0),
        _unflatten(grad_weight, weight.shape) if output_mask[1] else weight.new_empty(0),
        _unflatten(grad_bias, (batch, out_channels)) if output_mask[2] else weight.new_empty(0),
    )


@grouped_conv2d_backward.register_fake
def _grouped_conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups,
                                  output_mask):
    need_input, need_weight, need_bias = output_mask
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format) if need_input
        else input.new_empty(0),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight
        else weight.new_empty(0),
        weight.new_empty(weight.shape[:2]) if need_bias else weight.new_empty(0),
    )


# ----------------------------------------------------------------------------- autograd


def _forward(*args) -> Tensor:
    """The differentiable forward: with jvp and vmap in eager mode; without them when
    torch.compile traces (Dynamo refuses an autograd.Function with a custom jvp)."""
    if torch.compiler.is_compiling():
        return _TracedConv2d.apply(*args)
    return PerSampleConv2d.apply(*args)


def _backward(*args) -> tuple[Tensor, Tensor, Tensor]:
    """The differentiable backward, chosen like :func:`_forward`."""
    if torch.compiler.is_compiling():
        return _TracedConv2dBackward.apply(*args)
    return PerSampleConv2dBackward.apply(*args)


class _TracedConv2d(torch.autograd.Function):
    """y = per-sample conv(x, w_b) + bias_b with reverse-mode AD to any order."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        return grouped_conv2d(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.output_shape = output.shape

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        mask = (need_input, need_weight, need_bias and ctx.has_bias)
        grads = _backward(grad_output, input, weight, *ctx.geometry, mask)
        return (*(g if needed else None for g, needed in zip(grads, mask)),
                None, None, None, None)


class _TracedConv2dBackward(torch.autograd.Function):
    """(grad_input, grad_weight, grad_bias) of the per-sample conv, itself differentiable.

    grad_input is bilinear in (grad_output, weight), grad_weight in (grad_output, input), and
    grad_bias linear in grad_output, so their derivatives are forward and backward convolutions
    again (see docs/design.md). Unrequested gradients are 0-element, non-differentiable outputs.
    """

    @staticmethod
    def forward(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
        return grouped_conv2d_backward(grad_output, input, weight, stride, padding, dilation,
                                       groups, list(output_mask))

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, input, weight, stride, padding, dilation, groups, output_mask = inputs
        ctx.save_for_backward(grad_output, input, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.output_mask = tuple(output_mask)
        ctx.output_shapes = tuple(g.shape for g in output)
        ctx.mark_non_differentiable(*(g for g, needed in zip(output, output_mask) if not needed))

    @staticmethod
    def backward(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
        grad_output, input, weight = ctx.saved_tensors
        geometry = ctx.geometry
        need_input, need_weight, need_bias = ctx.output_mask
        need_dy, need_x, need_w = ctx.needs_input_grad[:3]
        # The gradient of <gg_i, dx(dy, w)> + <gg_w, dw(x, dy)> + <gg_b, db(dy)>.
        grad_dy = grad_x = grad_w = None
        if need_dy:
            terms = []
            if need_input:
                terms.append(_forward(grad_grad_input, weight, None, *geometry))
            if need_weight:
                terms.append(_forward(input, grad_grad_weight, None, *geometry))
            if need_bias:
                terms.append(grad_grad_bias[:, :, None, None].expand_as(grad_output))
            grad_dy = sum(terms[1:], terms[0])
        if need_x and need_weight:
            grad_x = _backward(grad_output, input, grad_grad_weight, *geometry,
                               (True, False, False))[0]
        if need_w and need_input:
            grad_w = _backward(grad_output, grad_grad_input, weight, *geometry,
                               (False, True, False))[1]
        return grad_dy, grad_x, grad_w, None, None, None, None, None


def _fold(tensor: Tensor | None, dim: int | None, size: int) -> Tensor | None:
    """Merge a vmap dimension into the batch: (V, B, ...) -> (V*B, ...); broadcast if absent."""
    if tensor is None:
        return None
    tensor = tensor.unsqueeze(0).expand(size, *tensor.shape) if dim is None else \
        tensor.movedim(dim, 0)
    return tensor.reshape(size * tensor.shape[1], *tensor.shape[2:])


def _unfold(tensor: Tensor, size: int) -> Tensor:
    return tensor.reshape(size, tensor.shape[0] // size, *tensor.shape[1:])


class PerSampleConv2d(_TracedConv2d):
    """:class:`_TracedConv2d` with forward-mode AD and vmap, for eager mode and torch.func.

    Rules call the Functions again (not the bare ops), so they stay differentiable under any
    transform nested around them.
    """

    @staticmethod
    def setup_context(ctx, inputs, output):
        _TracedConv2d.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:2])

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, *_):
        # Bilinear in (input, weight), linear in bias: a sum of convolutions.
        input, weight = ctx.saved_tensors
        terms = []
        if input_tangent is not None:
            terms.append(_forward(input_tangent, weight, bias_tangent, *ctx.geometry))
            bias_tangent = None
        if weight_tangent is not None:
            terms.append(_forward(input, weight_tangent, bias_tangent, *ctx.geometry))
            bias_tangent = None
        if bias_tangent is not None:
            terms.append(bias_tangent[:, :, None, None].expand(ctx.output_shape))
        return sum(terms[1:], terms[0])

    @staticmethod
    def vmap(info, in_dims, input, weight, bias, stride, padding, dilation, groups):
        size = info.batch_size
        folded = (_fold(t, d, size) for t, d in zip((input, weight, bias), in_dims[:3]))
        return _unfold(_forward(*folded, stride, padding, dilation, groups), size), 0


class PerSampleConv2dBackward(_TracedConv2dBackward):
    """:class:`_TracedConv2dBackward` with forward-mode AD and vmap."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        _TracedConv2dBackward.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:3])

    @staticmethod
    def jvp(ctx, grad_output_tangent, input_tangent, weight_tangent, *_):
        grad_output, input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.output_mask
        # Each output's tangent is the sum of its partial tangents, one per argument it is
        # linear in.
        partials = (
            (grad_output_tangent, input, weight, (need_input, need_weight, need_bias)),
            (grad_output, input_tangent, weight, (False, need_weight, False)),
            (grad_output, input, weight_tangent, (need_input, False, False)),
        )
        totals = [None, None, None]
        for *args, mask in partials:
            if any(a is None for a in args) or not any(mask):
                continue
            terms = _backward(*args, *ctx.geometry, mask)
            for i, needed in enumerate(mask):
                if needed:
                    totals[i] = terms[i] if totals[i] is None else totals[i] + terms[i]
        return tuple(
            (total if total is not None else weight.new_zeros(shape)) if needed else None
            for total, shape, needed in zip(totals, ctx.output_shapes, ctx.output_mask)
        )

    @staticmethod
    def vmap(info, in_dims, grad_output, input, weight, stride, padding, dilation, groups,
             output_mask):
        size = info.batch_size
        folded = (_fold(t, d, size) for t, d in zip((grad_output, input, weight), in_dims[:3]))
        grads = _backward(*folded, stride, padding, dilation, groups, output_mask)
        # Unrequested gradients are 0-element placeholders, with no vmap dimension.
        return (tuple(_unfold(g, size) if needed else g for g, needed in zip(grads, output_mask)),
                tuple(0 if needed else None for needed in output_mask))


def per_sample_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> Tensor:
    """Convolve each sample with its own kernel.

    Args:
        input: (B, C, H, W), any layout. weight: (B, out, C/groups, kh, kw).
        bias: (B, out) or None. pad: zero padding (top, bottom, left, right).

    Returns:
        (B, out, Ho, Wo), channels_last when the input is.

    Example:
        >>> x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 3, 3)
        >>> per_sample_conv2d(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1).shape
        torch.Size([2, 6, 8, 8])
    """
    top, bottom, left, right = pad
    if top != bottom or left != right:
        # Only padding='same' with an even kernel is asymmetric: pad the extra row/column here
        # (as F.conv2d does) and let the convolution add the symmetric part.
        input = F.pad(input, (0, right - left, 0, bottom - top))
    return _forward(input, weight, bias, list(stride), [top, left], list(dilation), groups)
