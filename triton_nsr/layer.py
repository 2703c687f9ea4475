"""The NSR layer on the Triton kernels, one straight line per call, decided once per signature.

A layer call's decisions (is a channels_last copy of the input worth making, which kernel
gradient, how many pixel splits, every launch's grid, integer arguments and constexprs, every
intermediate tensor's shape) depend only on the call's signature: its tensors' shapes, strides,
dtypes, device and addresses' 16-byte alignment, and the layer's integer arguments. A
:class:`LayerPlan` holds them for one signature, the launch plans of its kernels filled in on
its first forward and first backward, so a known call costs a dict lookup, the allocations and
the launches. The key fixes every launched tensor's dtype, and its alignment once the call's
parameters (and in the backward the saved tensors) are 16-byte aligned, which one OR over their
addresses tells: the plan then passes itself to its launch sites as their signature, and a
site that launched for it before checks no tensor again (kernels/known_launches.py):

    forward:  RouterPool (chunk sums, the channels_last copy) -> MixForward (the router's MLP
              and softmax; weight and bias mixed) -> ConvForward
    backward: ConvWeightGradient -> MixBackward -> RouterBackward -> ConvInputGradient

Tensors pass between the launches as the kernels read them, by address with the strides the
plans decided: the mixed kernels stay in their packed (B, out, kh, kw, Cp) storage, the banks
are the parameters themselves (a contiguous or channels_last weight read in its own strides,
:func:`weight_read_in_place`), the kernel gradient's splits go to the mixing backward as they
are.

``triton_nsr.ops`` wraps this in the autograd Function and the custom ops; the plans are
forgotten with the launch plans (``kernels.autotune.clear_launch_plans``).
"""

from __future__ import annotations

import torch

from triton_nsr.kernels.allocation import Empty
from triton_nsr.kernels.autotune import dot_precision, on_clear_launch_plans
from triton_nsr.kernels.conv import conv_forward_plan
from triton_nsr.kernels.conv_bwd_input import conv_input_gradient_for
from triton_nsr.kernels.conv_bwd_weight import conv_weight_gradient_for
from triton_nsr.kernels.mix import (
    mix_backward_for,
    mix_forward_for,
    weight_bank_strides,
)
from triton_nsr.kernels.operands import (
    TMA_ALIGN_BYTES,
    channels_last_copy_helps,
    forward_weight_view,
    pack_forward_weight,
    pack_input_grad_weight,
)
from triton_nsr.kernels.router import (
    router_bwd_plan,
    router_pool_plan,
    routing_dtype,
    temperature_pair,
)

# Layer plans kept before all are forgotten (a plan is a few small objects).
MAX_PLANS = 256
_PLANS: dict[tuple, LayerPlan] = {}
on_clear_launch_plans(_PLANS.clear)


def _aligned(tensor: torch.Tensor) -> bool:
    return tensor.data_ptr() % TMA_ALIGN_BYTES == 0


def _all_aligned(*tensors) -> bool:
    """Whether every tensor given (None aside) is 16-byte aligned: one OR over the addresses."""
    address = 0
    for tensor in tensors:
        if tensor is not None:
            address |= tensor.data_ptr()
    return address % TMA_ALIGN_BYTES == 0


def weight_read_in_place(weight, num_groups: int, num_cardinals: int) -> bool:
    """Whether the mixing reads ``weight`` in place as its (k, d, F) bank and makes its
    gradient in the weight's strides (which autograd then hands to .grad as they are): a dense
    weight, contiguous or channels_last (a model converted with
    ``.to(memory_format=torch.channels_last)``). Any other weight is reshaped (copied) on
    every call and its gradient made contiguous."""
    return ((weight.is_contiguous() or weight.is_contiguous(memory_format=torch.channels_last))
            and weight_bank_strides(tuple(weight.shape), weight.stride(), num_groups,
                                    num_cardinals) is not None)


