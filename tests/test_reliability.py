"""No silent wrong result, no opaque crash: every autograd mode, dtype and layout through the
public API, each either right (against a float64 oracle) or refused with a message naming what
is unsupported. The triton backend runs in Triton's CPU interpreter here."""

import pytest
import torch
import torch._dynamo
import torch.autograd.forward_ad as fwAD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.utils import assert_close, make_params, per_sample_loop
from triton_nsr import NSRConv2d, nsr_conv2d, reference
from triton_nsr.functional import conv_allows_tf32

pytest.importorskip("triton")

K, D = 2, 2


def small_problem(dtype=torch.float64, batch=2, channels_last=False):
    x = torch.randn(batch, 4, 5, 6, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    params = [p.detach().to(dtype) for p in make_params(4, 4, 3, K, D, dtype=torch.float64,
                                                        scale=0.5)]
    return x, params


def layer(backend, **kwargs):
    def f(x, *params):
        return nsr_conv2d(x, *params, K, D, padding=1, backend=backend, **kwargs)

    return f


def oracle(x, *params, **kwargs):
    return per_sample_loop(x, *params, K, D, padding=1, **kwargs)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("transform", ["jvp", "grad", "vjp", "vmap_grad", "jacrev"])
def test_triton_backend_refuses_torch_func_at_the_first_call(transform):
    x, params = small_problem(torch.float32)
    f = layer("triton")
    loss = lambda x: f(x, *params).sum()  # noqa: E731
    calls = {
        "jvp": lambda: torch.func.jvp(loss, (x,), (torch.ones_like(x),)),
        "grad": lambda: torch.func.grad(loss)(x),
        "vjp": lambda: torch.func.vjp(loss, x),
        "vmap_grad": lambda: torch.vmap(torch.func.grad(loss))(x[None]),
        "jacrev": lambda: torch.func.jacrev(loss)(x),
    }
    with pytest.raises(NotImplementedError, match="torch.func.*backend='torch'"):
        calls[transform]()


def test_triton_backend_refuses_forward_ad_on_the_module():
    module = NSRConv2d(4, 4, 3, K, D, padding=1, backend="triton")
    x = torch.randn(2, 4, 5, 6)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="forward-mode AD"):
        module(fwAD.make_dual(x, torch.ones_like(x)))


def test_triton_backend_refuses_double_backward_at_the_first_backward():
    x, params = small_problem(torch.float32)
    params[0].requires_grad_()
    out = layer("triton")(x, *params)
    with pytest.raises(NotImplementedError, match="double backward.*backend='torch'"):
        torch.autograd.grad(out.square().sum(), params[0], create_graph=True)


