"""The Triton path against the reference: forward and every gradient, on fresh random inputs.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so shapes are
tiny; GPU tests at realistic sizes are marked ``gpu`` and skipped without CUDA.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tests.utils import (
    TOLERANCES,
    all_taps_in_float32,
    assert_close,
    assert_same_outputs_and_grads,
    make_params,
)
from triton_nsr import NSRConv2d, nsr_conv2d, reference

pytestmark = pytest.mark.usefixtures("poison_allocations")

ops = pytest.importorskip("triton_nsr.ops")

NAMES = ["input", "weight", "bias", "mlp_weight", "mlp_bias"]

# (in, out, kernel, k, d, stride, padding, dilation, groups, bias, padding_mode, size)
GRID = [
    (4, 8, 3, 4, 2, 1, 1, 1, 1, True, "zeros", (9, 9)),
    (3, 8, 3, 2, 4, 2, 0, 1, 1, False, "zeros", (11, 7)),
    (4, 4, (3, 1), 2, 2, (2, 1), (1, 0), (1, 2), 2, True, "zeros", (13, 10)),
    (4, 4, (1, 5), 1, 4, (1, 3), (0, 2), 1, 1, True, "zeros", (5, 13)),
    (6, 6, 3, 1, 1, 1, "same", 2, 3, True, "zeros", (7, 8)),
    (4, 8, 4, 2, 4, 1, "same", 1, 1, True, "zeros", (7, 6)),
    (4, 8, 3, 4, 1, 3, 2, 2, 2, True, "zeros", (11, 11)),
    (5, 10, 3, 2, 1, 1, "valid", 1, 5, False, "zeros", (8, 8)),
    (4, 4, 3, 4, 4, 1, 1, 1, 4, True, "zeros", (7, 9)),  # depthwise
    (4, 8, 5, 2, 2, 2, 2, 1, 4, True, "zeros", (9, 9)),  # depthwise multiplier 2
    (3, 4, 3, 2, 2, 1, 1, 1, 1, True, "reflect", (7, 7)),
    (3, 4, 3, 2, 2, 2, 2, 1, 1, True, "replicate", (9, 8)),
    (3, 4, 3, 2, 2, 1, (1, 2), 1, 1, False, "circular", (6, 7)),
    (2, 4, 2, 1, 1, 1, "same", 3, 1, True, "reflect", (9, 9)),
    (20, 18, 3, 2, 2, 1, 1, 1, 1, True, "zeros", (5, 6)),  # several channel tiles
    (3, 36, 1, 2, 2, 1, 0, 1, 1, True, "zeros", (13, 13)),  # 1x1, out > one N tile
]


def assert_triton_matches_reference(x, params, *geometry, **options):
    """nsr_conv2d(backend='triton') equals the reference, output and every gradient.

    ``geometry`` and ``options`` are nsr_conv2d's arguments after the five tensors.
    """

    def triton_path(*inputs):
        return nsr_conv2d(*inputs, *geometry, **options, backend="triton")

    def reference_path(*inputs):
        return reference.nsr_conv2d(*inputs, *geometry, **options)

    assert_same_outputs_and_grads(triton_path, reference_path, [x, *params], NAMES)


def run_triton(config, dtype, batch, channels_last=False):
    cin, cout, ks, k, d, stride, padding, dilation, groups, bias, mode, size = config
    x = torch.randn(batch, cin, *size, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    params = make_params(cin, cout, ks, k, d, groups, bias, dtype=dtype)
    assert_triton_matches_reference(x, params, k, d, stride, padding, dilation, groups,
                                    temperature=0.8, padding_mode=mode)


@pytest.mark.parametrize("config", GRID, ids=[f"c{i}" for i in range(len(GRID))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_gradients_match_reference(config, dtype):
    run_triton(config, dtype, batch=2)


@pytest.mark.parametrize("config", GRID[:4] + GRID[8:10], ids=lambda c: f"cin{c[0]}k{c[3]}")
def test_channels_last_and_batch_one(config):
    run_triton(config, torch.float32, batch=1, channels_last=True)


# Weight layouts: channels_last is mixed in place (its gradient in its strides); a dense
# weight in another order (but for one-row or one-column kernels, where it is contiguous) and
# a strided view are reshaped (copied) per call.
WEIGHT_LAYOUTS = {
    "channels_last": lambda w: w.to(memory_format=torch.channels_last),
    "taps_transposed": lambda w: w.transpose(2, 3).contiguous().transpose(2, 3),
    # Every stride doubled: not dense (NaN between the values).
    "strided": lambda w: torch.stack([w, torch.full_like(w, float("nan"))], -1)[..., 0],
}


# channels_last on three kernel shapes (one with convolution groups); the copied layouts on one.
@pytest.mark.parametrize("config,layout", [
    (GRID[0], "channels_last"), (GRID[2], "channels_last"), (GRID[3], "channels_last"),
    (GRID[0], "taps_transposed"), (GRID[0], "strided"),
], ids=["3x3-channels_last", "3x1-groups-channels_last", "1x5-channels_last",
        "3x3-taps_transposed", "3x3-strided"])
def test_weights_in_any_layout(config, layout):
    from triton_nsr.layer import weight_read_in_place

    cin, cout, ks, k, d, stride, padding, dilation, groups, bias, mode, size = config
    x = torch.randn(2, cin, *size, dtype=torch.float64)
    weight, *rest = make_params(cin, cout, ks, k, d, groups, bias)
    weight = WEIGHT_LAYOUTS[layout](weight.detach()).requires_grad_()
    assert weight_read_in_place(weight, k, d) == (layout == "channels_last"
                                                  or weight.is_contiguous())
    assert_triton_matches_reference(x, [weight, *rest], k, d, stride, padding, dilation,
                                    groups, temperature=0.8, padding_mode=mode)
    if layout == "channels_last" and config is GRID[0]:
        # What autograd puts in .grad: the mixing's gradient as it is, in the weight's strides.
        out = nsr_conv2d(x, weight, *rest, k, d, stride, padding, dilation, groups,
                         backend="triton")
        out.sum().backward()
        assert weight.grad.stride() == weight.stride()


def test_batch_zero_gives_empty_output_and_zero_gradients():
    x = torch.randn(0, 4, 7, 7, requires_grad=True)
    params = make_params(4, 8, 3, 2, 2, dtype=torch.float32)
    out = nsr_conv2d(x, *params, 2, 2, padding=1, backend="triton")
    assert out.shape == (0, 8, 7, 7)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(params[0].grad, torch.zeros_like(params[0]))


def test_outputs_keep_the_input_layout():
    x = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last)
    params = make_params(4, 8, 3, 2, 2, dtype=torch.float32)
    out = nsr_conv2d(x, *params, 2, 2, padding=1, backend="triton")
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_sliced_non_contiguous_input():
    base = torch.randn(2, 8, 14, 18, dtype=torch.float64)
    x = base[:, 1::2, 2:, ::2]
    assert not x.is_contiguous()
    params = make_params(4, 4, 3, 2, 2)
    assert_close(nsr_conv2d(x, *params, 2, 2, padding=1, backend="triton"),
                 reference.nsr_conv2d(x, *params, 2, 2, padding=1))


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2, dilation=2, groups=2)])
def test_single_group_and_cardinal_equals_f_conv2d(kwargs):
    x = torch.randn(3, 4, 9, 10)
    weight = torch.randn(6, 4 // kwargs.get("groups", 1), 3, 3)
    bias = torch.randn(6)
    out = nsr_conv2d(x, weight, bias, torch.randn(1, 4), torch.randn(1), 1, 1, backend="triton",
                     **kwargs)
    assert_close(out, F.conv2d(x, weight, bias, **kwargs))


def test_module_runs_the_triton_path():
    layer = NSRConv2d(4, 8, 3, 2, 4, padding=1, dtype=torch.float64)
    assert layer.backend == "auto"
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    layer_ref = reference.NSRConv2d(4, 8, 3, 2, 4, padding=1, dtype=torch.float64)
    layer_ref.load_state_dict(layer.state_dict())
    assert_close(layer(x), layer_ref(x))


class _AtenRecorder(TorchDispatchMode):
    """Records each aten op and the largest operand it saw."""

    def __init__(self):
        super().__init__()
        self.ops = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        sizes = [a.numel() for a in args if isinstance(a, torch.Tensor)]
        name = func.overloadpacket.__name__
        self.ops[name] = max([self.ops.get(name, 0), *sizes])
        return func(*args, **(kwargs or {}))


def test_mixing_and_convolution_run_in_triton_not_torch():
    """Forward and backward dispatch no torch conv, einsum, unfold, nor a matmul bigger than
    the router's. (That the kernels run, and which, tests/test_launches.py counts.)"""
    batch, cin, cout, k, d = 2, 4, 8, 2, 2
    x = torch.randn(batch, cin, 7, 7, requires_grad=True)
    params = make_params(cin, cout, 3, k, d, dtype=torch.float32)
    router_size = max(batch * cin, k * d * cin, batch * k * d)
    conv_like = {"convolution", "convolution_backward", "conv2d", "conv_transpose2d", "einsum",
                 "im2col", "col2im", "unfold", "_convolution"}
    matmuls = {"bmm", "mm", "addmm", "matmul", "baddbmm"}

    def offending(ops):
        return {op for op, size in ops.items()
                if op in conv_like or (op in matmuls and size > router_size)}

    recorder = _AtenRecorder()
    with recorder:
        out = nsr_conv2d(x, *params, k, d, stride=2, padding=1, padding_mode="reflect",
                         backend="triton")
        out.square().sum().backward()
    assert offending(recorder.ops) == set()
    # The recorder does see such ops when they run: the reference uses them.
    recorder = _AtenRecorder()
    with recorder:
        reference.nsr_conv2d(x, *params, k, d, padding=1).sum().backward()
    assert offending(recorder.ops)


