"""torch.compile: NSR models trace as one graph and do not recompile for every batch size."""

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from tests.utils import assert_close
from triton_nsr import NSRConv2d
from triton_nsr.models import WDSRNSR

BATCH_SIZES = (2, 3, 5, 7, 11)


def tiny(backend="torch", device="cpu"):
    # Weight-norm hooks, NSR layers, residuals, the 5x5 skip and the pixel shuffle all traced.
    return WDSRNSR(scale=2, num_blocks=2, num_residual_units=4, width_multiplier=2,
                   num_sparsity_groups=2, num_sparsity_cardinals=2, backend=backend,
                   device=device)


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and runs them as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


@pytest.mark.slow
def test_fullgraph_compile_recompiles_at_most_once_across_batch_sizes():
    torch._dynamo.reset()
    model = tiny()
    counter = GraphCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for batch in BATCH_SIZES:
        x = torch.rand(batch, 3, 7, 9)
        out = compiled(x)
        out.square().mean().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.zero_grad()
        expected = model(x)
        expected.square().mean().backward()
        assert_close(out, expected)
        for name, p in model.named_parameters():
            assert_close(grads[name], p.grad, f"grad of {name}")
        model.zero_grad()
    # The first batch size compiles a static graph; the second makes the batch dynamic.
    assert counter.graphs <= 2


@pytest.mark.slow
def test_inductor_compiles_forward_and_backward_at_most_twice_across_batch_sizes():
    # One weight-normed layer keeps Inductor's C++ compilation short.
    torch._dynamo.reset()
    counters.clear()
    layer = nn.utils.parametrizations.weight_norm(
        NSRConv2d(3, 4, 3, 2, 2, padding=1, backend="torch"))
    compiled = torch.compile(layer, fullgraph=True)
    for batch in BATCH_SIZES:
        x = torch.rand(batch, 3, 7, 9, requires_grad=True)
        out = compiled(x)
        leaves = [x, *layer.parameters()]
        grads = torch.autograd.grad(out.square().sum(), leaves)
        expected = layer(x)
        expected_grads = torch.autograd.grad(expected.square().sum(), leaves)
        assert_close(out, expected)
        for grad, expected_grad in zip(grads, expected_grads):
            assert_close(grad, expected_grad)
    assert counters["stats"]["unique_graphs"] <= 2
    # Had the batch not stayed symbolic, Dynamo would have recompiled until its limit.
    assert counters["stats"]["unique_graphs"] >= 1


@pytest.fixture
def full_float32():
    """No TF32 on either side, so Inductor's own convolution choices compare at fp32 tolerance."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_inductor_on_cuda(backend, full_float32):
    if backend == "auto":
        pytest.importorskip("triton_nsr.ops")
    torch._dynamo.reset()
    counters.clear()
    model = tiny(backend, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    for batch in BATCH_SIZES:
        x = torch.rand(batch, 3, 24, 24, device="cuda")
        with torch.no_grad():
            assert_close(compiled(x), model(x))
    assert counters["stats"]["unique_graphs"] <= 2
