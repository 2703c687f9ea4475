"""convert(): the authors' layers and the reference layer become NSRConv2d, in place, unchanged."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import triton_nsr
from tests.authors_layer import AuthorsConv2d
from tests.utils import assert_close, per_sample_loop
from triton_nsr import NSRConv2d, reference
from triton_nsr.convert import is_authors_layer


def old_weight_norm(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module)


WRAPPERS = {
    "plain": lambda m: m,
    "hook": old_weight_norm,
    "parametrization": parametrizations.weight_norm,
}


def make_model(layer_cls, bias, wrap):
    opts = {"dtype": torch.float64, "bias": bias}
    return nn.Sequential(
        wrap(layer_cls(4, 8, 3, 2, 4, padding=1, **opts)),
        nn.ReLU(),
        wrap(layer_cls(8, 6, 3, 3, 2, stride=2, **opts)),
    )


def outputs_and_grads(model, x, grad_output):
    x = x.detach().clone().requires_grad_()
    model.zero_grad()
    out = model(x)
    out.backward(grad_output)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("wrap", list(WRAPPERS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layer_cls", [AuthorsConv2d, reference.NSRConv2d])
def test_conversion_keeps_outputs_gradients_and_parameters(layer_cls, bias, wrap):
    model = make_model(layer_cls, bias, WRAPPERS[wrap])
    model.eval()
    params_before = dict(model.named_parameters())
    keys_before = list(model.state_dict())
    x = torch.randn(3, 4, 11, 9, dtype=torch.float64)
    grad_output = torch.randn(3, 6, 5, 4, dtype=torch.float64)
    out, grad_x, grads = outputs_and_grads(model, x, grad_output)

    assert triton_nsr.convert(model, backend="torch") is model
    for index, out_channels in ((0, 8), (2, 6)):
        layer = model[index]
        assert isinstance(layer, NSRConv2d)
        assert layer.out_channels == out_channels and layer.backend == "torch"
    assert not model.training and not model[0].training
    assert list(model.state_dict()) == keys_before
    for name, p in model.named_parameters():
        assert p is params_before[name], name
    assert parametrize.is_parametrized(model[0]) == (wrap == "parametrization")

    out2, grad_x2, grads2 = outputs_and_grads(model, x, grad_output)
    assert_close(out2, out)
    assert_close(grad_x2, grad_x, "grad of input")
    for name in grads:
        assert_close(grads2[name], grads[name], f"grad of {name}")


def test_removing_a_parametrization_after_conversion_leaves_an_nsr_conv2d():
    layer = parametrizations.weight_norm(AuthorsConv2d(4, 8, 3, 2, 2, padding=1))
    triton_nsr.convert(layer, backend="torch")
    assert isinstance(layer, NSRConv2d)
    parametrize.remove_parametrizations(layer, "weight")
    assert type(layer) is NSRConv2d
    assert layer(torch.randn(1, 4, 5, 5)).shape == (1, 8, 5, 5)


def test_drop_in_layers_only_get_the_backend():
    layer = NSRConv2d(4, 8, 3, 2, 2, temperature=0.5)
    triton_nsr.convert(layer, backend="torch")
    assert type(layer) is NSRConv2d and layer.backend == "torch" and layer.temperature == 0.5


def test_other_modules_are_left_alone():
    conv = nn.Conv2d(4, 8, 3)
    model = nn.Sequential(conv, nn.Linear(3, 3))
    triton_nsr.convert(model)
    assert type(model[0]) is nn.Conv2d and type(model[1]) is nn.Linear
    assert not is_authors_layer(conv)
    assert is_authors_layer(AuthorsConv2d(4, 8, 3, 2, 2))


def test_bad_backend_is_rejected():
    with pytest.raises(ValueError, match="'cuda'"):
        triton_nsr.convert(nn.Sequential(), backend="cuda")


def test_converted_layer_runs_on_the_triton_backend():
    pytest.importorskip("triton_nsr.ops")
    layer = AuthorsConv2d(3, 4, 3, 2, 2, padding=1, dtype=torch.float64)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    expected = layer(x)
    triton_nsr.convert(layer, backend="triton")
    assert_close(layer(x), expected)


class ReLUAuthors(AuthorsConv2d):
    def forward(self, input):
        return super().forward(input).relu()


class DoubledAuthors(AuthorsConv2d):
    def _conv_forward(self, input, weight, bias):
        return 2 * super()._conv_forward(input, weight, bias)


class ScaledReference(reference.NSRConv2d):
    def forward(self, input):
        return 3 * super().forward(input)


class SquareAuthors(AuthorsConv2d):
    """Only new defaults: nothing to lose by a class change."""

    def __init__(self, channels):
        super().__init__(channels, channels, 3, 2, 2, padding=1, dtype=torch.float64)


@pytest.mark.parametrize("make,lost", [
    (lambda: ReLUAuthors(4, 8, 3, 2, 2), "ReLUAuthors.forward"),
    (lambda: DoubledAuthors(4, 8, 3, 2, 2), "DoubledAuthors._conv_forward"),
    (lambda: parametrizations.weight_norm(DoubledAuthors(4, 8, 3, 2, 2)),
     "DoubledAuthors._conv_forward"),
    (lambda: ScaledReference(4, 8, 3, 2, 2), "ScaledReference.forward"),
])
def test_subclasses_that_would_lose_methods_are_refused(make, lost):
    model = nn.Sequential(reference.NSRConv2d(4, 4, 3, 2, 2), make())
    state = [(type(m), dict(vars(m))) for m in model]
    with pytest.raises(TypeError, match=rf"1 \(\w+\).*would silently drop {lost}"):
        triton_nsr.convert(model, backend="torch")
    assert [(type(m), dict(vars(m))) for m in model] == state


def test_subclasses_that_only_change_init_are_converted():
    layer = SquareAuthors(4)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    expected = layer(x)
    triton_nsr.convert(layer, backend="torch")
    assert type(layer) is NSRConv2d
    assert_close(layer(x), expected)


def test_subclasses_of_nsr_conv2d_keep_their_class():
    class Sub(NSRConv2d):
        def forward(self, input):
            return super().forward(input) + 1

    layer = Sub(4, 8, 3, 2, 2, backend="torch")
    triton_nsr.convert(layer, backend="torch")
    assert type(layer) is Sub


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_authors_padding_mode_is_zeros_by_default_and_declared_on_request(mode):
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    layer = AuthorsConv2d(4, 8, 3, 2, 2, padding=1, padding_mode=mode, dtype=torch.float64)
    expected = layer(x)  # zero-padded, whatever the mode says
    with pytest.warns(UserWarning, match=f"padding_mode='{mode}'.*authors_padding='declared'"):
        triton_nsr.convert(layer, backend="torch")
    assert layer.padding_mode == "zeros"
    assert_close(layer(x), expected)

    declared = AuthorsConv2d(4, 8, 3, 2, 2, padding=1, padding_mode=mode, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        triton_nsr.convert(declared, backend="torch", authors_padding="declared")
    assert declared.padding_mode == mode
    params = (declared.weight, declared.bias, declared.mlp[0].weight, declared.mlp[0].bias)
    assert_close(declared(x), per_sample_loop(x, *params, 2, 2, padding=1, padding_mode=mode))


def test_bad_authors_padding_is_rejected():
    with pytest.raises(ValueError, match="'keep'"):
        triton_nsr.convert(nn.Sequential(), authors_padding="keep")


@pytest.mark.parametrize("spoil,match", [
    (lambda layer: setattr(layer, "temperature", -1.0), "temperature"),
    (lambda layer: setattr(layer, "out_channels", 13), "out_channels=13"),
    (lambda layer: setattr(layer, "num_sparsity_cardinals", 4), "num_sparsity_cardinals=4"),
    (lambda layer: setattr(layer, "groups", 4), "groups=4"),
    (lambda layer: setattr(layer, "in_channels", 0), "in_channels"),
])
def test_a_failed_conversion_leaves_the_model_unchanged(spoil, match):
    model = nn.Sequential(AuthorsConv2d(4, 8, 3, 2, 2, padding=1),
                          reference.NSRConv2d(8, 8, 3, 2, 2, padding=1),
                          AuthorsConv2d(8, 6, 3, 2, 2, padding_mode="reflect"))
    spoil(model[2])
    state = [(type(m), dict(vars(m))) for m in model]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the padding warning only comes with a conversion
        with pytest.raises(ValueError, match=match):
            triton_nsr.convert(model, backend="torch")
    assert [(type(m), dict(vars(m))) for m in model] == state
