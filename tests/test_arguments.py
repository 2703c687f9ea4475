"""Bad input raises a clear exception naming the offending value, on every backend."""

import pytest
import torch

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
    ("padding mode", dict(padding_mode="mirror"), ValueError, "'mirror'"),
    ("backend", dict(backend="cuda"), ValueError, "'cuda'"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name,override,error,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_with_its_value(name, override, error, match, backend):
    kwargs = {**good(), "backend": backend, **override}
    with pytest.raises(error, match=match):
        nsr_conv2d(**kwargs)


def test_good_input_passes_the_same_checks():
    assert nsr_conv2d(**good(), backend="torch").shape == (2, 6, 6, 6)


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
