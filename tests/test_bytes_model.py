"""The HBM bytes model of the triton path (bench/costs.py): launches as recorded, bytes as
counted by hand, floors as issue 11 defines them."""

import pytest

pytest.importorskip("triton_nsr.ops")

from bench import cli  # noqa: E402
from bench.costs import (  # noqa: E402
    FORWARD,
    FORWARD_BACKWARD,
    TensorBytes,
    bytes_rows,
    kernel_bytes,
    layer_bytes,
)
from bench.workloads import Workload, main_workloads  # noqa: E402

W4 = next(w for w in main_workloads() if w.name == "W4")


def test_tensor_sizes_by_hand():
    t = TensorBytes.of(W4)
    assert t.x == t.y == 64 * 512 * 512 * 2  # bfloat16, padding 1 keeps 512x512
    assert t.bank == 4 * 64 * (64 * 9 + 1) * 4  # float32 weight and bias banks
    assert t.mixed == 1 * 64 * (64 * 9 + 1) * 2
    assert t.kernel_gradient(1) == t.mixed
    assert t.kernel_gradient(5) == 5 * t.mixed * 2  # float32 partial sums


def test_forward_counts_each_tensor_once_per_kernel_and_the_floor():
    t = TensorBytes.of(W4)
    launches, moved, floor, per_kernel = layer_bytes(W4)[FORWARD]
    assert launches == 3
    assert floor == t.x + t.y + t.bank
    # The pooling and the convolution both read x; the mixed kernels are written and read
    # once; the pooling's partial sums too (W4: 64 chunks of one image).
    assert t.partials == 1 * 64 * 64 * 4
    assert moved == (2 * t.x + t.y + t.bank + 2 * t.mixed + t.mlp + t.per_sample
                     + t.routing + 2 * t.partials)
    assert sum(per_kernel.values()) == moved


def test_training_floor_and_the_split_kernel_gradient_of_w4():
    t = TensorBytes.of(W4)
    forward_floor = layer_bytes(W4)[FORWARD][2]
    launches, moved, floor, per_kernel = layer_bytes(W4)[FORWARD_BACKWARD]
    assert launches == 7
    assert floor == forward_floor + t.y + t.x + t.x + t.bank + t.bank
    # Batch 1 at 512x512: the kernel gradient comes in float32 split partial sums, written
    # once and read once (by the one mixing backward kernel).
    parts = per_kernel["conv_bwd_weight_kernel"] - t.y - t.x
    assert parts > t.mixed
    assert per_kernel["mix_bwd_kernel"] - parts == 2 * t.bank + t.routing + t.routing_parts


def test_unknown_kernels_are_not_silently_free():
    with pytest.raises(KeyError, match="bench/costs.py"):
        kernel_bytes("new_kernel", TensorBytes.of(W4), 1)


def test_rows_state_targets_and_inference_has_no_backward():
    w3 = Workload("W3", "W3", 8, 32, 128, 48, 48, passes=(FORWARD,))
    assert list(layer_bytes(w3)) == [FORWARD]
    rows = bytes_rows([W4])
    assert [row[1:3] for row in rows] == [["channels_last", FORWARD],
                                          ["channels_last", FORWARD_BACKWARD],
                                          ["nchw", FORWARD], ["nchw", FORWARD_BACKWARD]]
    assert rows[0][-1].startswith("<= 1.55")


def test_nchw_costs_one_more_write_of_x_and_of_dy():
    # The pooling writes the channels_last copy of x the forward boxes with TMA, the kernel
    # gradient the copy of dy the input gradient boxes. The kernel gradients differ too: an
    # NCHW dy takes the all-taps kernel (64 bands of rows on W4's 512x512 image), a
    # channels_last one the per-tap kernel (29 splits: 9 taps' programs, 2 per SM on 132 SMs).
    t = TensorBytes.of(W4)
    channels_last = layer_bytes(W4, "channels_last")
    nchw = layer_bytes(W4, "nchw")
    assert nchw[FORWARD][1] - channels_last[FORWARD][1] == t.x
    assert nchw[FORWARD][3]["router_pool_kernel"] == 2 * t.x + t.partials
    # One float32 partial sum of the (B, out, C, 3, 3) kernel and (B, out) bias gradients.
    per_split = 1 * 64 * 64 * 9 * 4 + 1 * 64 * 4
    nchw_parts = nchw[FORWARD_BACKWARD][3]["conv_bwd_weight_3x3_kernel"] - 2 * t.y - t.x
    parts = channels_last[FORWARD_BACKWARD][3]["conv_bwd_weight_kernel"] - t.y - t.x
    assert (nchw_parts, parts) == (64 * per_split, 29 * per_split)
    assert (nchw[FORWARD_BACKWARD][1] - channels_last[FORWARD_BACKWARD][1]
            == t.x + t.y + 2 * (nchw_parts - parts))


def test_costs_command_prints_the_bytes_model(capsys):
    assert cli.main(["costs"]) == 0
    out = capsys.readouterr().out
    assert "HBM bytes the triton path moves" in out
    assert "| W4 | channels_last | forward_backward | 7 |" in out
