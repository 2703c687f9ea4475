"""The launch budget of one NSR layer on the Triton path: what runs per call, counted.

Every Triton launch (recorded at the kernel call, without running the kernel: the tuned-config
recording policy) and every aten op that computes (views and allocations aside) in the forward
and the backward of NSRConv2d, at the real channel counts and image sizes of W1 and W4: nothing
executes, so the sizes cost nothing. bfloat16 activations, float32 parameters, autocast on, as
mixed-precision training runs the layer; the gradients come from torch.autograd.grad.

Budget (issue 11): forward <= 3 launches, forward + backward <= 8 launches and aten compute
ops together (7 here). With zero padding there is no aten op at all: no cast of the parameters,
no copy of a channels_last model's weights, no copy of the mixed kernels (the mixing kernel
writes the forward's packed layout, which the 16-bit input gradient reads too; only TF32 packs a
copy), no sum of W4's split kernel gradient, no add of the mean's gradient. Other padding modes
add their F.pad and its backward.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton_nsr.ops")

from triton_nsr import NSRConv2d  # noqa: E402
from triton_nsr.kernels import conv_bwd_weight, tuned_configs  # noqa: E402
from triton_nsr.kernels.inspection.capture import H200_MULTIPROCESSORS  # noqa: E402

FORWARD_LAUNCHES = 3
TRAINING_LAUNCHES = 8

# (name, batch, in, out, height, width)
SHAPES = [
    ("W1-expand", 16, 32, 128, 48, 48),
    ("W1-reduce", 16, 128, 32, 48, 48),
    ("W4", 1, 64, 64, 512, 512),
]
# Ops that allocate or re-view memory without computing anything.
NOT_COMPUTE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
               "view", "_unsafe_view", "unsqueeze", "squeeze", "expand", "as_strided", "alias",
               "detach", "t", "transpose", "permute", "select", "slice"}


class _ComputeOps(TorchDispatchMode):
    """Collects the names of the aten ops that compute something."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NOT_COMPUTE:
            self.names.append(name)
        return func(*args, **(kwargs or {}))


def _recorded(step):
    """(Triton launches by kernel name, aten compute ops) of ``step()``, run without kernels."""
    launches = []
    ops = _ComputeOps()
    with tuned_configs.use(tuned_configs.Policy(record=launches)), ops:
        result = step()
    return result, [launch.kernel.name for launch in launches], ops.names, launches


def _layer_call(shape, layout, padding_mode="zeros"):
    name, batch, cin, cout, height, width = shape
    layer = NSRConv2d(cin, cout, 3, 4, 16, padding=1, padding_mode=padding_mode,
                      backend="triton")
    format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    # As a user trains in channels_last: the model converted too (its weights channels_last).
    layer = layer.to(memory_format=format)
    x = torch.empty(batch, cin, height, width, dtype=torch.bfloat16,
                    memory_format=format).requires_grad_()
    return layer, x