def layer_plan(input, padded, weight, bias, mlp_weight, mlp_bias, num_groups: int,
               num_cardinals: int, stride: tuple, pad: tuple, dilation: tuple, groups: int,
               allow_tf32: bool, input_grad: bool) -> LayerPlan:
    """The :class:`LayerPlan` of this call's signature (see the module doc), made on first use.

    ``input_grad``: whether the convolution's input gradient will be wanted (the TF32 forward
    then writes the kernels in the layout that gradient reads).
    """
    key = (input.shape, input.stride(), input.dtype, input.device, _aligned(input),
           None if padded is None else (padded.shape, padded.stride(), _aligned(padded)),
           weight.shape, weight.stride(), weight.dtype,
           None if bias is None else (bias.stride(), bias.dtype),
           mlp_weight.shape, mlp_weight.stride(), mlp_weight.dtype,
           None if mlp_bias is None else (mlp_bias.stride(), mlp_bias.dtype),
           num_groups, num_cardinals, stride, pad, dilation, groups, allow_tf32, input_grad)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = LayerPlan(input, padded, weight, bias, num_groups, num_cardinals,
                                       stride, pad, dilation, groups, allow_tf32, input_grad)
    return plan


class LayerPlan:
    """One signature's decisions and launch plans; :meth:`forward` and :meth:`backward` run
    them on the call's tensors."""

    def __init__(self, input, padded, weight, bias, num_groups, num_cardinals, stride, pad,
                 dilation, groups, allow_tf32, input_grad) -> None:
        self.num_groups, self.num_cardinals = num_groups, num_cardinals
        self.stride, self.pad, self.dilation, self.groups = stride, pad, dilation, groups
        self.allow_tf32 = allow_tf32
        self.out_channels = weight.shape[0] // num_groups
        self.kernel_shape = (self.out_channels, *weight.shape[1:])
        self.pixels = input.shape[2] * input.shape[3]
        # An NCHW input that TMA cannot box at tap-shifted columns is copied to channels_last
        # on the pooling's pass, and the convolution reads the copy (its output stays NCHW).
        # Decided as for an aligned input, so that the decision is the signature's under
        # torch.compile too (an unaligned input is read by the pointer gather either way).
        self.copy = padded is None and channels_last_copy_helps(
            input, input.shape[1] // groups, stride, pad, dilation, weight.shape[2:],
            aligned=True)
        self.tf32 = dot_precision(input.dtype, allow_tf32) == "tf32"
        # The TF32 input gradient reads the kernels output-channels-contiguous: the forward's
        # mixing writes them that way too when that gradient will be wanted.
        self.copy_groups = groups if input_grad and self.tf32 else None
        self.weight_is_bank = weight_read_in_place(weight, num_groups, num_cardinals)
        # A contiguous bias is its own (k, d, F) bank: the kernels read its address.
        self.bias_is_bank = bias is None or bias.is_contiguous()
        self.pool = self.mix = self.conv = None
        # What the mixing writes and the backward reads, in the routing dtype.
        self.new_routing = Empty((input.shape[0], num_groups, num_cardinals))
        self.new_pooled = Empty(input.shape[:2])
        self._backward: dict[tuple, BackwardPlan] = {}

    def _banks(self, weight, bias):
        """(the weight's bank: the weight itself or its (k, d, F) copy, the bias's bank)."""
        k, d = self.num_groups, self.num_cardinals
        bank = weight if self.weight_is_bank else weight.reshape(k, d, -1)
        second = bias if bias is None or self.bias_is_bank else bias.reshape(k, d, -1)
        return bank, second

    def forward(self, input, padded, weight, bias, mlp_weight, mlp_bias, temperature: float):
        """Three launches: pool (and copy), route and mix, convolve.

        Returns (output (B, out, Ho, Wo), routing (B, k, d), pooled (B, C), the mixed kernels'
        packed (B, out, kh, kw, Cp) storage, their TF32 input-gradient layout or None, the
        input's channels_last copy or None); all but the output are what the backward reads.
        """
        # Every other tensor the launches get is the input (its alignment is in the key) or
        # one this plan allocates.
        signature = self if _all_aligned(weight, bias, mlp_weight, mlp_bias) else None
        if self.pool is None:
            self.pool = router_pool_plan(tuple(input.shape), input.stride(), input.dtype,
                                         self.copy)
        partials, input_copy = self.pool(input, signature)
        routing = self.new_routing(partials.device, partials.dtype)
        pooled = self.new_pooled(partials.device, partials.dtype)
        bank, second = self._banks(weight, bias)
        if self.mix is None:
            k, d = self.num_groups, self.num_cardinals
            self.mix = mix_forward_for(
                routing, bank, None if bias is None else bias.reshape(k, d, -1), input.dtype,
                self.kernel_shape, self.copy_groups, partials, self.pixels, mlp_weight,
                mlp_bias)
        weights, biases, weights_input_grad = self.mix(
            routing, bank, second, (partials, mlp_weight, mlp_bias, pooled),
            temperature_pair(temperature), storage=True, signature=signature)
        conv_input = input_copy if self.copy else (input if padded is None else padded)
        if self.conv is None:
            self.conv = self._conv_plan(conv_input, weights, biases)
        output = self.conv(conv_input, weights, biases, signature)
        return output, routing, pooled, weights, weights_input_grad, input_copy

    def _conv_plan(self, conv_input, weights, biases):
        batch = conv_input.shape[0]
        view = forward_weight_view(weights, self.kernel_shape[1])
        _, weight_strides, weight_channels = pack_forward_weight(view, self.groups)
        bias_stride = (None if biases is None
                       else biases.view(batch, self.out_channels).stride())
        return conv_forward_plan(
            tuple(conv_input.shape), conv_input.stride(), conv_input.dtype,
            _aligned(conv_input), tuple(view.shape), weight_strides, weight_channels,
            bias_stride, self.stride, self.pad, self.dilation, self.groups, self.allow_tf32,
            torch.contiguous_format if self.copy else None)

    def backward(self, grad_output, input, padded, weight, bias, mlp_weight, has_mlp_bias,
                 routing, pooled, weights, weights_input_grad, temperature, output_mask,
                 input_is_copy: bool = False):
        """At most four launches, in the order each one's inputs become ready.

        ``output_mask`` says which of (input, padded, weight, bias, mlp_weight, mlp_bias) need
        a gradient; ``weights`` and ``weights_input_grad`` are the forward's. With
        ``input_is_copy`` ``input`` is the forward's channels_last copy of an NCHW input (the
        kernel gradient reads it without tap-shifted 2-byte loads) and the input's gradient
        is made NCHW.

        Returns (grad of the convolution's input, mean_grad (B, C), grad_weight, grad_bias,
        grad_mlp_weight, grad_mlp_bias), None where not needed. Without ``padded`` (zero
        padding) the convolution's input is ``input`` and its gradient already holds the
        mean's; with it, the caller spreads mean_grad over the pixels of ``input``.
        """
        batch = routing.shape[0]
        if batch == 0:
            return zero_gradients(input, padded, weight, bias, mlp_weight, has_mlp_bias,
                                  output_mask)
        conv_input = input if padded is None else padded
        key = (tuple(output_mask), grad_output.stride(), grad_output.dtype,
               _aligned(grad_output), input_is_copy, weights_input_grad is not None,
               has_mlp_bias)
        plan = self._backward.get(key)
        if plan is None:
            plan = self._backward[key] = BackwardPlan(self, grad_output, output_mask,
                                                      padded is not None, has_mlp_bias)
        return plan(self, grad_output, conv_input, weight, bias, mlp_weight, routing, pooled,
                    weights, weights_input_grad, temperature, input_is_copy)


