"""NSRConv2d as a drop-in: nn.Conv2d equivalence, authors' state_dict, weight norm, layouts."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, weight_norm

import triton_nsr
from tests.utils import assert_close, per_sample_loop
from triton_nsr import NSRConv2d, reference


def module_oracle(layer, x):
    return per_sample_loop(
        x, layer.weight, layer.bias, layer.mlp[0].weight, layer.mlp[0].bias,
        layer.num_sparsity_groups, layer.num_sparsity_cardinals, layer.stride, layer.padding,
        layer.dilation, layer.groups, layer.temperature, layer.padding_mode,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=(3, 5), stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
        dict(kernel_size=3, padding="same", groups=2, bias=False),
        dict(kernel_size=3, padding=2, padding_mode="reflect", stride=2),
        dict(kernel_size=1, groups=4),
        dict(kernel_size=3, padding=1, padding_mode="circular"),
    ],
)
def test_single_group_and_cardinal_equals_nn_conv2d(kwargs):
    conv = nn.Conv2d(4, 8, dtype=torch.float64, **kwargs)
    layer = NSRConv2d(4, 8, num_sparsity_groups=1, num_sparsity_cardinals=1, dtype=torch.float64,
                      backend="torch", **kwargs)
    with torch.no_grad():
        layer.weight.copy_(conv.weight)
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    x = torch.randn(3, 4, 11, 13, dtype=torch.float64)
    assert_close(layer(x), conv(x))


def test_parameters_have_the_authors_names_and_shapes():
    layer = NSRConv2d(32, 128, 3, 4, 16, padding=1)
    shapes = {name: tuple(t.shape) for name, t in layer.state_dict().items()}
    assert shapes == {
        "weight": (512, 32, 3, 3),
        "bias": (512,),
        "mlp.0.weight": (64, 32),
        "mlp.0.bias": (64,),
    }
    assert "bias" not in NSRConv2d(32, 128, 3, 4, 16, bias=False).state_dict()
    assert layer.out_channels == 128 and layer.in_channels == 32
    assert isinstance(layer, nn.Conv2d)
    assert triton_nsr.Conv2d is NSRConv2d


def test_state_dict_in_the_authors_layout_loads_strictly_and_matches():
    k, d, cin, cout = 2, 4, 6, 8
    authors = {
        "weight": torch.randn(k * cout, cin, 3, 3, dtype=torch.float64),
        "bias": torch.randn(k * cout, dtype=torch.float64),
        "mlp.0.weight": torch.randn(k * d, cin, dtype=torch.float64),
        "mlp.0.bias": torch.randn(k * d, dtype=torch.float64),
    }
    layer = NSRConv2d(cin, cout, 3, k, d, padding=1, dtype=torch.float64, backend="torch")
    layer.load_state_dict(authors, strict=True)
    x = torch.randn(2, cin, 9, 9, dtype=torch.float64)
    expected = per_sample_loop(x, authors["weight"], authors["bias"], authors["mlp.0.weight"],
                               authors["mlp.0.bias"], k, d, padding=1)
    assert_close(layer(x), expected)
    clone = NSRConv2d(cin, cout, 3, k, d, padding=1, dtype=torch.float64, backend="torch")
    clone.load_state_dict(layer.state_dict(), strict=True)
    assert torch.equal(clone(x), layer(x))


@pytest.mark.parametrize("kind", ["hook", "parametrization"])
def test_weight_norm_applies_to_the_kernels(kind):
    layer = NSRConv2d(4, 8, 3, 2, 4, padding=1, dtype=torch.float64, backend="torch")
    if kind == "hook":
        layer = weight_norm(layer)
        keys = {"weight_g", "weight_v"}
        magnitude = layer.weight_g
    else:
        layer = parametrizations.weight_norm(layer)
        keys = {"parametrizations.weight.original0", "parametrizations.weight.original1"}
        magnitude = layer.parametrizations.weight.original0
    assert keys <= set(layer.state_dict())
    with torch.no_grad():
        magnitude.mul_(3.0)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    out = layer(x)
    # The effective weight, recomputed from the norm parameters, is what the layer used.
    assert_close(out, module_oracle(layer, x))
    out.square().sum().backward()
    assert magnitude.grad is not None and magnitude.grad.abs().sum() > 0


def test_temperature_is_read_at_call_time():
    layer = NSRConv2d(4, 8, 3, 4, 2, padding=1, dtype=torch.float64, backend="torch")
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    before = layer(x)
    layer.temperature = 0.1
    after = layer(x)
    assert not torch.allclose(before, after)
    assert_close(after, module_oracle(layer, x))


def test_reference_module_matches_drop_in_module():
    torch_layer = reference.NSRConv2d(4, 8, 3, 2, 2, stride=2, padding=1)
    layer = NSRConv2d(4, 8, 3, 2, 2, stride=2, padding=1, backend="torch")
    layer.load_state_dict(torch_layer.state_dict())
    x = torch.randn(3, 4, 10, 10)
    assert_close(layer(x), torch_layer(x))


def test_channels_last_module_input():
    layer = NSRConv2d(4, 8, 3, 2, 2, padding=1, dtype=torch.float64, backend="torch")
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    assert_close(layer(x.to(memory_format=torch.channels_last)), layer(x))


def test_gradients_reach_every_parameter():
    layer = NSRConv2d(4, 8, 3, 2, 2, padding=1, dtype=torch.float64, backend="torch")
    F.mse_loss(layer(torch.randn(2, 4, 6, 6, dtype=torch.float64)),
               torch.zeros(2, 8, 6, 6, dtype=torch.float64)).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