def test_gradcheck_ops_in_float64():
    opts = {"dtype": torch.float64, "requires_grad": True}
    routing = torch.softmax(torch.randn(2, 3, 2, dtype=torch.float64), 1).requires_grad_()
    bank = torch.randn(3, 2, 5, **opts)
    assert torch.autograd.gradcheck(ops.mix, (routing, bank), fast_mode=True)
    x = torch.randn(2, 4, 5, 6, **opts)
    weight = torch.randn(2, 4, 2, 3, 2, **opts)
    bias = torch.randn(2, 4, **opts)
    assert torch.autograd.gradcheck(
        lambda x, w, b: ops.per_sample_conv2d(x, w, b, [2, 1], [1, 0, 2, 1], [1, 2], 2, False),
        (x, weight, bias),
        fast_mode=True,
    )


def test_gradcheck_whole_layer_in_float64():
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    params = make_params(2, 4, 3, 2, 2, scale=0.5)
    assert torch.autograd.gradcheck(
        lambda *a: nsr_conv2d(*a, 2, 2, padding=1, padding_mode="replicate", backend="triton"),
        (x, *params),
        fast_mode=True,
    )


def test_opcheck_passes():
    routing = torch.softmax(torch.randn(2, 2, 3), 1).requires_grad_()
    bank = torch.randn(2, 3, 4, requires_grad=True)
    torch.library.opcheck(ops.mix, (routing, bank))
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    weight = torch.randn(2, 6, 2, 3, 3, requires_grad=True)
    bias = torch.randn(2, 6, requires_grad=True)
    torch.library.opcheck(ops.per_sample_conv2d, (x, weight, bias, [1, 1], [1, 1, 1, 1], [1, 1],
                                                  2, False))
    torch.library.opcheck(ops.per_sample_conv2d, (x, weight, None, [2, 1], [0, 0, 1, 1], [1, 1],
                                                  2, False))
    grad_output = torch.randn(2, 6, 5, 5)
    torch.library.opcheck(ops.per_sample_conv2d_backward,
                          (grad_output, x.detach(), weight.detach(), [1, 1], [1, 1, 1, 1], [1, 1],
                           2, False, [True, False, True]))
    torch.library.opcheck(ops.mix_backward, (torch.randn(2, 3, 4), routing.detach(),
                                             bank.detach()))


