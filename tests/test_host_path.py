"""The layer's host path with Triton's real JIT, compiled for sm_90, only the launcher stood in.

A known call (the same signature as an earlier one) goes straight to the compiled kernels'
launcher: no JIT run (Triton's binder), no compile, no autotune, no host read of a tensor
value, and it allocates what it returns, what its backward saves and the per-call scratch,
nothing else: the steady state a CUDA graph captures. The launcher gets exactly the arguments
the JIT would have given it. The tools' modes (recording, a fixed config, a forced kernel
choice) and forgetting the launch plans send every launch through the JIT again. Counts, not
microseconds: ``python -m bench host-time`` measures the time. Run with the installed Triton
(3.9 in CI) and, in the side venv, 3.6 (README, "Tested versions").
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORWARD_LAUNCHES, TRAINING_LAUNCHES = 3, 7
# What a call allocates, bf16 under autocast. Forward: the output, the routing and the means,
# the mixed kernels' packed storage and the mixed bias (saved or read by the convolution), the
# pooling's partial sums (scratch), and for an NCHW input its channels_last copy (saved in its
# place). Backward: the kernel gradient and the bias gradient per sample, the routing's partial
# gradients, the gradients of weight, bias, mlp weight, mlp bias, the mean's gradient, the
# input's gradient, and for an NCHW dy its channels_last copy. float32 runs TF32 (the CPU's
# precision setting for convolutions, as on a GPU by default): a forward whose input gradient
# will be wanted also writes the kernels in the layout the TF32 input gradient reads.
ALLOCATIONS = {"nchw": (7, 7 + 10), "channels_last": (6, 6 + 9)}


@pytest.fixture(scope="module")
def host_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("host") / "host_path.json"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "tests.host_path", str(out)],
                            capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads(out.read_text())


def test_a_known_call_launches_straight_to_the_compiled_kernels(host_path):
    for case, passes in host_path["cases"].items():
        layout = case.split("-")[0]
        for name, launches in (("forward", FORWARD_LAUNCHES),
                               ("forward_backward", TRAINING_LAUNCHES)):
            counted = passes[name]
            assert counted["launches"] == launches, (case, name, counted)
            assert counted["jit_runs"] == 0, (case, name, counted)
            assert counted["compiles"] == 0 and counted["autotunes"] == 0, (case, name)
            assert counted["host_reads"] == 0, (case, name, counted["aten"])
            # The layer plan's signature stands for every launch's tensors.
            assert counted["tensor_checks"] == 0, (case, name, counted)
        forward, training = ALLOCATIONS[layout]
        tf32 = "fp32" in case
        assert passes["forward"]["allocations"] == forward, (case, passes["forward"])
        assert passes["forward_backward"]["allocations"] == training + tf32, case
        # Nothing but allocations and, under autocast, its casts of the input and of the
        # input's gradient.
        ops = set(passes["forward_backward"]["aten"]) - {"empty", "empty_like", "empty_strided",
                                                         "new_empty"}
        assert ops <= {"_to_copy"}, (case, passes["forward_backward"]["aten"])


def test_the_known_path_hands_the_launcher_what_the_jit_would(host_path):
    known, jit = host_path["arguments"]["known"], host_path["arguments"]["jit"]
    assert [name for name, _ in known] == [name for name, _ in jit]
    assert len(known) == TRAINING_LAUNCHES
    for (name, ours), (_, triton) in zip(known, jit):
        assert ours == triton, name


def test_the_tools_modes_take_the_jit(host_path):
    modes = host_path["modes"]
    for mode in ("fixed config", "suspended", "after clear_launch_plans"):
        assert modes[mode]["launches"] == TRAINING_LAUNCHES, mode
        assert modes[mode]["jit_runs"] == TRAINING_LAUNCHES, mode
    # Recording launches nothing and never reaches the JIT.
    assert modes["recording"]["launches"] == 0 and modes["recording"]["jit_runs"] == 0


def test_a_launch_hook_gets_the_launch_metadata_of_known_launches(host_path):
    assert host_path["hook"] == ["router_pool_kernel", "mix_fwd_kernel", "conv_fwd_kernel"]


def test_a_misaligned_weight_takes_the_jit_once_then_is_known(host_path):
    case = host_path["misaligned"]
    assert case["address"] != 0
    calls = case["calls"]
    # The mixing forward and backward read the weight in place: Triton specialises them anew.
    assert calls["first"]["jit_runs"] == 2, calls
    assert calls["first"]["launches"] == TRAINING_LAUNCHES
    for name in ("second", "aligned again", "new temperature"):
        assert calls[name]["jit_runs"] == 0 and calls[name]["launches"] == TRAINING_LAUNCHES, \
            (name, calls)
    # A misaligned parameter gives no signature: every launch checks its tensors, and so does
    # the aligned weight's first call after it (its sites last launched without one).
    assert calls["second"]["tensor_checks"] == TRAINING_LAUNCHES, calls
    assert calls["aligned again"]["tensor_checks"] >= TRAINING_LAUNCHES, calls
    assert calls["new temperature"]["tensor_checks"] == 0, calls
    known, jit = case["arguments"]["known"], case["arguments"]["jit"]
    assert len(known) == TRAINING_LAUNCHES
    for (name, ours), (_, triton) in zip(known, jit):
        assert ours == triton, name
