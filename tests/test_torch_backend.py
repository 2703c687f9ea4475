"""The torch backend's contract: autograd in every mode, torch.func, export, layouts, autocast.

The torch backend runs the per-sample convolution as one grouped convolution behind opaque ops
(triton_nsr.grouped_conv). These tests hold it to what nn.Conv2d users rely on, against the
independent per-sample oracle or finite differences.
"""

import functools

import pytest
import torch
from torch import nn

from tests.utils import assert_close, assert_same_outputs_and_grads, make_params, per_sample_loop
from triton_nsr import NSRConv2d, nsr_conv2d
from triton_nsr.grouped_conv import grouped_conv2d, grouped_conv2d_backward
from triton_nsr.models import WDSRNSR

# (in, out, kernel, k, d, stride, padding, dilation, groups, size): strided, dilated, grouped,
# asymmetric 'same' padding.
GEOMETRIES = {
    "plain": (2, 4, 3, 2, 2, 1, 1, 1, 1, (4, 4)),
    "strided_grouped": (2, 2, (3, 2), 2, 1, (2, 1), (1, 0), (1, 2), 2, (5, 4)),
    "same_even_kernel": (2, 2, 2, 2, 1, 1, "same", 1, 1, (4, 3)),
}


def layer_function(geometry, batch=2, dtype=torch.float64, bias=True):
    """(f(x, weight, bias, mlp_weight, mlp_bias), inputs) for one geometry."""
    cin, cout, ks, k, d, stride, padding, dilation, groups, size = geometry
    inputs = [torch.randn(batch, cin, *size, dtype=dtype).requires_grad_(),
              *make_params(cin, cout, ks, k, d, groups, bias, dtype=dtype, scale=0.5)]
    inputs[3] = inputs[3].detach().mul(0.25).requires_grad_()  # keep the softmax smooth for FD

    def f(x, w, b, mw, mb):
        return nsr_conv2d(x, w, b, mw, mb, k, d, stride, padding, dilation, groups,
                          temperature=0.8, backend="torch")

    return f, [t for t in inputs if t is not None]


def with_bias_slot(f, bias):
    """f over the tensors that exist (no None for a missing bias)."""
    if bias:
        return f
    return lambda x, w, mw, mb: f(x, w, None, mw, mb)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_gradcheck_and_gradgradcheck_in_float64(name):
    f, inputs = layer_function(GEOMETRIES[name])
    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_gradcheck_without_bias_and_batch_one():
    f, inputs = layer_function(GEOMETRIES["strided_grouped"], batch=1, bias=False)
    assert torch.autograd.gradcheck(with_bias_slot(f, False), inputs, check_forward_ad=True)


def finite_difference(f, inputs, tangents, eps=1e-6):
    plus = f(*(t + eps * v for t, v in zip(inputs, tangents)))
    minus = f(*(t - eps * v for t, v in zip(inputs, tangents)))
    return (plus - minus) / (2 * eps)


def test_torch_func_jvp_equals_finite_differences():
    f, inputs = layer_function(GEOMETRIES["strided_grouped"])
    primals = [t.detach() for t in inputs]
    tangents = [torch.randn_like(t) for t in primals]
    output, tangent_out = torch.func.jvp(f, tuple(primals), tuple(tangents))
    assert_close(output, f(*primals))
    assert_close(tangent_out, finite_difference(f, primals, tangents), dtype=torch.float32)


def test_forward_ad_equals_finite_differences():
    import torch.autograd.forward_ad as fwAD

    f, inputs = layer_function(GEOMETRIES["plain"])
    primals = [t.detach() for t in inputs]
    tangents = [torch.randn_like(t) for t in primals]
    with fwAD.dual_level():
        dual = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        tangent_out = fwAD.unpack_dual(f(*dual)).tangent
    assert tangent_out is not None
    assert_close(tangent_out, finite_difference(f, primals, tangents), dtype=torch.float32)


def test_torch_func_grad_equals_finite_differences():
    f, inputs = layer_function(GEOMETRIES["same_even_kernel"])
    primals = [t.detach() for t in inputs]
    cotangent = torch.randn_like(f(*primals))

    def loss(*args):
        return (f(*args) * cotangent).sum()

    grads = torch.func.grad(loss, argnums=tuple(range(len(primals))))(*primals)
    for grad, primal in zip(grads, primals):
        direction = torch.randn_like(primal)
        directions = [direction if p is primal else torch.zeros_like(p) for p in primals]
        expected = finite_difference(loss, primals, directions)
        assert_close((grad * direction).sum(), expected, dtype=torch.float32)