def test_compile_fullgraph_keeps_batch_symbolic():
    torch._dynamo.reset()
    layer = NSRConv2d(4, 8, 3, 2, 2, padding=1)
    compiles = []

    def counting_backend(graph_module, example_inputs):
        compiles.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(layer, backend=counting_backend, fullgraph=True)
    for batch in (2, 3, 5):
        x = torch.randn(batch, 4, 6, 6)
        assert_close(compiled(x), reference.NSRConv2d.forward(layer, x))
    assert len(compiles) <= 2


def test_autocast_casts_like_conv2d():
    x = torch.randn(2, 4, 6, 6)
    params = [p.detach() for p in make_params(4, 8, 3, 2, 2, dtype=torch.float32)]
    with torch.autocast("cpu", dtype=torch.float16):
        out = nsr_conv2d(x, *params, 2, 2, padding=1, backend="triton")
    assert out.dtype == torch.float16
    half = [p.half() for p in params]
    expected = reference.nsr_conv2d(x.half().double(), *[p.double() for p in half], 2, 2,
                                    padding=1)
    assert_close(out, expected.half(), dtype=torch.float16)


def test_poisoning_catches_unwritten_elements():
    """The poison fixture is live: an element no kernel writes stays NaN and fails the check."""
    fresh = torch.empty(4)
    assert torch.isnan(fresh).all()
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(fresh, torch.zeros(4))


