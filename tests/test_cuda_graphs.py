"""CUDA graphs, as users take them: the compiled graph's shape on CPU, capture and replay on a GPU.

On CPU (the interpreter): torch.compile of a WDSR-NSR training step traces the whole model in
one graph with each NSR layer's forward and backward op once, neither tagged
``cudagraph_unsafe``, and the compiled step's losses follow eager. What a capture needs of a
known call (no JIT run, compile, autotune or host read; only PyTorch's allocator) is counted
with Triton's real JIT in tests/test_host_path.py. On a GPU (marked gpu): a layer captured by
``torch.cuda.make_graphed_callables`` replays eager bit for bit, also after its input is
overwritten in place; a whole training step captured by ``torch.cuda.graph``, and one compiled
with ``mode="reduce-overhead"``, train as eager does. docs/models.md has the recipe.
"""

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from tests.utils import assert_close
from triton_nsr import NSRConv2d
from triton_nsr.models import WDSRNSR

ops = pytest.importorskip("triton_nsr.ops")


def small_model(device="cpu", backend="triton", units=4, width=2, d=2):
    """WDSR-NSR with two residual blocks (four NSR layers), the same parameters every time
    (weight-normed models do not deepcopy)."""
    torch.manual_seed(0)
    return WDSRNSR(scale=2, num_blocks=2, num_residual_units=units, width_multiplier=width,
                   num_sparsity_groups=2, num_sparsity_cardinals=d, backend=backend,
                   device=device)


class CapturedGraphs:
    """An aot_autograd backend that keeps the forward and backward graphs it compiles."""

    def __init__(self):
        from torch._dynamo.backends.common import aot_autograd

        self.forward, self.backward = [], []

        def keep(graphs):
            def compiler(graph_module, example_inputs):
                graphs.append(graph_module)
                return graph_module.forward
            return compiler

        self.backend = aot_autograd(fw_compiler=keep(self.forward),
                                    bw_compiler=keep(self.backward))


def _calls(graph_module, op) -> int:
    return sum(1 for node in graph_module.graph.nodes
               if node.op == "call_function" and node.target is op)