def test_vmap_over_a_leading_dimension_equals_a_loop():
    f, inputs = layer_function(GEOMETRIES["strided_grouped"])
    x, *params = [t.detach() for t in inputs]
    stacked = torch.stack([torch.randn_like(x) for _ in range(3)])
    batched = torch.vmap(f, in_dims=(0, None, None, None, None))(stacked, *params)
    assert_close(batched, torch.stack([f(xs, *params) for xs in stacked]))
    # vmap of grad: per-example gradients of the kernel bank.
    per_example = torch.vmap(torch.func.grad(lambda x, w: f(x, w, *params[1:]).square().sum(),
                                             argnums=1), in_dims=(0, None))(stacked, params[0])
    for xs, grad in zip(stacked, per_example):
        w = params[0].clone().requires_grad_()
        f(xs, w, *params[1:]).square().sum().backward()
        assert_close(grad, w.grad)


def test_hessian_forward_over_reverse_equals_reverse_over_reverse():
    f, inputs = layer_function(GEOMETRIES["plain"], batch=1)
    x, w, *rest = [t.detach() for t in inputs]
    w = w[:, :, :2, :2].contiguous()  # a small kernel keeps the Hessian small

    def loss(w):
        return f(x, w, *rest).square().sum()

    forward_over_reverse = torch.func.jacfwd(torch.func.jacrev(loss))(w)
    reverse_over_reverse = torch.func.jacrev(torch.func.jacrev(loss))(w)
    assert_close(forward_over_reverse, reverse_over_reverse)


def test_ops_pass_opcheck():
    x = torch.randn(3, 4, 6, 5, dtype=torch.float64)
    weight = torch.randn(3, 6, 2, 3, 2, dtype=torch.float64)
    bias = torch.randn(3, 6, dtype=torch.float64)
    geometry = ([2, 1], [1, 0], [1, 2], 2)
    torch.library.opcheck(grouped_conv2d, (x, weight, bias, *geometry))
    output = grouped_conv2d(x, weight, bias, *geometry)
    torch.library.opcheck(grouped_conv2d_backward, (torch.randn_like(output), x, weight,
                                                    *geometry, [True, True, True]))


def test_export_with_a_dynamic_batch():
    layer = NSRConv2d(4, 8, 3, 2, 2, stride=2, padding=1, backend="torch")
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(layer, (torch.randn(3, 4, 9, 9),),
                                   dynamic_shapes={"input": {0: batch}})
    for size in (1, 5):
        x = torch.randn(size, 4, 9, 9)
        assert_close(exported.module()(x), layer(x))


