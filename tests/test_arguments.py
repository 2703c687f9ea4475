"""Bad input raises a clear exception naming the offending value, on every backend."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from triton_nsr import NSRConv2d, nsr_conv2d
from triton_nsr.functional import resolve_backend


def good():
    return dict(
        input=torch.randn(2, 4, 8, 8),
        weight=torch.randn(2 * 6, 4, 3, 3),
        bias=torch.randn(12),
        mlp_weight=torch.randn(2 * 3, 4),
        mlp_bias=torch.randn(6),
        num_sparsity_groups=2,
        num_sparsity_cardinals=3,
    )


BAD = [
    ("rank", dict(input=torch.randn(2, 2, 4, 8, 8)), ValueError, r"size: \[2, 2, 4, 8, 8\]"),
    ("channels", dict(input=torch.randn(2, 5, 8, 8)), ValueError, "5 channels"),
    ("int dtype", dict(input=torch.ones(2, 4, 8, 8, dtype=torch.int64)), TypeError, "int64"),
    ("complex", dict(input=torch.randn(2, 4, 8, 8, dtype=torch.complex64)), TypeError,
     "complex64"),
    ("dtype mismatch", dict(weight=torch.randn(12, 4, 3, 3, dtype=torch.float64)), TypeError,
     "float64"),
    ("mlp dtype", dict(mlp_weight=torch.randn(6, 4, dtype=torch.float64)), TypeError, "mlp_weight"),
    ("device", dict(bias=torch.randn(12, device="meta")), ValueError, "meta"),
    ("stride", dict(stride=0), ValueError, r"stride must be positive, got \(0, 0\)"),
    ("dilation", dict(dilation=(1, -1)), ValueError, r"dilation must be positive, got \(1, -1\)"),
    ("groups", dict(groups=0), ValueError, "groups must be a positive integer, got 0"),
    ("padding", dict(padding=-1), ValueError, r"padding must be non-negative, got \(-1, -1\)"),
    ("padding string", dict(padding="full"), ValueError, "'full'"),
    ("groups divide", dict(groups=3), ValueError, r"in_channels \(4\) must be divisible by groups"),
    ("same strided", dict(padding="same", stride=2), ValueError, r"stride=\(2, 2\)"),
    ("kernel too big", dict(input=torch.randn(2, 4, 2, 8)), ValueError, r"\(2 x 8\)"),
    ("cardinals", dict(num_sparsity_cardinals=4, mlp_weight=torch.randn(8, 4),
                       mlp_bias=torch.randn(8)), ValueError, r"out_channels \(6\).*\(4\)"),
    ("groups rows", dict(weight=torch.randn(13, 4, 3, 3)), ValueError, r"\(13\)"),
    ("mlp rows", dict(mlp_weight=torch.randn(5, 4)), ValueError, r"\(6, 4\), got \(5, 4\)"),
    ("mlp cols", dict(mlp_weight=torch.randn(6, 3)), ValueError, r"got \(6, 3\)"),
    ("mlp bias", dict(mlp_bias=torch.randn(7)), ValueError, r"got \(7,\)"),
    ("bias", dict(bias=torch.randn(6)), ValueError, r"\(12,\), got \(6,\)"),
    ("k", dict(num_sparsity_groups=0), ValueError, "num_sparsity_groups .* got 0"),
    ("temperature", dict(temperature=0.0), ValueError, "temperature .* got 0.0"),
    ("temperature nan", dict(temperature=float("nan")), ValueError, "nan"),
    # Below float32's smallest normal number the router's logits overflowed to inf (NaN out),
    # and a GPU may flush the kernels' subnormal temperature to 0; above its largest, the
    # kernels' float32 temperature is inf.
    ("temperature tiny", dict(temperature=1e-40), ValueError, "temperature must be between"),
    ("temperature huge", dict(temperature=1e300), ValueError, r"3\.403e\+38.*got 1e\+300"),
    ("padding mode", dict(padding_mode="mirror"), ValueError, "'mirror'"),
    ("backend", dict(backend="cuda"), ValueError, "'cuda'"),
    ("stride bool", dict(stride=True), TypeError, "True"),
    ("stride float", dict(stride=2.0), TypeError, "2.0"),
    ("stride past int64", dict(stride=2**64), ValueError, "stride must fit in a 64-bit integer"),
    ("padding numpy float", dict(padding=(1, np.float64(1.0))), TypeError, r"1\.0"),
    ("groups numpy bool", dict(groups=np.bool_(True)), ValueError, "True"),
    ("no channels", dict(input=torch.randn(2, 0, 8, 8), weight=torch.randn(12, 0, 3, 3),
                         mlp_weight=torch.randn(6, 0)), ValueError, "0 channels"),
    ("empty image", dict(input=torch.randn(2, 4, 0, 0), padding=2), ValueError,
     r"\(0 x 0"),
    ("empty rows", dict(input=torch.randn(2, 4, 0, 5), padding=(2, 0)), ValueError,
     r"\(0 x 5"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name,override,error,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_with_its_value(name, override, error, match, backend):
    kwargs = {**good(), "backend": backend, **override}
    with pytest.raises(error, match=match):
        nsr_conv2d(**kwargs)


def test_good_input_passes_the_same_checks():
    assert nsr_conv2d(**good(), backend="torch").shape == (2, 6, 6, 6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_numpy_and_tensor_integers_are_accepted_like_f_conv2d(backend):
    kwargs = {**good(), "input": torch.randn(2, 4, 9, 8), "weight": torch.randn(12, 2, 3, 3),
              "backend": backend}
    expected = nsr_conv2d(**kwargs, stride=2, padding=(1, 2), dilation=1, groups=2)
    ints = dict(stride=np.int64(2), padding=(np.int32(1), torch.tensor(2)),
                dilation=torch.tensor(1), groups=np.uint8(2),
                num_sparsity_groups=np.int64(2), num_sparsity_cardinals=np.int16(3))
    torch.testing.assert_close(nsr_conv2d(**{**kwargs, **ints}), expected, rtol=0, atol=0)


def test_module_with_numpy_integer_arguments_runs():
    layer = NSRConv2d(np.int64(4), np.int64(6), np.int64(3), np.int64(2), np.int64(3),
                      stride=np.int64(2), padding=np.int64(1), groups=np.int64(2),
                      backend="torch")
    assert layer(torch.randn(1, 4, 7, 7)).shape == (1, 6, 4, 4)


def test_module_without_input_channels_is_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nn.Conv2d: zero-element init
        with pytest.raises(ValueError, match="in_channels must be a positive|0 channels"):
            NSRConv2d(0, 8, 3, 2, backend="torch")(torch.randn(1, 0, 5, 5))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("padding", [0, 1, 2, (2, 0), (0, 2)])
@pytest.mark.parametrize("shape", [(2, 4, 0, 0), (2, 4, 0, 5), (1, 4, 5, 0), (0, 4, 0, 0),
                                   (0, 4, 5, 0)])
def test_empty_images_are_refused_where_f_conv2d_refuses_them(shape, padding, backend):
    kwargs = {**good(), "input": torch.randn(shape), "padding": padding, "backend": backend}
    try:
        expected = F.conv2d(kwargs["input"], kwargs["weight"][:6], padding=padding).shape
    except RuntimeError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError, match=rf"\({shape[2]} x {shape[3]}|Kernel size"):
            nsr_conv2d(**kwargs)
    else:
        assert shape[0] == 0  # F.conv2d only accepts no pixels in an empty batch
        assert nsr_conv2d(**kwargs).shape == expected


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_sparsity_cardinals=3), r"out_channels \(8\) must be divisible"),
        (dict(num_sparsity_groups=0), "num_sparsity_groups"),
        (dict(temperature=-1.0), "temperature"),
        (dict(groups=3), "groups"),
        (dict(backend="gpu"), "'gpu'"),
    ],
)
def test_module_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        NSRConv2d(6, 8, 3, **{"num_sparsity_groups": 2, **kwargs})


def test_triton_backend_without_cuda_or_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend='triton' needs CUDA"):
        resolve_backend("triton", torch.randn(1))
    assert resolve_backend("auto", torch.randn(1)) == "torch"


def test_checked_geometry_is_reused_and_bad_arguments_still_raise():
    from triton_nsr import arguments

    x = torch.randn(2, 4, 6, 6)
    weight, bias = torch.randn(12, 4, 3, 3), torch.randn(12)
    mlp_weight, mlp_bias = torch.randn(6, 4), torch.randn(6)
    args = (x, weight, bias, mlp_weight, mlp_bias, 2, 3, 1, [1, 1], 1, 1)
    first = arguments.check_nsr_conv2d(*args)
    assert arguments.check_nsr_conv2d(*args) is first  # the stored geometry
    assert arguments.check_nsr_conv2d.__wrapped__(*args) == first  # equal to a fresh check
    # The key holds everything the checks read: another padding, dtype or MLP shape is
    # checked again, and a failing set raises every time.
    assert arguments.check_nsr_conv2d(*args[:8], [0, 0], *args[9:]).pad == (0, 0, 0, 0)
    for _ in range(2):
        with pytest.raises(ValueError, match="mlp_weight must have shape"):
            arguments.check_nsr_conv2d(x, weight, bias, torch.randn(6, 5), *args[4:])
        with pytest.raises(TypeError, match="dtype"):
            arguments.check_nsr_conv2d(x.double(), *args[1:])


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["stride", "padding", "dilation", "groups",
                                  "num_sparsity_groups", "num_sparsity_cardinals"])
def test_integer_arguments_given_as_tensors_are_read_by_value_every_call(name, backend):
    # The checked-arguments cache keys tensors by shape, dtype and device: a number given as a
    # tensor must not be keyed that way, or a second value would get the first one's geometry.
    kwargs = {**good(), "input": torch.randn(2, 4, 9, 8), "weight": torch.randn(12, 2, 3, 3),
              "backend": backend, "stride": 1, "padding": 1, "dilation": 1, "groups": 2}
    values = {"stride": (2, 1), "padding": (2, 0), "dilation": (2, 1), "groups": (1, 2),
              "num_sparsity_groups": (3, 2), "num_sparsity_cardinals": (3, 1)}[name]
    for value in (*values, *values):
        arguments = {**kwargs, name: value}
        if name == "groups":
            arguments["weight"] = torch.randn(12, 4 // value, 3, 3)
        if name == "num_sparsity_groups":
            arguments["weight"] = torch.randn(value * 6, 2, 3, 3)
            arguments["bias"] = torch.randn(value * 6)
            arguments["mlp_weight"] = torch.randn(value * 3, 4)
            arguments["mlp_bias"] = torch.randn(value * 3)
        if name == "num_sparsity_cardinals":
            arguments["mlp_weight"] = torch.randn(2 * value, 4)
            arguments["mlp_bias"] = torch.randn(2 * value)
        expected = nsr_conv2d(**arguments)
        as_tensor = nsr_conv2d(**{**arguments, name: torch.tensor(value)})
        torch.testing.assert_close(as_tensor, expected, rtol=0, atol=0)


def test_temperature_that_requires_grad_is_refused_by_the_triton_backend():
    kwargs = {**good(), "backend": "triton"}
    temperature = torch.tensor(0.5, requires_grad=True)
    with pytest.raises(NotImplementedError, match="does not differentiate the temperature"):
        nsr_conv2d(**kwargs, temperature=temperature)
    # Detached, or without grad mode, it is a fixed number: the call runs.
    fixed = nsr_conv2d(**kwargs, temperature=0.5)
    torch.testing.assert_close(nsr_conv2d(**kwargs, temperature=temperature.detach()), fixed)
    with torch.no_grad():
        torch.testing.assert_close(nsr_conv2d(**kwargs, temperature=temperature), fixed)
