"""Operand routes of the conv kernels: which launches take TMA, and that both routes compute.

Under the interpreter a TMA box is accepted only where its innermost coordinate is 16-byte
aligned, so here the TMA routes run on channels_last inputs (the innermost coordinate is a
channel block) and on 1x1 NCHW kernels without padding; the tap-shifted NCHW boxes run in the GPU
tests. Every other launch takes the pointer gather, which test_triton_path covers throughout.
"""

import pytest
import torch
import torch.nn.functional as F

from tests.utils import all_taps_in_float32, assert_close
from triton_nsr.kernels import operands
from triton_nsr.kernels.conv import conv_fwd
from triton_nsr.kernels.conv_bwd_input import conv_bwd_input
from triton_nsr.kernels.conv_bwd_weight import conv_bwd_weight

pytestmark = pytest.mark.usefixtures("poison_allocations")


def route_of(x, groups=1, stride=(1, 1), pad=(1, 1, 1, 1), kernel=(3, 3)):
    return operands.input_route(x, x.shape[1] // groups, stride, pad, (1, 1), kernel)[0]


def test_routes_name_what_tma_cannot_take():
    x = torch.empty(2, 8, 6, 16, dtype=torch.bfloat16)
    channels_last = x.to(memory_format=torch.channels_last)
    assert route_of(channels_last) == "tma_channels_last"
    assert route_of(x, kernel=(1, 1), pad=(0, 0, 0, 0)) == "tma_nchw"
    assert route_of(x, stride=(2, 2)) == "gather"  # a box is a dense window
    # bf16 width 13: rows 26 bytes apart, not a multiple of 16.
    assert route_of(torch.empty(2, 8, 6, 13, dtype=torch.bfloat16), kernel=(1, 1),
                    pad=(0, 0, 0, 0)) == "gather"
    assert route_of(x[:, :, :, 1:9], kernel=(1, 1), pad=(0, 0, 0, 0)) == "gather"  # address
    assert route_of(torch.empty(2, 8, 6, 16, dtype=torch.float64)) == "gather"
    assert route_of(x.expand(2, 8, 6, 16)[:, :1].expand(2, 8, 6, 16)) == "gather"  # stride 0
    # Groups: each group's descriptor starts Cg channels further on.
    assert route_of(torch.empty(2, 12, 4, 4).to(memory_format=torch.channels_last),
                    groups=4) == "gather"  # 3 float32 channels = 12 bytes


def test_tile_width_wastes_fewest_columns():
    assert [operands.tile_width(w) for w in (48, 512, 29, 8, 40, 3)] == [16, 64, 32, 8, 8, 8]


def test_packed_weights_are_contiguous_along_k_and_zero_padded():
    weight = torch.randn(2, 6, 5, 3, 3)
    packed, strides, bound = operands.pack_forward_weight(weight, groups=2)
    assert bound == 16 and strides[3] == 1 and all(s % 16 == 0 for s in strides[:3] + strides[4:])
    assert torch.equal(packed[..., :5], weight.permute(0, 1, 3, 4, 2))
    assert not packed[..., 5:].any()
    packed, strides, bound = operands.pack_input_grad_weight(weight, groups=2)
    assert bound == 16 and strides[2] == 1
    assert torch.equal(packed[..., :3], weight.view(2, 2, 3, 5, 3, 3).permute(0, 1, 4, 5, 3, 2))
    assert not packed[..., 3:].any()


CASES = [
    # (channels_last, in, out, groups, kernel, pad, size)
    (True, 8, 12, 1, 3, 1, (7, 9)),
    (True, 16, 8, 2, 3, 2, (5, 6)),
    (False, 4, 8, 1, 1, 0, (5, 8)),
    (False, 8, 4, 2, 1, 0, (3, 16)),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_tma_routes_match_conv2d(case):
    channels_last, cin, cout, groups, ks, pad, size = case
    x = torch.randn(2, cin, *size)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(2, cout, cin // groups, ks, ks)
    bias = torch.randn(2, cout)
    pads = (pad,) * 4
    assert route_of(x, groups, pad=pads, kernel=(ks, ks)).startswith("tma")

    def reference(x, w, b):
        return torch.cat([F.conv2d(x[i:i + 1], w[i], b[i], padding=pad, groups=groups)
                          for i in range(2)])

    x_ref = x.detach().clone().requires_grad_()
    w_ref = weight.clone().requires_grad_()
    b_ref = bias.clone().requires_grad_()
    expected = reference(x_ref, w_ref, b_ref)
    dy = torch.randn_like(expected)
    if channels_last:
        dy = dy.contiguous(memory_format=torch.channels_last)
    assert route_of(dy, groups, pad=pads, kernel=(ks, ks)).startswith("tma")
    expected.backward(dy)

    out = conv_fwd(x, weight, bias, (1, 1), pads, (1, 1), groups, False)
    assert_close(out, expected, "output")
    grad_input = conv_bwd_input(dy, weight, (1, 1), pads, (1, 1), groups, False,
                                torch.empty_like(x))
    assert_close(grad_input, x_ref.grad)
    grad_weight, grad_bias = torch.empty_like(weight), torch.empty_like(bias)
    conv_bwd_weight(dy, x, (ks, ks), (1, 1), pads, (1, 1), groups, False, grad_weight, grad_bias)
    assert_close(grad_weight, w_ref.grad)
    assert_close(grad_bias, b_ref.grad)


@pytest.mark.parametrize("splits", [3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_all_taps_weight_gradient_matches_conv2d(monkeypatch, channels_last, splits):
    # The all-taps kernel runs for 16-bit inputs; here in float32 (the interpreter has no
    # bfloat16 arithmetic), several output- and input-channel tiles, rows split into bands of
    # 3 (the last one short) or 2, padding 2 on one side; channels_last boxes x with TMA. With
    # an NCHW dy it also writes dy's channels_last copy (NaN-poisoned before).
    all_taps_in_float32(monkeypatch, splits)
    x = torch.randn(2, 36, 7, 5)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert route_of(x, pad=(2, 2, 1, 1)) == ("tma_channels_last" if channels_last else "gather")
    weight = torch.randn(2, 66, 36, 3, 3, requires_grad=True)
    pad = (2, 2, 1, 1)
    expected = torch.cat([F.conv2d(F.pad(x[i:i + 1], (1, 1, 2, 2)), weight[i])
                          for i in range(2)])
    dy = torch.randn_like(expected)
    expected.backward(dy)
    grad_weight, grad_bias = torch.empty_like(weight), torch.empty(2, 66)
    copy = None if channels_last else torch.full_like(
        dy, float("nan"), memory_format=torch.channels_last)
    conv_bwd_weight(dy, x, (3, 3), (1, 1), pad, (1, 1), 1, False, grad_weight, grad_bias,
                    grad_output_copy=copy)
    assert_close(grad_weight, weight.grad, "grad_weight")
    assert_close(grad_bias, dy.sum(dim=(2, 3)), "grad_bias")
    if copy is not None:
        assert torch.equal(copy, dy)


@pytest.mark.parametrize("x_channels_last", [False, True])
def test_tf32_weight_gradient_with_x_in_registers_matches_conv2d(monkeypatch, x_channels_last):
    # The per-tap kernel run transposed, x^T dy^T (conv_bwd_weight.TF32_X_IN_REGISTERS), as an
    # NCHW dy in TF32 takes it when switched on: stride 2, dilation 2, padding 2 on one side,
    # 2 pixel splits summed, 40 input channels over the first config's 32-channel tiles and
    # 70 output channels over 64 (partial tiles both ways), x in either layout, the copy of
    # dy written on the way; outputs NaN-poisoned. A channels_last dy keeps the untransposed
    # kernel.
    from triton_nsr.kernels import conv_bwd_weight as module
    from triton_nsr.kernels.autotune import clear_launch_plans

    monkeypatch.setattr(module, "TF32_X_IN_REGISTERS", True)
    monkeypatch.setattr(module, "weight_grad_splits", lambda *args: 2)
    clear_launch_plans()
    launched = []
    kernel = module.conv_bwd_weight_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launched.append(kwargs["X_IN_REGISTERS"])
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(module, "conv_bwd_weight_kernel", Spy())
    x = torch.randn(2, 40, 9, 8)
    if x_channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(2, 70, 40, 3, 3, requires_grad=True)
    bias = torch.randn(2, 70, requires_grad=True)
    padded = F.pad(x, (1, 1, 2, 0))
    expected = torch.cat([F.conv2d(padded[i:i + 1], weight[i], bias[i], stride=2, dilation=2)
                          for i in range(2)])
    dy = torch.randn(expected.shape)  # NCHW whatever x's layout (randn_like would keep it)
    expected.backward(dy)
    for grad_output in (dy, dy.contiguous(memory_format=torch.channels_last)):
        grad_weight = torch.full_like(weight, float("nan"))
        grad_bias = torch.full_like(bias, float("nan"))
        copy = torch.full_like(dy, float("nan"), memory_format=torch.channels_last)
        conv_bwd_weight(grad_output, x, (3, 3), (2, 2), (2, 0, 1, 1), (2, 2), 1, True,
                        grad_weight, grad_bias, grad_output_copy=copy)
        assert_close(grad_weight, weight.grad, "grad_weight")
        assert_close(grad_bias, bias.grad, "grad_bias")
        assert torch.equal(copy, dy)
    assert launched == [True, False]


@pytest.mark.parametrize("in_channels,out_channels,groups,x_channels_last",
                         [(72, 12, 1, True), (48, 16, 2, True), (48, 16, 1, False)])
def test_transposed_all_taps_weight_gradient_matches_conv2d(monkeypatch, in_channels,
                                                            out_channels, groups,
                                                            x_channels_last):
    # More input than output channels, dy channels_last, padding 1: the all-taps kernel carries
    # x's rows and shifts dy (TRANSPOSED), writing the taps flipped and the bias from dy. 72
    # input channels take two M tiles (only the first writes the bias); 2 groups move the
    # group offset to N; x's rows are read in either layout; 3 bands of rows, the last one
    # short; outputs NaN-poisoned.
    decided = all_taps_in_float32(monkeypatch, 3)
    x = torch.randn(2, in_channels, 7, 5)
    if x_channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(2, out_channels, in_channels // groups, 3, 3, requires_grad=True)
    bias = torch.randn(2, out_channels, requires_grad=True)
    expected = torch.cat([F.conv2d(x[i:i + 1], weight[i], bias[i], padding=1, groups=groups)
                          for i in range(2)])
    dy = torch.randn_like(expected).contiguous(memory_format=torch.channels_last)
    expected.backward(dy)
    grad_weight = torch.full_like(weight, float("nan"))
    grad_bias = torch.full_like(bias, float("nan"))
    conv_bwd_weight(dy, x, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), groups, False, grad_weight,
                    grad_bias)
    assert decided == [True]
    assert_close(grad_weight, weight.grad, "grad_weight")
    assert_close(grad_bias, bias.grad, "grad_bias")


@pytest.mark.parametrize("in_channels", [5, 16])
def test_mixing_writes_the_forward_packed_layout_that_conv_reads_as_is(in_channels):
    """The layer's mixing writes the per-sample kernels straight into the forward's packed
    layout (padding channels zeroed), which pack_forward_weight then takes without a copy."""
    from triton_nsr.kernels import mix

    k, d, out, batch = 3, 2, 4, 2
    routing = torch.softmax(torch.randn(batch, k, d), dim=1)
    weight = torch.randn(k * out, in_channels, 3, 3)
    mixed, _, no_copy = mix.mix_fwd(routing, weight.reshape(k, d, -1), None, None,
                                    (out, in_channels, 3, 3))
    assert no_copy is None
    expected = torch.einsum("bjc,jcf->bcf", routing, weight.reshape(k, d, -1))
    assert mixed.shape == (batch, out, in_channels, 3, 3)
    assert operands.is_packed_forward_weight(mixed)
    torch.testing.assert_close(mixed, expected.reshape(mixed.shape))
    packed, _, bound = operands.pack_forward_weight(mixed, groups=1)
    assert packed.data_ptr() == mixed.data_ptr() and bound == 16
    assert not packed[..., in_channels:].any()
    torch.testing.assert_close(packed[..., :in_channels], mixed.permute(0, 1, 3, 4, 2))


@pytest.mark.parametrize("d,groups", [(2, 1), (1, 2), (3, 2)])
def test_mixing_also_writes_the_tf32_input_gradient_layout(d, groups):
    """For a TF32 backward the mixing writes a second copy, (B, groups, kh, kw, Cg, Op) with
    output channels contiguous and zero-padded, equal to what pack_input_grad_weight would copy;
    with d = 3 and 2 groups a cardinal's rows straddle a group boundary."""
    from triton_nsr.kernels import mix

    k, out, in_group, batch = 2, 6, 5, 3
    routing = torch.softmax(torch.randn(batch, k, d), dim=1)
    weight = torch.randn(k * out, in_group, 3, 3)
    bias = torch.randn(k * out)
    mixed, mixed_bias, copy = mix.mix_fwd(routing, weight.reshape(k, d, -1),
                                          bias.reshape(k, d, -1), None,
                                          (out, in_group, 3, 3), input_grad_groups=groups)
    expected, _, bound = operands.pack_input_grad_weight(mixed, groups)
    assert copy.shape == expected.shape and bound == 16
    torch.testing.assert_close(copy, expected)
    assert not copy[..., out // groups:].any()
    torch.testing.assert_close(
        mixed_bias, torch.einsum("bjc,jcf->bcf", routing, bias.reshape(k, d, -1)))


@pytest.mark.parametrize("allow_tf32", [False, True], ids=["ieee", "tf32"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_input_gradient_reads_either_packed_weight_layout(allow_tf32, channels_last):
    # TF32 packs a copy with output channels contiguous; every other precision reads the
    # forward's layout (input channels contiguous, padded 20 -> 32 and read unmasked) as the
    # layer's mixing writes it. Both must give conv2d's input gradient, OG = 6 and Cg = 20 both
    # off the 16-element grid.
    x = torch.randn(2, 40, 5, 7)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(2, 12, 20, 3, 3)
    forward_layout = operands.empty_packed_forward_weight(weight.shape, weight.dtype, "cpu")
    forward_layout.copy_(weight)
    assert operands.is_packed_forward_weight(forward_layout)
    dy = torch.randn(2, 12, 5, 7)
    x_ref = x.clone().requires_grad_()
    torch.cat([F.conv2d(x_ref[i:i + 1], weight[i], padding=1, groups=2)
               for i in range(2)]).backward(dy)
    grad_input = conv_bwd_input(dy, forward_layout, (1, 1), (1, 1, 1, 1), (1, 1), 2,
                                allow_tf32, torch.empty_like(x))
    # The interpreter's TF32 dot multiplies in float32: the same tolerance serves both.
    assert_close(grad_input, x_ref.grad)