# ----------------------------------------------------------------------------- GPU


GPU_SHAPES = [
    # (batch, in, out, size, k, d, stride, groups)
    (16, 32, 128, 48, 4, 16, 1, 1),
    (16, 128, 32, 48, 4, 16, 1, 1),
    (4, 64, 64, 96, 4, 16, 2, 1),
    (8, 64, 64, 33, 2, 8, 1, 64),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True),
                                        (torch.float16, False), (torch.bfloat16, False)])
def test_gpu_realistic_sizes(shape, dtype, tf32, monkeypatch):
    batch, cin, cout, size, k, d, stride, groups = shape
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    x = torch.randn(batch, cin, size, size, device="cuda", dtype=dtype)
    params = make_params(cin, cout, 3, k, d, groups, dtype=dtype, device="cuda", scale=0.1)
    geometry = (k, d, stride, 1, 1, groups)

    def ref64(*inputs):
        return reference.nsr_conv2d(*[t.double() for t in inputs], *geometry)

    def triton_path(*inputs):
        return nsr_conv2d(*inputs, *geometry, backend="triton")

    out, grads, grad_output = _outputs_and_grads_on(triton_path, [x, *params])
    ref, ref_grads, _ = _outputs_and_grads_on(ref64, [x, *params], grad_output.double())
    tolerance = torch.float16 if tf32 and dtype == torch.float32 else dtype
    _assert_relative(out, ref, "output", tolerance)
    for name, g, rg in zip(NAMES, grads, ref_grads):
        _assert_relative(g, rg, f"grad of {name}", tolerance)


def _outputs_and_grads_on(fn, inputs, grad_output=None):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    if grad_output is None:
        grad_output = torch.randn_like(out)
    out.backward(grad_output.to(out.dtype))
    return out.detach(), [t.grad for t in leaves], grad_output


def _assert_relative(actual, expected, name, dtype):
    """Error relative to the largest magnitude, for sums over thousands of low-precision terms."""
    atol, rtol = TOLERANCES[dtype]
    scale = expected.abs().max().clamp_min(1e-6)
    error = (actual.double() - expected).abs().max() / scale
    assert torch.isfinite(actual).all(), f"{name}: non-finite"
    assert error <= max(atol, rtol), f"{name}: relative error {error:.3g} ({dtype})"