class BackwardPlan:
    """The backward of one LayerPlan for one gradient signature (what is wanted, dy's
    layout, dtype and alignment): which launches, the copy of dy, their plans once made."""

    def __init__(self, layer: LayerPlan, grad_output, output_mask, has_padded: bool,
                 has_mlp_bias: bool) -> None:
        need_input, need_padded, need_weight, need_bias, need_mlp_weight, need_mlp_bias = \
            output_mask
        self.need_routing = need_input or need_mlp_weight or need_mlp_bias
        self.need_banks = need_weight or need_bias
        self.need_weight, self.need_bias = need_weight, need_bias
        self.need_mlp_weight, self.need_mlp_bias = need_mlp_weight, need_mlp_bias
        self.need_conv_input = (need_input and not has_padded) or need_padded
        self.has_padded = has_padded
        self.has_mlp_bias = has_mlp_bias
        # The kernel gradient reads all of dy first: it also writes the channels_last copy
        # that the input gradient boxes with TMA (an NCHW dy cannot be boxed at its taps).
        self.copy_dy = (self.need_conv_input and (self.need_routing or self.need_banks)
                        and channels_last_copy_helps(
                            grad_output, layer.out_channels // layer.groups, layer.stride,
                            layer.pad, layer.dilation, layer.kernel_shape[2:], aligned=True))
        self.weight_grad = self.mix = self.router = self.input_grad = None
        self.new_weight_parts = self.new_bias_parts = self.parts_dtype = None

    def __call__(self, layer: LayerPlan, grad_output, conv_input, weight, bias, mlp_weight,
                 routing, pooled, weights, weights_input_grad, temperature, input_is_copy):
        batch = routing.shape[0]
        # Every tensor handed in, checked once (under torch.compile the saved ones come back
        # through the graph); the others the launches get are allocated here.
        signature = (self if _all_aligned(grad_output, conv_input, weight, bias, mlp_weight,
                                          routing, pooled, weights, weights_input_grad)
                     else None)
        grad_weight = grad_bias = mean_grad = grad_mlp_weight = grad_mlp_bias = None
        grad_output_copy = None
        if self.need_routing or self.need_banks:
            if self.copy_dy:
                grad_output_copy = torch.empty_like(grad_output,
                                                    memory_format=torch.channels_last)
            # The kernel gradient as S pixel-split partial sums (S = 1 but for few large
            # images); the mixing backward adds them as it reads them.
            if self.weight_grad is None:
                # Planned on per-sample outputs (the plan then says whether it splits).
                weight_shape, bias_shape, dtype = self._weight_grad_outputs(layer, weights, None)
                self.weight_grad = conv_weight_gradient_for(
                    grad_output, conv_input, layer.kernel_shape[2:], layer.stride, layer.pad,
                    layer.dilation, layer.groups, layer.allow_tf32,
                    weights.new_empty(weight_shape, dtype=dtype),
                    None if bias is None else weights.new_empty(bias_shape, dtype=dtype),
                    grad_output_copy)
            weight_parts, bias_parts = self._weight_grad_parts(layer, weights, bias)
            self.weight_grad.launch_parts(grad_output, conv_input, weight_parts, bias_parts,
                                          grad_output_copy, signature)
            bank, second = layer._banks(weight, bias)
            if self.mix is None:
                k, d = layer.num_groups, layer.num_cardinals
                splits = self.weight_grad.num_splits
                self.mix = mix_backward_for(
                    weight_parts.view(splits, batch, d, -1),
                    None if bias is None else bias_parts.view(splits, batch, d, -1),
                    routing, bank, None if bias is None else bias.reshape(k, d, -1),
                    need_banks=self.need_banks, need_routing=self.need_routing)
            routing_parts, grad_weight, grad_bias = self.mix(weight_parts, bias_parts, routing,
                                                             bank, second, signature)
            # The mixing differentiates both banks in one launch; only the wanted gradients are
            # returned (the compiled path's fake gives the others no elements).
            if not self.need_weight:
                grad_weight = None
            elif not layer.weight_is_bank:
                grad_weight = grad_weight.view(weight.shape)
            if not self.need_bias:
                grad_bias = None
            elif grad_bias is not None and not layer.bias_is_bank:
                grad_bias = grad_bias.view(bias.shape)
            if self.need_routing:
                if self.router is None:
                    self.router = router_bwd_plan(
                        tuple(routing_parts.shape), routing_parts.stride(),
                        tuple(routing.shape), routing.stride(), routing.dtype,
                        tuple(pooled.shape), pooled.stride(), tuple(mlp_weight.shape),
                        mlp_weight.stride(), self.has_mlp_bias, layer.pixels)
                mean_grad, grad_mlp_weight, grad_mlp_bias = self.router(
                    routing_parts, routing, pooled, mlp_weight, temperature, signature)
                # As for the banks: the router's backward makes all three in one launch.
                if not self.need_mlp_weight:
                    grad_mlp_weight = None
                if not self.need_mlp_bias:
                    grad_mlp_bias = None
        grad_conv_input = None
        if self.need_conv_input:
            source = grad_output if grad_output_copy is None else grad_output_copy
            grad_input = (torch.empty_like(conv_input, memory_format=torch.contiguous_format)
                          if input_is_copy else torch.empty_like(conv_input))
            mean = mean_grad if not self.has_padded else None
            operand = self._input_grad_operand(layer, weights, weights_input_grad)
            if self.input_grad is None:
                self.input_grad, _ = conv_input_gradient_for(
                    source, forward_weight_view(weights, layer.kernel_shape[1]), layer.stride,
                    layer.pad, layer.dilation, layer.groups, layer.allow_tf32, grad_input,
                    mean, weights_input_grad)
            grad_conv_input = self.input_grad(source, operand, grad_input, mean, signature)
        return (grad_conv_input, mean_grad, grad_weight, grad_bias, grad_mlp_weight,
                grad_mlp_bias)

    @staticmethod
    def _weight_grad_outputs(layer: LayerPlan, weights, plan):
        """Where the kernel gradient writes: per sample (B, out, Cg, kh, kw) and (B, out) in
        the kernels' dtype, or, where ``plan`` splits the pixel sum, (S, B, ...) partial sums
        in its ``partial`` dtype. Returns (the weight's shape, the bias's shape, the dtype);
        :meth:`_weight_grad_parts` allocates them."""
        batch = weights.shape[0]
        if plan is None or plan.partial is None:
            leading, dtype = (), weights.dtype
        else:
            leading, dtype = (plan.num_splits,), plan.partial
        return ((*leading, batch, *layer.kernel_shape), (*leading, batch, layer.out_channels),
                dtype)

    def _weight_grad_parts(self, layer: LayerPlan, weights, bias):
        """(weight_parts, bias_parts or None), new, as :meth:`_weight_grad_outputs` says
        for the kernel gradient's plan."""
        if self.new_weight_parts is None:
            weight_shape, bias_shape, self.parts_dtype = self._weight_grad_outputs(
                layer, weights, self.weight_grad)
            self.new_weight_parts, self.new_bias_parts = Empty(weight_shape), Empty(bias_shape)
        device, dtype = weights.device, self.parts_dtype
        return (self.new_weight_parts(device, dtype),
                None if bias is None else self.new_bias_parts(device, dtype))

    @staticmethod
    def _input_grad_operand(layer: LayerPlan, weights, weights_input_grad):
        """The input gradient's weight operand: the forward's packed storage (16-bit and IEEE
        read that layout), or the TF32 layout, written by the forward or packed here."""
        if not layer.tf32:
            return weights
        if weights_input_grad is not None:
            return weights_input_grad
        return pack_input_grad_weight(forward_weight_view(weights, layer.kernel_shape[1]),
                                      layer.groups)[0]


def zero_gradients(input, padded, weight, bias, mlp_weight, has_mlp_bias, output_mask):
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
