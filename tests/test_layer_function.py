"""The layer-level Function of the Triton path: what it refuses, how it compiles, what a CUDA
graph needs from it, and the host side (cached launch decisions, the host-time benchmark)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.utils import assert_close, assert_same_outputs_and_grads, make_params
from triton_nsr import NSRConv2d, nsr_conv2d, reference

ops = pytest.importorskip("triton_nsr.ops")
from triton_nsr.kernels import mix, router  # noqa: E402 - needs triton, skipped above

pytestmark = pytest.mark.usefixtures("poison_allocations")


def _layer(dtype=torch.float64, **kwargs):
    return NSRConv2d(4, 8, 3, 2, 4, padding=1, dtype=dtype, backend="triton", **kwargs)


# ----------------------------------------------------------------------------- refusals


def test_double_backward_is_refused_naming_the_torch_backend():
    layer, x = _layer(), torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"double backward.*backend='torch'"):
        torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    params = make_params(4, 8, 3, 2, 4)
    with pytest.raises(NotImplementedError, match=r"double backward.*backend='torch'"):
        torch.autograd.grad(nsr_conv2d(x, *params, 2, 4, padding=1, backend="triton").sum(), x,
                            create_graph=True)


def test_forward_mode_ad_is_refused_naming_the_torch_backend():
    import torch.autograd.forward_ad as fwAD

    layer, x = _layer(), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for grad_mode in (torch.enable_grad, torch.no_grad):
        with fwAD.dual_level(), grad_mode():
            dual = fwAD.make_dual(x, torch.randn_like(x))
            with pytest.raises(NotImplementedError, match=r"forward-mode AD.*backend='torch'"):
                layer(dual)


@pytest.mark.parametrize("transform", ["vmap", "grad"])
def test_torch_func_is_refused_naming_the_torch_backend(transform):
    layer, x = _layer(), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    if transform == "vmap":
        call = torch.func.vmap(layer)
    else:
        def call(x):
            return torch.func.grad(lambda x: layer(x).sum())(x)
    with pytest.raises(NotImplementedError, match=r"torch\.func.*backend='torch'"):
        call(x)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_inference_runs_the_launches_without_a_function(mode):
    layer = _layer(padding_mode="replicate")
    ref_layer = reference.NSRConv2d(4, 8, 3, 2, 4, padding=1, padding_mode="replicate",
                                    dtype=torch.float64)
    ref_layer.load_state_dict(layer.state_dict())
    x = torch.randn(3, 4, 6, 7, dtype=torch.float64)
    with mode():
        out = layer(x)
        assert out.grad_fn is None
        assert_close(out, ref_layer(x))


# ----------------------------------------------------------------------------- torch.compile


def test_compiled_forward_and_backward_with_a_symbolic_batch():
    """torch.compile traces the layer through its two custom ops (fake implementations give the
    shapes) without a graph break; the compiled backward runs the backward op and matches the
    reference; after the first batch size, one graph with a symbolic batch serves them all."""
    torch._dynamo.reset()
    layer = _layer(padding_mode="reflect")
    graphs = []

    def counting_aot_eager(graph_module, example_inputs):
        graphs.append(graph_module)
        return aot_eager(graph_module, example_inputs)

    from torch._dynamo.backends.debugging import aot_eager

    compiled = torch.compile(layer, backend=counting_aot_eager, fullgraph=True)
    ref_layer = reference.NSRConv2d(4, 8, 3, 2, 4, padding=1, padding_mode="reflect",
                                    dtype=torch.float64)
    ref_layer.load_state_dict(layer.state_dict())
    for batch in (2, 3, 5):
        x = torch.randn(batch, 4, 6, 5, dtype=torch.float64)
        assert_same_outputs_and_grads(lambda x: compiled(x), lambda x: ref_layer(x), [x],
                                      ["input"])
    # Both layers' parameters accumulated their gradients from the same output gradients.
    for param, ref_param in zip(layer.parameters(), ref_layer.parameters()):
        assert_close(param.grad, ref_param.grad)
    # The first batch size, then one graph with the batch symbolic for every later one.
    assert len(graphs) == 2


def test_layer_ops_pass_opcheck():
    x = torch.randn(2, 4, 5, 5)
    weight, bias, mlp_weight, mlp_bias = [p.detach().float() for p in make_params(4, 8, 3, 2, 4)]
    static = (2, 4, 0.7, [1, 1], [1, 1, 1, 1], [1, 1], 1, False)
    torch.library.opcheck(ops.nsr_layer_op, (x, None, weight, bias, mlp_weight, mlp_bias,
                                             *static, True))
    output, routing, pooled, weights, weights_input_grad, copy = ops.nsr_layer_op(
        x, None, weight, bias, mlp_weight, mlp_bias, *static, True)
    assert weights_input_grad.numel() == 0  # IEEE float32: the forward's layout serves
    saved = (routing, pooled, weights, None)
    torch.library.opcheck(ops.nsr_layer_backward_op, (
        torch.randn_like(output), x, None, weight, bias, mlp_weight, True, *saved, *static,
        [True, False, True, True, True, True], False))
    torch.library.opcheck(ops.nsr_layer_backward_op, (
        torch.randn_like(output), x, None, weight, None, mlp_weight, False, *saved, *static,
        [False, False, True, False, True, False], False))
    # The input's gradient alone (a frozen layer), then the weight's alone (a frozen bias): the
    # real op and its fake agree on the absent gradients, though the mixing differentiates both
    # banks in one launch and the router's backward its MLP's weight and bias. A channels_last
    # weight is mixed in place: its gradient comes in its strides, the fake's too. (The fake
    # against the real op is what these cases can get wrong.)
    fake_only = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.nsr_layer_backward_op, (
        torch.randn_like(output), x, None, weight, bias, mlp_weight, True, *saved, *static,
        [True, False, False, False, False, False], False), test_utils=fake_only)
    weight_cl = weight.to(memory_format=torch.channels_last)
    torch.library.opcheck(ops.nsr_layer_backward_op, (
        torch.randn_like(output), x, None, weight_cl, bias, mlp_weight, True, *saved, *static,
        [False, False, True, False, False, False], False), test_utils=fake_only)
    grads = ops.nsr_layer_backward_op(
        torch.randn_like(output), x, None, weight_cl, bias, mlp_weight, True, *saved, *static,
        [False, False, True, False, False, False], False)
    assert grads[2].stride() == weight_cl.stride()


# ----------------------------------------------------------------------------- CUDA graphs


class _AllOps(TorchDispatchMode):
    """Every aten op with the shapes it allocated (what a CUDA graph capture would see)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outputs = result if isinstance(result, (tuple, list)) else [result]
        self.calls.append((func.overloadpacket.__name__,
                           tuple(tuple(t.shape) for t in outputs if isinstance(t, torch.Tensor))))
        return result