def _forward_and_backward(layer, x):
    inputs = [x, *layer.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, forward, forward_ops, launches = _recorded(lambda: layer(x))
    grad_output = torch.empty_like(output)
    grads, backward, backward_ops, backward_launches = _recorded(
        lambda: torch.autograd.grad(output, inputs, grad_output))
    return (output, grads, forward, forward_ops, backward, backward_ops,
            launches + backward_launches)


@pytest.fixture
def h200_split(monkeypatch):
    """The kernel gradient sizes its pixel splits for an H200, as on the GPU (W4: dozens)."""
    monkeypatch.setattr(conv_bwd_weight, "multiprocessor_count",
                        lambda device: H200_MULTIPROCESSORS)


@pytest.mark.usefixtures("h200_split")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_launch_budget_with_zero_padding(shape, layout):
    layer, x = _layer_call(shape, layout)
    output, grads, forward, forward_ops, backward, backward_ops, launches = \
        _forward_and_backward(layer, x)
    assert output.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    assert [g.dtype for g in grads] == [torch.bfloat16] + [torch.float32] * 4

    assert forward == ["router_pool_kernel", "mix_fwd_kernel", "conv_fwd_kernel"]
    assert len(forward) <= FORWARD_LAUNCHES
    assert forward_ops == []
    # bf16 3x3: the all-taps kernel gradient for an NCHW dy, the per-tap one for a
    # channels_last dy (kernels/conv_bwd_weight.py ALL_TAPS_DTYPES and ALL_TAPS_LAYOUTS).
    weight_gradient = ("conv_bwd_weight_kernel" if layout == "channels_last"
                       else "conv_bwd_weight_3x3_kernel")
    assert backward == [weight_gradient, "mix_bwd_kernel", "router_bwd_kernel",
                        "conv_bwd_input_kernel"]
    assert backward_ops == []
    assert len(forward) + len(backward) + len(backward_ops) <= TRAINING_LAUNCHES
    # A channels_last weight is mixed where it is (no copy op above) and its gradient made in
    # its strides, which autograd puts in .grad as they are.
    assert layer.weight.is_contiguous(memory_format=torch.channels_last) == (
        layout == "channels_last")
    assert grads[1].stride() == layer.weight.stride()
    # The mixing reads the float32 banks and writes bfloat16 kernels: the cast is in the load.
    # Pointers: routing (written here), the banks, the two outputs and the unused TF32 copy's
    # stand-in, then the router's partial sums, MLP weight and bias, and the means: float32.
    mixing = next(launch for launch in launches if launch.kernel.name == "mix_fwd_kernel")
    assert mixing.key[-10:] == (("torch.float32",) * 3 + ("torch.bfloat16",) * 3
                                + ("torch.float32",) * 4)
    # W4 (batch 1, 512x512) splits the kernel gradient's pixel sum for the H200's SMs; the
    # mixing backward reads the partial sums (its key's 4th entry is their number): no sum op.
    mixing_backward = next(launch for launch in launches
                           if launch.kernel.name == "mix_bwd_kernel")
    assert (mixing_backward.key[3] > 1) == (shape[0] == "W4")


@pytest.mark.usefixtures("h200_split")
def test_transposed_kernel_gradient_keys_like_the_layer_with_channels_swapped(monkeypatch):
    # W1-reduce (128 -> 32) in channels_last runs the all-taps kernel gradient TRANSPOSED, x and
    # dy swapped: the same GEMMs as W1-expand's (32 -> 128), and so the same autotune key (one
    # tuning for both). With an NCHW dy it is not transposed, and the keys differ. (The layer
    # takes the per-tap kernel for a channels_last dy; the all-taps one is forced here.)
    monkeypatch.setattr(conv_bwd_weight, "ALL_TAPS_LAYOUTS", ("nchw", "channels_last"))
    keys = {}
    for shape in SHAPES[:2]:
        for layout in ("channels_last", "nchw"):
            *_, launches = _forward_and_backward(*_layer_call(shape, layout))
            keys[shape[0], layout] = next(launch.key for launch in launches if
                                          launch.kernel.name == "conv_bwd_weight_3x3_kernel")
    assert keys["W1-reduce", "channels_last"] == keys["W1-expand", "channels_last"]
    assert keys["W1-reduce", "nchw"] != keys["W1-expand", "nchw"]
    assert "tma_channels_last" in keys["W1-reduce", "channels_last"]


@pytest.mark.parametrize("padding_mode,pad_op", [("reflect", "reflection_pad2d"),
                                                  ("replicate", "replication_pad2d")])
def test_other_padding_modes_add_their_pad_only(padding_mode, pad_op):
    layer, x = _layer_call(SHAPES[0], "nchw", padding_mode)
    _, _, forward, forward_ops, backward, backward_ops, _ = _forward_and_backward(layer, x)
    assert len(forward) <= FORWARD_LAUNCHES
    assert len(forward) + len(backward) <= TRAINING_LAUNCHES
    assert forward_ops == [pad_op]  # in bfloat16: autocast's float32 pad is kept off
    # The pad's backward folds the border back; the mean's gradient, (B, C) cast to bfloat16
    # and broadcast, is added to it. (Circular padding's F.pad is a series of copies.)
    assert sorted(backward_ops) == sorted(["_to_copy", f"{pad_op}_backward", "add"])


@pytest.mark.parametrize("allow_tf32", [True, False], ids=["tf32", "ieee"])
def test_float32_training_makes_no_copy_either(monkeypatch, allow_tf32):
    # TF32's input gradient reads its own weight layout (output channels contiguous): the
    # mixing writes it in the forward's launch, beside the forward's layout. IEEE float32
    # reads the forward's. Neither costs an aten op.
    from triton_nsr.kernels.inspection.capture import recording

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    name, batch, cin, cout, height, width = SHAPES[0]
    layer = NSRConv2d(cin, cout, 3, 4, 16, padding=1, backend="triton")
    x = torch.empty(batch, cin, height, width).requires_grad_()
    ops = _ComputeOps()
    with recording(batch) as launches, ops:
        output = layer(x)
        torch.autograd.grad(output, [x, *layer.parameters()], torch.empty_like(output))
    assert ops.names == []
    assert [launch.kernel for launch in launches] == [
        "router_pool_kernel", "mix_fwd_kernel", "conv_fwd_kernel", "conv_bwd_weight_kernel",
        "mix_bwd_kernel", "router_bwd_kernel", "conv_bwd_input_kernel"]
    mixing, input_grad = launches[1], launches[-1]
    assert mixing.named["HAS_COPY"] is allow_tf32
    # TF32 reads the copy: output channels (the GEMM's K) contiguous.
    assert (input_grad.named["weight_out_stride"] == 1) is allow_tf32


def test_kernel_gradient_splits_fill_one_wave(monkeypatch):
    # Splits are float32 partial sums the mixing backward reads again: one wave of two
    # programs per SM and no more (rounded down: no second, nearly empty wave), each split
    # keeping at least MIN_PIXELS_PER_SPLIT pixels; CPU tensors (the interpreter) never split.
    cuda = torch.device("cuda")
    monkeypatch.setattr(conv_bwd_weight, "multiprocessor_count", lambda device: 132)
    assert conv_bwd_weight.weight_grad_splits(cuda, 9, 512 * 512) == 29  # W4: 261 programs
    assert conv_bwd_weight.weight_grad_splits(cuda, 9, 48 * 48) == 1  # too few pixels
    assert conv_bwd_weight.weight_grad_splits(cuda, 500, 512 * 512) == 1  # already a wave
    monkeypatch.setattr(conv_bwd_weight, "multiprocessor_count", lambda device: 0)
    assert conv_bwd_weight.weight_grad_splits(torch.device("cpu"), 9, 512 * 512) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nchw_input_is_convolved_from_a_channels_last_copy_where_tma_needs_it(dtype):
    # NCHW float32 with 3x3 taps: TMA cannot box tap-shifted columns, so the pooling pass also
    # writes a channels_last copy of x that the forward reads through TMA boxes (and the kernel
    # gradient after it), and the kernel gradient, which reads all of dy first, writes one of dy
    # for the input gradient; outputs and gradients stay NCHW. float64 has no TMA path: no
    # copies, the gathers read the tensors as they are.
    from triton_nsr.kernels.inspection.capture import recording

    layer = NSRConv2d(8, 16, 3, 2, 4, padding=1, backend="triton", dtype=dtype)
    x = torch.empty(2, 8, 12, 16, dtype=dtype, requires_grad=True)
    with recording(2) as launches:
        output = layer(x)
        grad_output = torch.empty_like(output)
        grad_input, = torch.autograd.grad(output, [x], grad_output)
    assert output.is_contiguous() and grad_input.is_contiguous()
    pool, _, conv, weight_grad, _, _, input_grad = launches
    copies = dtype == torch.float32
    assert pool.named["WRITE_COPY"] is copies
    assert weight_grad.named["WRITE_COPY"] is copies
    forward_reads = conv.named["input_pointer"].data_ptr()
    backward_reads = input_grad.named["grad_output_pointer"].data_ptr()
    if copies:
        assert conv.named["INPUT_ROUTE"] == input_grad.named["INPUT_ROUTE"] == "tma_channels_last"
        assert forward_reads == pool.named["copy_pointer"].data_ptr() != x.data_ptr()
        # The Function saved the copy in place of x: the kernel gradient reads it too.
        assert weight_grad.named["input_pointer"].data_ptr() == forward_reads
        assert backward_reads == weight_grad.named["copy_pointer"].data_ptr()
        assert backward_reads != grad_output.data_ptr()
        # channels_last strides: the channel stride is 1.
        assert conv.named["input_channel_stride"] == 1 and conv.named["input_w_stride"] == 8
        assert input_grad.named["grad_output_channel_stride"] == 1
    else:
        assert conv.named["INPUT_ROUTE"] == input_grad.named["INPUT_ROUTE"] == "gather"
        assert forward_reads == x.data_ptr() and backward_reads == grad_output.data_ptr()


def test_programs_per_launch_are_the_launchers_grids():
    # docs/kernels.md's "Programs per launch": each count is the launcher's grid for a config,
    # and the table marks the launches that start fewer programs than the GPU has SMs.
    from triton_nsr.kernels.inspection.capture import LayerShape, capture, kernels
    from triton_nsr.kernels.inspection.grid_fill import grid_fill, render_grid_fill
    from triton_nsr.kernels.mix import MIX_BWD_BLOCK_F
    from triton_nsr.kernels.router import pool_chunks
    from triton_nsr.kernels.tiling import cdiv

    shape = LayerShape("W1-expand", 16, 32, 128, 48, 48)
    launches = {launch.kernel: launch for launch in capture(shape, "bf16", "channels_last")}
    features = 128 // 16 * 32 * 9  # a cardinal's share of the weight bank
    assert set(launches["mix_bwd_kernel"].programs.values()) == {
        (cdiv(features, MIX_BWD_BLOCK_F) + cdiv(128 // 16, MIX_BWD_BLOCK_F)) * 16}
    assert set(launches["router_pool_kernel"].programs.values()) == {
        16 * pool_chunks(16, 48 * 48)}
    configs = kernels()["conv_bwd_weight_kernel"].configs
    for index, programs in launches["conv_bwd_weight_kernel"].programs.items():
        blocks = configs[index].kwargs
        assert programs == 16 * 9 * cdiv(128, blocks["BLOCK_M"]) * cdiv(32, blocks["BLOCK_N"])

    rows = [{"shape": "W1-expand", "batch": 16, "precision": "bf16", "layout": "nchw",
             "kernel": kernel, "programs": programs}
            for kernel, programs in (("mix_bwd_kernel", (160, 160)),
                                     ("router_pool_kernel", (16, 16)),
                                     ("conv_fwd_kernel", (H200_MULTIPROCESSORS - 1, 2304)))]
    table = "\n".join(render_grid_fill(rows))
    assert "| `mix_bwd_kernel` | 160 |" in table
    assert "| `router_pool_kernel` | **16** |" in table
    assert f"| `conv_fwd_kernel` | **{H200_MULTIPROCESSORS - 1}-2304** |" in table
    assert "somewhere above: `conv_fwd_kernel`, `router_pool_kernel`." in table
    # Batch 1 of W1-expand: the mixing backward's grid does not depend on the batch.
    one = grid_fill([LayerShape("W1-expand", 1, 32, 128, 48, 48)], (("bf16", "channels_last"),))
    assert {r["kernel"]: r["programs"] for r in one}["mix_bwd_kernel"] == (160, 160)
