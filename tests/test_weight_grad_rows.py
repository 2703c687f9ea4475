"""The kernel gradient run one program per kernel row (kernels/conv_bwd_weight_row.py) against
F.conv2d's gradients in the Triton interpreter: every geometry the per-tap kernel takes whose
kernel is three taps wide, both layouts, pixel splits, groups, the bias and the channels_last
dy copy, outputs NaN-poisoned before the launch. Off on the layer's path
(conv_bwd_weight.ROW_LAYOUTS) until a GPU run times it; forced here as the tools force it."""

import pytest
import torch
import torch.nn.functional as F

from tests.utils import assert_close

pytest.importorskip("triton")

from triton_nsr.kernels import conv_bwd_weight as module  # noqa: E402
from triton_nsr.kernels.inspection.capture import kernel_gradient_variant  # noqa: E402

# (batch, in, out, H, W, kernel (kh, 3), stride, pad (top, bottom, left, right), dilation,
#  groups, splits)
GEOMETRIES = [
    (2, 8, 16, 6, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 1),
    (2, 36, 66, 7, 5, (3, 3), (1, 1), (2, 2, 1, 1), (1, 1), 1, 3),
    (3, 12, 8, 9, 8, (5, 3), (2, 1), (0, 2, 1, 0), (1, 2), 2, 2),
    (1, 10, 20, 11, 10, (1, 3), (2, 2), (1, 1, 2, 2), (2, 1), 2, 1),
]


def _launched_kernels(monkeypatch):
    launched = []
    site_call = module.LaunchSite.__call__

    def spy(site, tensors, scalars, signature=None):
        launched.append(getattr(site.kernel, "name", None))
        return site_call(site, tensors, scalars, signature)

    monkeypatch.setattr(module.LaunchSite, "__call__", spy)
    return launched


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[5][0]}x3-s{g[6][0]}-g{g[9]}")
def test_row_kernel_gradient_matches_conv2d(monkeypatch, geometry, layout):
    batch, cin, cout, h, w, kernel, stride, pad, dilation, groups, splits = geometry
    monkeypatch.setattr(module, "weight_grad_splits", lambda *args: splits)
    launched = _launched_kernels(monkeypatch)
    x = torch.randn(batch, cin, h, w)
    weight = torch.randn(batch, cout, cin // groups, *kernel, requires_grad=True)
    bias = torch.randn(batch, cout, requires_grad=True)
    top, bottom, left, right = pad
    expected = torch.cat([F.conv2d(F.pad(x[i:i + 1], (left, right, top, bottom)), weight[i],
                                   bias[i], stride, 0, dilation, groups) for i in range(batch)])
    dy = torch.randn_like(expected)
    expected.backward(dy)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    grad_weight = torch.full_like(weight, float("nan"))
    grad_bias = torch.full_like(bias, float("nan"))
    copy = torch.full_like(dy, float("nan"), memory_format=torch.channels_last)
    with kernel_gradient_variant("row_of_3"):
        module.conv_bwd_weight(dy, x, kernel, stride, pad, dilation, groups, False, grad_weight,
                               grad_bias, grad_output_copy=copy)
    assert launched == ["conv_bwd_weight_row_kernel"]
    assert_close(grad_weight, weight.grad, "grad_weight")
    assert_close(grad_bias, bias.grad, "grad_bias")
    assert torch.equal(copy, dy)


def test_the_layer_takes_the_row_kernel_only_where_told(monkeypatch):
    x, dy = torch.randn(2, 8, 6, 7), torch.randn(2, 16, 6, 7)
    grad_weight, grad_bias = torch.empty(2, 16, 8, 3, 3), torch.empty(2, 16)
    launched = _launched_kernels(monkeypatch)
    module.conv_bwd_weight(dy, x, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, False, grad_weight,
                           grad_bias)
    assert module.ROW_LAYOUTS == () and launched == ["conv_bwd_weight_kernel"]
    # Three taps wide only: a 3x5 kernel stays per tap even where the row kernel is on.
    launched.clear()
    with kernel_gradient_variant("row_of_3"):
        module.conv_bwd_weight(torch.randn(2, 16, 6, 5), x, (3, 5), (1, 1), (1, 1, 1, 1),
                               (1, 1), 1, False, torch.empty(2, 16, 8, 3, 5), None)
    assert launched == ["conv_bwd_weight_kernel"]