def test_bfloat16_in_the_interpreter_takes_the_torch_backend_or_is_refused():
    x, params = small_problem(torch.bfloat16)
    out = layer("auto")(x, *params)
    expected = oracle(x.double(), *[p.double() for p in params])
    assert_close(out, expected, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="no bfloat16 arithmetic"):
        layer("triton")(x, *params)


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_float16_routing_stays_finite_at_a_small_temperature(backend):
    # Logits of +-10 at temperature 1e-4 are +-1e5: past float16's range, not float32's.
    x, params = small_problem(torch.float16)
    params[2] = torch.full_like(params[2], 10.0) * torch.tensor([1.0, -1.0]).repeat(
        params[2].numel() // 2).view_as(params[2]).half()
    for temperature in (1e-4, 1e-9):
        out = layer(backend, temperature=temperature)(x, *params)
        assert torch.isfinite(out).all()
        expected = oracle(x.double(), *[p.double() for p in params], temperature=temperature)
        assert_close(out, expected, dtype=torch.float16)


@pytest.fixture
def restore_precision_flags():
    backends = torch.backends
    saved = (backends.cudnn.conv.fp32_precision, backends.cudnn.fp32_precision,
             backends.fp32_precision)
    yield
    (backends.cudnn.conv.fp32_precision, backends.cudnn.fp32_precision,
     backends.fp32_precision) = saved
    backends.cudnn.allow_tf32 = True


def test_tf32_follows_the_new_precision_api(restore_precision_flags):
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    assert conv_allows_tf32() is False
    x, params = small_problem(torch.float32)
    # The legacy flag cannot be read in this state; the layer must still run.
    assert_close(layer("triton")(x, *params), oracle(x.double(), *[p.double() for p in params]),
                 dtype=torch.float32)
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    assert conv_allows_tf32() is True
    torch.backends.cudnn.conv.fp32_precision = "none"
    torch.backends.cudnn.fp32_precision = "ieee"
    assert conv_allows_tf32() is False


# ----------------------------------------------------------------------------- batch 0, compile


def test_reference_layer_backpropagates_through_batch_zero():
    layer_ = reference.NSRConv2d(4, 4, 3, K, D, padding=1)
    x = torch.randn(0, 4, 5, 6, requires_grad=True)
    out = layer_(x)
    assert out.shape == (0, 4, 5, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and not p.grad.any() for p in layer_.parameters())


@pytest.fixture
def strict_dynamo():
    """Dynamo raises when it would give up and run eager, so a compiled test can fail."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=4):
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("dynamic", [None, True])
def test_compile_follows_temperature_changes(strict_dynamo, dynamic):
    module = NSRConv2d(4, 4, 3, K, D, padding=1, backend="torch")
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    x = torch.randn(2, 4, 5, 6)
    for temperature in (1.0, 0.5, 0.25, 3.0):
        module.temperature = temperature
        assert_close(compiled(x), module(x))


def test_invalid_temperature_is_refused_under_compile(strict_dynamo):
    module = NSRConv2d(4, 4, 3, K, D, padding=1, backend="torch")
    compiled = torch.compile(module, backend="aot_eager", dynamic=True)
    x = torch.randn(2, 4, 5, 6)
    compiled(x)
    module.temperature = float("nan")
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        compiled(x)


# ----------------------------------------------------------------------------- drawn cases

MODES = ["reverse", "forward", "double", "func_grad"]
REFUSED_ON_TRITON = {"forward": "forward-mode AD", "double": "double backward",
                     "func_grad": "torch.func"}


def relative_check(actual, expected, dtype, name):
    """|actual - expected| within dtype's tolerance of the expected values' scale."""
    atol, rtol = {torch.float64: (1e-9, 1e-7), torch.float32: (1e-4, 1e-4),
                  torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 4e-2)}[dtype]
    assert actual.shape == expected.shape, name
    assert torch.isfinite(actual).all(), f"{name}: non-finite"
    error = (actual.double() - expected).abs().max()
    assert error <= atol * expected.abs().max().clamp(min=1) + rtol * expected.abs().max(), \
        f"{name}: error {error:.3g}"


def squared_norm(t):
    # A mean in float32 at least: summed squares of float16 gradients overflow float16's range,
    # and so would the second derivative of a sum.
    return t.to(torch.promote_types(t.dtype, torch.float32)).square().mean()


def run_mode(f, mode, x, weight, rest):
    """The quantity each autograd mode computes: output and the derivative it asks for."""
    if mode == "reverse":
        w = weight.clone().requires_grad_()
        out = f(x, w, *rest)
        (grad,) = torch.autograd.grad(squared_norm(out), w)
        return out, grad
    if mode == "forward":
        with fwAD.dual_level():
            out = f(x, fwAD.make_dual(weight, torch.ones_like(weight)), *rest)
            out, tangent = fwAD.unpack_dual(out)
        return out, tangent
    if mode == "double":
        w = weight.clone().requires_grad_()
        (grad,) = torch.autograd.grad(squared_norm(f(x, w, *rest)), w, create_graph=True)
        (grad_of_grad,) = torch.autograd.grad(squared_norm(grad), w)
        return grad, grad_of_grad
    out = f(x, weight, *rest)
    return out, torch.func.grad(lambda w: squared_norm(f(x, w, *rest)))(weight)


@pytest.mark.slow
@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(backend=st.sampled_from(["torch", "triton", "auto"]),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]),
       channels_last=st.booleans(), mode=st.sampled_from(MODES), compiled=st.booleans())
def test_drawn_cases_are_right_or_refused(backend, dtype, channels_last, mode, compiled):
    x, (weight, *rest) = small_problem(dtype, channels_last=channels_last)
    effective = "torch" if backend == "auto" and dtype == torch.bfloat16 else backend
    effective = "triton" if effective == "auto" else effective
    f = layer(backend)
    if compiled:
        if mode != "reverse":
            compiled = False  # Dynamo traces reverse mode; the other modes run eagerly
        else:
            torch._dynamo.reset()
            f = torch.compile(f, backend="aot_eager", fullgraph=True)
    refusals = []
    if effective == "triton" and dtype == torch.bfloat16:
        refusals.append("no bfloat16 arithmetic")
    if effective == "triton" and mode in REFUSED_ON_TRITON:
        refusals.append(REFUSED_ON_TRITON[mode])
    if refusals:
        with pytest.raises(NotImplementedError, match="|".join(refusals)):
            run_mode(f, mode, x, weight, rest)
        return
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        out, derivative = run_mode(f, mode, x, weight, rest)
    high = [t.double() for t in (x, weight, *rest)]
    expected, expected_derivative = run_mode(oracle, mode, high[0], high[1], high[2:])
    relative_check(out, expected, dtype, f"{mode} output")
    relative_check(derivative, expected_derivative, dtype, f"{mode} derivative")
    if mode != "double":
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert out.is_contiguous(memory_format=layout), "the output takes the input's layout"