def test_channels_last_in_gives_channels_last_out_like_nn_conv2d():
    layer = NSRConv2d(4, 6, 3, 2, 3, padding=1, dtype=torch.float64, backend="torch")
    static = nn.Conv2d(4, 6, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 4, 7, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    out = layer(x)
    assert static(x).is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert_close(out, layer(x.contiguous()))
    assert layer(x.contiguous()).is_contiguous()


def test_batch_zero_forward_and_backward():
    layer = NSRConv2d(4, 6, 3, 2, 3, stride=2, padding=1, dtype=torch.float64, backend="torch")
    x = torch.randn(0, 4, 9, 7, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.shape == (0, 6, 5, 4)
    grads = torch.autograd.grad(out.sum(), [x, *layer.parameters()], allow_unused=True)
    assert grads[0].shape == x.shape
    for grad, parameter in zip(grads[1:], layer.parameters()):
        assert grad is None or (grad.shape == parameter.shape and not grad.any())


def test_in_place_ops_after_the_layer_backpropagate():
    # ReLU(inplace=True) right after the layer, as in WDSR's residual blocks.
    f, inputs = layer_function(GEOMETRIES["plain"])
    out = torch.relu_(f(*inputs))
    grads = torch.autograd.grad(out.sum(), inputs)
    expected = torch.autograd.grad(
        torch.relu(per_sample_loop(*inputs, 2, 2, 1, 1, temperature=0.8)).sum(), inputs)
    for grad, reference in zip(grads, expected):
        assert_close(grad, reference)


@pytest.mark.parametrize("model", ["stack", "wdsr"])
def test_cpu_autocast_runs_in_bfloat16_and_matches_float32(model):
    if model == "stack":
        net = nn.Sequential(NSRConv2d(3, 8, 3, 2, 4, padding=1, backend="torch"), nn.ReLU(),
                            NSRConv2d(8, 8, 3, 4, 2, padding=1, backend="torch"), nn.ReLU(),
                            NSRConv2d(8, 3, 3, 2, 1, padding=1, backend="torch"))
    else:
        net = WDSRNSR(scale=2, num_blocks=2, num_residual_units=4, width_multiplier=2,
                      num_sparsity_groups=2, num_sparsity_cardinals=2, backend="torch")
    x = torch.rand(2, 3, 12, 10)
    expected = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: compare relative to the output's scale.
    scale = expected.abs().max()
    assert (out.float() - expected).abs().max() <= 0.05 * scale
    out.float().square().mean().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter.grad).all(), name


def test_the_batch_stays_symbolic_under_export_and_compile_without_conv_groups():
    """The grouped convolution is opaque: no traced graph has groups = B."""
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    f = functools.partial(nsr_conv2d, num_sparsity_groups=2, num_sparsity_cardinals=2,
                          padding=1, backend="torch")
    params = [p.detach() for p in make_params(4, 8, 3, 2, 2, dtype=torch.float32)]
    compiled = torch.compile(f, backend=record, fullgraph=True, dynamic=True)
    compiled(torch.randn(5, 4, 6, 6), *params)
    targets = {str(node.target) for g in graphs for node in g.graph.nodes}
    assert any("grouped_conv2d" in t for t in targets)
    assert not any("conv2d" in t and "grouped" not in t for t in targets)


def test_a_temperature_that_requires_grad_learns_as_in_the_oracle():
    # A layer whose temperature is a Parameter: the torch backend differentiates it (it used to
    # read it as a float, so the output did not even require grad), as the oracle does.
    inputs = [torch.randn(2, 4, 5, 5, dtype=torch.float64),
              *make_params(4, 4, 3, 2, 2, dtype=torch.float64, scale=0.5),
              torch.tensor(0.7, dtype=torch.float64)]

    def ours(x, w, b, mw, mb, t):
        return nsr_conv2d(x, w, b, mw, mb, 2, 2, padding=1, temperature=t, backend="torch")

    def oracle(x, w, b, mw, mb, t):
        return per_sample_loop(x, w, b, mw, mb, 2, 2, padding=1, temperature=t)

    assert_same_outputs_and_grads(ours, oracle, inputs,
                                  ["x", "weight", "bias", "mlp_weight", "mlp_bias", "temperature"])
    leaves = [t.clone().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(ours, leaves)

    layer = NSRConv2d(4, 4, 3, 2, 2, padding=1, backend="torch", dtype=torch.float64)
    layer.temperature = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    layer(inputs[0]).square().sum().backward()
    assert layer.temperature.grad is not None and layer.temperature.grad != 0


@pytest.mark.parametrize("temperature", [1e-37, 1e-20, 1e30])
def test_extreme_temperatures_give_the_limits_of_the_softmax(temperature):
    # z / T overflowed for a small T (the softmax was NaN); shifted by the peak first, a small T
    # routes each cardinal to its largest logit alone, and a large T mixes the k groups evenly.
    x = torch.randn(3, 4, 5, 5)
    w, b, mw, mb = make_params(4, 4, 3, 2, 2, dtype=torch.float32)
    mw = mw * 1e3  # logits far apart: a small temperature picks one group
    y = nsr_conv2d(x, w, b, mw, mb, 2, 2, padding=1, temperature=temperature, backend="torch")
    logits = (x.mean(dim=(2, 3)) @ mw.T + mb).view(3, 2, 2)
    if temperature < 1:
        limit = torch.nn.functional.one_hot(logits.argmax(1), 2).transpose(1, 2).float()
    else:
        limit = torch.full_like(logits, 0.5)
    expected = per_sample_loop(x, w, b, mw, mb, 2, 2, padding=1, routing=limit)
    assert_close(y, expected, "output", torch.float32)
