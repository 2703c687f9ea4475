"""torch ops over the Triton kernels, with autograd and fake (meta) implementations.

Two ops and their backward ops, all registered with ``torch.library.custom_op``:

- ``triton_nsr::mix`` (routing (B, k, d), bank (k, d, F)) -> (B, d, F)
- ``triton_nsr::per_sample_conv2d`` (input, per-sample weight, per-sample bias, ...) -> output

Their fake implementations only compute shapes from the inputs, so ``torch.compile`` traces them
with a symbolic batch size and no graph break, and ``torch.library.opcheck`` can test them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from triton_nsr.arguments import conv_output_size
from triton_nsr.kernels.conv import conv_fwd, empty_like_layout
from triton_nsr.kernels.conv_backward import conv_bwd_input, conv_bwd_weight
from triton_nsr.kernels.mix import mix_bwd, mix_fwd

# ----------------------------------------------------------------------------- mixing


@torch.library.custom_op("triton_nsr::mix", mutates_args=())
def mix(routing: Tensor, bank: Tensor) -> Tensor:
    """mixed[b, c, f] = sum_j routing[b, j, c] * bank[j, c, f].

    Shapes: routing (B, k, d), bank (k, d, F) -> mixed (B, d, F).
    """
    return mix_fwd(routing, bank)


@mix.register_fake
def _mix_fake(routing: Tensor, bank: Tensor) -> Tensor:
    return bank.new_empty((routing.shape[0], bank.shape[1], bank.shape[2]))


@torch.library.custom_op("triton_nsr::mix_backward", mutates_args=())
def mix_backward(grad: Tensor, routing: Tensor, bank: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`mix` for routing (B, k, d) and bank (k, d, F), given grad (B, d, F)."""
    return mix_bwd(grad, routing, bank)


@mix_backward.register_fake
def _mix_backward_fake(grad: Tensor, routing: Tensor, bank: Tensor) -> tuple[Tensor, Tensor]:
    return (torch.empty_like(routing, memory_format=torch.contiguous_format),
            torch.empty_like(bank, memory_format=torch.contiguous_format))


def _mix_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def refuse_double_backward() -> None:
    """The backward ops have no autograd of their own: refuse create_graph=True at the first
    backward, rather than fail at the second one."""
    if torch.is_grad_enabled():
        raise NotImplementedError(
            "the triton backend of nsr_conv2d does not support double backward "
            "(create_graph=True); use backend='torch', which supports it"
        )


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
