"""bench.gpu.layer_probe on the CPU: its repeat check names the launcher a difference starts in.

The probe runs on a GPU (make gpu's last step; bench/results/*_probe_*.json); here the layer
runs on the triton path in the interpreter, where every launch is deterministic, so a launcher
is made to add noise to see the check point at it.
"""

from collections import Counter

import torch

from bench.gpu import layer_probe
from bench.workloads import tiny_workloads
from triton_nsr.kernels.mix import MixBackward


def test_repeat_check_finds_no_difference_in_a_deterministic_layer():
    row = layer_probe.repeat_case(tiny_workloads()[0], "fp32", "nchw", "cpu")
    assert row["source"] is None
    assert all(result["equal"] for result in row["results"].values()), row["results"]
    names = [call["name"] for call in row["calls"]]
    assert names == ["router_pool", "route_and_mix", "conv_fwd", "conv_bwd_weight", "mix_bwd",
                     "router_bwd", "conv_bwd_input"]
    assert all(call["inputs_equal"] and call["outputs_equal"] for call in row["calls"])


def test_repeat_check_names_the_launcher_whose_outputs_differ(monkeypatch):
    launcher = MixBackward.__call__

    def noisy(self, *args, **kwargs):
        result = launcher(self, *args, **kwargs)
        for tensor in layer_probe._tensors(result):
            tensor.add_(torch.randn_like(tensor) * 1e-3)
        return result

    monkeypatch.setattr(MixBackward, "__call__", noisy)
    row = layer_probe.repeat_case(tiny_workloads()[0], "fp32", "nchw", "cpu")
    assert row["source"] == "call 4: mix_bwd"
    # Everything after it read different inputs; the layer's output (before it) agrees.
    assert row["results"]["output"]["equal"] and not row["results"]["grad_weight"]["equal"]
    assert not row["calls"][5]["inputs_equal"]


def test_kernel_gradient_repeats_report_splits_error_and_agreement():
    config = layer_probe.weight_grad_configs("per_tap", "tf32")[0]
    row = layer_probe.weight_grad_repeats((2, 8, 16, 6, 7), "tf32", "channels_last", "per_tap",
                                          config, "cpu")
    assert row["differing_launches"] == 0 and row["max_abs_difference"] == 0
    assert row["splits"] == 1 and row["error"] < 1e-5 and row["ms"] > 0
    # Run at the config's depth (the layer's TF32 loop is unpipelined), then the layer's again.
    from triton_nsr.kernels import conv_bwd_weight

    assert conv_bwd_weight.TF32_LOOP_STAGES == 1
    # The transposed TF32 kernel (an NCHW dy) is repeated right after the layer repeats, with
    # its own tiles; every kernel repeat runs once.
    jobs = layer_probe.probe_jobs()
    x_in_registers = layer_probe.weight_grad_configs("per_tap_x_in_registers", "tf32")
    first = len(layer_probe.REPEAT_CASES)
    assert [kind for kind, _ in jobs[:first]] == ["repeat"] * first
    assert jobs[first:first + len(x_in_registers)] == [
        ("kernel_repeats", ("W4-256", "tf32", "nchw", "per_tap_x_in_registers", c))
        for c in x_in_registers]
    assert Counter(case for kind, case in jobs if kind == "kernel_repeats") == Counter(
        layer_probe.repeat_jobs())
    assert all(c.kwargs["BLOCK_N"] >= 64 for c in x_in_registers)
    row = layer_probe.weight_grad_repeats((2, 8, 16, 6, 7), "tf32", "nchw",
                                          "per_tap_x_in_registers", x_in_registers[0], "cpu")
    assert row["differing_launches"] == 0 and row["error"] < 1e-5, row
    line = layer_probe.summary({"repeat": [], "kernel_repeats": [row], "profile": []})
    assert "per_tap_x_in_registers" in line and "0 of 3 differ" in line and line.endswith(" ms")
    # The per-tap kernel in TF32 is also tried with 1 and 2 stages; bf16 with its kept configs.
    assert len(layer_probe.weight_grad_configs("per_tap", "tf32")) == 9
    assert len(layer_probe.weight_grad_configs("per_tap", "bf16")) == 3


def test_pool_chunk_profiles_cut_the_pooling_as_asked_and_restore_the_layers_own():
    # The probe's pool-chunk cases profile W1-expand's forward pooled in 1, 4 and 9 chunks per
    # sample, after the profiles; inside pool_chunks_fixed the layer's pooling launch has that
    # many programs per sample, and after it the layer's own count again.
    from triton_nsr.kernels.inspection.capture import LayerShape, capture

    jobs = layer_probe.probe_jobs()
    kinds = [kind for kind, _ in jobs]
    assert kinds.index("pool_chunks") > max(i for i, k in enumerate(kinds) if k == "profile")
    assert [case[-1] for kind, case in jobs if kind == "pool_chunks"] == [1, 4, 9]
    shape = LayerShape("W1-expand", 2, 4, 8, 6, 6, k=2, d=2)

    def pooling_programs():
        launch = next(launch for launch in capture(shape, "fp32", "nchw")
                      if launch.kernel == "router_pool_kernel")
        return set(launch.programs.values())

    own = pooling_programs()
    with layer_probe.pool_chunks_fixed(9):
        assert pooling_programs() == {2 * 9}
    assert pooling_programs() == own == {2}
    line = layer_probe.summary({"repeat": [], "kernel_repeats": [], "profile": [],
                                "pool_chunks": [{"workload": "W1-expand", "precision": "bf16",
                                                 "layout": "channels_last", "pass": "forward",
                                                 "chunks": 4, "synchronised_us": 1.0,
                                                 "host_us": 1.0, "device_kernels_us": 1.0,
                                                 "kernels": {}, "host_functions": []}]})
    assert "forward pooled in 4 chunks:" in line