@pytest.mark.slow
def test_compiled_training_step_has_each_layer_op_once_and_no_graph_break():
    torch._dynamo.reset()
    model, eager = small_model(), small_model()  # the same seed: the same parameters
    graphs = CapturedGraphs()
    compiled = torch.compile(model, backend=graphs.backend, fullgraph=True)
    lr, hr = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 12, 12)
    losses = []
    for net in (compiled, eager):
        loss = F.l1_loss(net(lr), hr)
        loss.backward()
        losses.append(loss.detach())
    assert_close(losses[0], losses[1])
    for (name, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
        assert_close(p.grad, q.grad, f"grad of {name}")
    # fullgraph=True: one graph each way, or Dynamo would have raised at a break.
    assert len(graphs.forward) == 1 and len(graphs.backward) == 1
    layers = sum(isinstance(m, NSRConv2d) for m in model.modules())
    assert layers == 4
    assert _calls(graphs.forward[0], torch.ops.triton_nsr.nsr_layer.default) == layers
    assert _calls(graphs.backward[0], torch.ops.triton_nsr.nsr_layer_backward.default) == layers
    for op in (torch.ops.triton_nsr.nsr_layer.default,
               torch.ops.triton_nsr.nsr_layer_backward.default):
        assert torch.Tag.cudagraph_unsafe not in op.tags


def test_compiled_layer_saves_what_eager_saves():
    # The compiled path runs the eager path's kernels: an NCHW input whose columns TMA cannot
    # box is read through its channels_last copy, made by the pooling pass and saved for the
    # kernel gradient, in both (the copy is decided from shapes and strides only).
    x = torch.randn(2, 8, 7, 13)
    weight, bias = torch.randn(2 * 16, 8, 3, 3), torch.randn(2 * 16)
    mlp_weight, mlp_bias = torch.randn(2 * 4, 8), torch.randn(2 * 4)
    static = (2, 4, 1.0, [1, 1], [1, 1, 1, 1], [1, 1], 1, False)
    outputs = ops.nsr_layer_op(x, None, weight, bias, mlp_weight, mlp_bias, *static, True)
    fake = ops._nsr_layer_fake(x, None, weight, bias, mlp_weight, mlp_bias, *static, True)
    for real, shape_only in zip(outputs, fake):
        assert real.shape == shape_only.shape and real.stride() == shape_only.stride()
        assert real.dtype == shape_only.dtype
    plan = ops._plan_of(x, None, weight, bias, mlp_weight, mlp_bias, 2, 4, [1, 1],
                        [1, 1, 1, 1], [1, 1], 1, False, True)
    assert outputs[5].numel() == (x.numel() if plan.copy else 0)


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_graphed_layer_replays_eager_bit_for_bit():
    from triton_nsr.kernels import tuned_configs

    layer = NSRConv2d(32, 128, 3, 4, 16, padding=1, backend="triton", device="cuda")
    x = torch.randn(16, 32, 48, 48, device="cuda", dtype=torch.float32,
                    requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(layer, (x,))  # warms up, then captures
    autotuned = tuned_configs.telemetry.autotuned
    for _ in range(2):
        dy = torch.randn(16, 128, 48, 48, device="cuda")
        out = graphed(x)
        grads = torch.autograd.grad(out, [x, *layer.parameters()], dy)
        expected = layer(x)
        expected_grads = torch.autograd.grad(expected, [x, *layer.parameters()], dy)
        assert torch.equal(out, expected)
        for grad, expected_grad in zip(grads, expected_grads):
            assert torch.equal(grad, expected_grad)
        with torch.no_grad():
            x.copy_(torch.randn_like(x))  # the captured input, overwritten in place
    assert tuned_configs.telemetry.autotuned == autotuned


def _step(model, optimizer, lr_batch, hr_batch):
    """One bf16 training step (autocast's cast cache off, as a captured graph needs)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
        loss = F.l1_loss(model(lr_batch), hr_batch)
    loss.backward()
    optimizer.step()
    return loss


def _train(model, steps, lr_batch, hr_batch):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    return torch.stack([_step(model, optimizer, lr_batch, hr_batch).detach().float()
                        for _ in range(steps)])


@pytest.mark.gpu
def test_training_step_captured_in_a_cuda_graph_trains_as_eager():
    model, eager = (small_model("cuda", units=32, width=2, d=16).to(
        memory_format=torch.channels_last) for _ in range(2))
    lr_batch = torch.rand(8, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    hr_batch = torch.rand(8, 3, 64, 64, device="cuda").to(memory_format=torch.channels_last)
    expected = _train(eager, 6, lr_batch, hr_batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    losses = []
    with torch.cuda.stream(side):  # warm-up: tuning, compiles, plans, the optimizer's state
        for _ in range(3):
            losses.append(_step(model, optimizer, lr_batch, hr_batch).detach().float())
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _step(model, optimizer, lr_batch, hr_batch)
    for _ in range(3):
        graph.replay()
        losses.append(static_loss.detach().float().clone())
    assert_close(torch.stack(losses), expected, dtype=torch.bfloat16)


@pytest.mark.gpu
def test_reduce_overhead_compile_of_the_training_step_trains_as_eager():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, eager = (small_model("cuda", units=32, width=2, d=16).to(
        memory_format=torch.channels_last) for _ in range(2))
    lr_batch = torch.rand(8, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    hr_batch = torch.rand(8, 3, 64, 64, device="cuda").to(memory_format=torch.channels_last)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    losses = _train(compiled, 6, lr_batch, hr_batch)
    assert_close(losses, _train(eager, 6, lr_batch, hr_batch), dtype=torch.bfloat16)
    assert not counters["inductor"].get("cudagraph_skips")