def _training_step_ops(layer, x):
    recorder = _AllOps()
    with recorder:
        out = layer(x)
        torch.autograd.grad(out, [x, *layer.parameters()], torch.ones_like(out))
    return recorder.calls


def test_training_step_is_capturable_no_sync_no_data_dependent_allocation():
    """What CUDA-graph capture needs (docs/design.md): no op that reads a device value on the
    host (item, nonzero, is_nonzero, ...), and the same allocations whatever the values, so
    replaying the captured step is the step. Inputs of very different values (and NaNs, which
    would change nothing either) give the identical op and allocation sequence."""
    layer = _layer(dtype=torch.float32)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    # A warm-up step makes the layer's plans (its first call also looks at views it then
    # keeps the decisions of), as a CUDA-graph capture warms up before it records.
    _training_step_ops(layer, x)
    first = _training_step_ops(layer, x)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(-3.0)
    second = _training_step_ops(layer, (x * 100).detach().requires_grad_())
    assert first == second
    syncing = {"item", "_local_scalar_dense", "nonzero", "is_nonzero", "equal", "allclose",
               "masked_select", "unique", "tolist"}
    assert not syncing & {name for name, _ in first}


# ----------------------------------------------------------------------------- host side


def test_a_known_call_skips_the_checks_until_the_plans_are_forgotten(monkeypatch):
    from triton_nsr import functional
    from triton_nsr.kernels.autotune import clear_launch_plans

    checks = []
    check = functional.check_nsr_conv2d
    monkeypatch.setattr(functional, "check_nsr_conv2d",
                        lambda *args: checks.append(args) or check(*args))
    layer, x = _layer(), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    clear_launch_plans()
    expected = layer(x)
    assert len(checks) == 1 and len(functional._KNOWN_CALLS) == 1
    assert_close(layer(torch.randn_like(x).copy_(x)), expected, "known call")
    assert len(checks) == 1
    # Anything the checks or the plan read makes a new call: strides, grad wanted, TF32.
    layer(x.to(memory_format=torch.channels_last))
    layer(x.requires_grad_())
    assert len(checks) == 3
    clear_launch_plans()
    assert not functional._KNOWN_CALLS
    layer(x)
    assert len(checks) == 4


def test_launch_decisions_are_made_once_per_call_signature():
    from triton_nsr import layer as layer_module
    from triton_nsr.kernels import conv, conv_bwd_input, conv_bwd_weight

    layer, x = _layer(), torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    plans = (router.router_pool_plan, mix.mix_forward_plan, conv.conv_forward_plan,
             conv_bwd_weight.conv_weight_gradient_plan, mix.mix_backward_plan,
             router.router_bwd_plan, conv_bwd_input.conv_input_gradient_plan)

    def step(x):
        out = layer(x)
        torch.autograd.grad(out, [x, *layer.parameters()], torch.ones_like(out))

    step(x)
    before = [plan.cache_info() for plan in plans]
    layer_plans = len(layer_module._PLANS)
    # New values, the same signature: the layer's plan serves, no kernel plan is even looked up.
    step(torch.randn_like(x).requires_grad_())
    assert [plan.cache_info() for plan in plans] == before
    assert len(layer_module._PLANS) == layer_plans
    step(torch.randn(7, 4, 5, 5, dtype=torch.float64, requires_grad=True))  # a new batch size
    assert len(layer_module._PLANS) == layer_plans + 1
    assert [p.cache_info().misses for p in plans] == [b.misses + 1 for b in before]


@pytest.mark.slow
def test_host_time_command_times_the_whole_path_and_counts_it(tmp_path, capfd):
    import json

    from bench import cli

    out = tmp_path / "host.json"
    # The command reruns itself without TRITON_INTERPRET: Triton compiles for sm_90.
    assert cli.main(["host-time", "--repeats", "20", "--json", str(out)]) == 0
    assert capfd.readouterr().out.count("| forward_backward |") == 2
    rows = json.loads(out.read_text())["rows"]
    assert {(r["layout"], r["pass"]) for r in rows} == {
        (layout, name) for layout in ("nchw", "channels_last")
        for name in ("forward", "forward_backward")}
    for row in rows:
        launches = 3 if row["pass"] == "forward" else 7
        assert row["per_call"]["launches"] == launches
        assert row["per_call"]["jit_runs"] == 0 and row["per_call"]["host_reads"] == 0
        for timed in (row["triton_nsr"], row["floor"]):
            assert 0 < timed["p20_us"] <= timed["median_us"] <= timed["p80_us"]