@pytest.mark.gpu
def test_gpu_indexing_past_two_to_the_31():
    """A sample larger than 2**31 elements: every offset must be computed in int64."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    x = torch.randn(1, 8, 16400, 16400, device="cuda", dtype=torch.float16)  # 2.15e9 elements
    assert x.numel() > 2**31
    weight = torch.randn(2 * 8, 1, 3, 3, device="cuda", dtype=torch.float16)
    mlp_weight = torch.randn(2 * 8, 8, device="cuda", dtype=torch.float16)
    out = nsr_conv2d(x, weight, None, mlp_weight, None, 2, 8, padding=1, groups=8,
                     backend="triton")
    # Spot-check the last rows, whose offsets pass 2**31, against F.conv2d on that strip with
    # the kernel routed on the whole image.
    routing = reference.routing_weights(x.float(), mlp_weight.float(), None, 2, 8)
    kernels, _ = reference.mix_kernels(routing, weight.float(), None)
    strip = x[:, :, -3:, -64:].float()
    expected = F.conv2d(strip, kernels[0], None, padding=(0, 1), groups=8)
    torch.testing.assert_close(out[:, :, -2, -63:-1].float(), expected[:, :, 0, 1:-1],
                               atol=5e-2, rtol=5e-2)


def test_tf32_follows_cudnn_flag(monkeypatch):
    """float32 products use TF32 exactly when torch.backends.cudnn.allow_tf32 says so."""
    from triton_nsr.kernels.autotune import dot_precision

    assert dot_precision(torch.float32, True) == "tf32"
    assert dot_precision(torch.float32, False) == "ieee"
    assert dot_precision(torch.float64, True) == "ieee"
    assert dot_precision(torch.float16, True) == "ieee"
    from triton_nsr.kernels.conv import ConvForward

    seen = []
    real = ConvForward.__call__

    def spy(self, *args):
        seen.append(self.constexprs["PRECISION"] == "tf32")
        return real(self, *args)

    monkeypatch.setattr(ConvForward, "__call__", spy)
    x = torch.randn(1, 2, 5, 5)
    params = make_params(2, 2, 3, 1, 1, dtype=torch.float32)
    for flag in (True, False):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", flag)
        nsr_conv2d(x, *params, 1, 1, backend="triton")
    assert seen == [True, False]


def test_int64_offsets_match_reference(monkeypatch):
    """The int64 offset path (tensors past 2**31 elements) is right too."""
    import triton.language as tl

    from triton_nsr.kernels import conv, conv_bwd_weight
    from triton_nsr.kernels.autotune import clear_launch_plans

    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    params = make_params(4, 6, 3, 2, 3, groups=2)
    # The input gradient takes its index width through conv.gemm_constexprs.
    for module in (conv, conv_bwd_weight):
        monkeypatch.setattr(module, "index_dtype_of", lambda *args, **kwargs: tl.int64)
    # The launchers decide once per shape: forget the int32 plans, and the int64 ones after.
    clear_launch_plans()
    try:
        assert_triton_matches_reference(x, params, 2, 3, 2, 1, 1, 2)
    finally:
        clear_launch_plans()


@pytest.mark.parametrize("num_splits", [2, 5])
def test_split_pixel_sum_of_the_kernel_gradient(monkeypatch, num_splits):
    """The kernel gradient cut into pixel splits (few samples, large images) adds up the same,
    also when a split gets no pixels at all."""
    from triton_nsr.kernels import conv_bwd_weight

    # 195 output pixels: several BLOCK_K blocks, so the splits really share the sum.
    x = torch.randn(1, 4, 15, 13, dtype=torch.float64)
    params = make_params(4, 6, 3, 2, 3, groups=2)
    monkeypatch.setattr(conv_bwd_weight, "weight_grad_splits", lambda *args: num_splits)
    assert_triton_matches_reference(x, params, 2, 3, 1, 1, 1, 2)


@pytest.mark.parametrize("in_channels,out_channels,channels_last",
                         [(20, 8, True), (20, 8, False), (8, 20, True)],
                         ids=["transposed", "nchw-dy", "dy-rows"])
def test_all_taps_kernel_gradient_in_the_layer(monkeypatch, in_channels, out_channels,
                                               channels_last):
    """The layer with the all-taps kernel gradient (16-bit only on a GPU; here float32): with
    more input than output channels and a channels_last dy it runs TRANSPOSED (x's rows carried,
    the bias gradient summed from the shifted dy), with an NCHW dy it carries dy's rows and
    writes dy's copy for the input gradient; rows in 2 bands."""
    from triton_nsr.kernels.autotune import clear_launch_plans

    decided = all_taps_in_float32(monkeypatch, 2)
    x = torch.randn(2, in_channels, 7, 6)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    params = make_params(in_channels, out_channels, 3, 2, 2, 1, True, dtype=torch.float32)
    try:
        assert_triton_matches_reference(x, params, 2, 2, 1, 1, 1, 1)
    finally:
        clear_launch_plans()
    assert decided == [channels_last and in_channels > out_channels]
