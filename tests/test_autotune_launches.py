"""Every tuned kernel's ``triton.autotune``, built by the installed Triton and driven by the layer.

CI runs this with the Triton a fresh install brings (3.9); the GPU machines run 3.6, which the
kernel report's side venv has: run this file there too (README, "Tested versions"). The layer's
launches go through Triton's own autotuner in a child process that compiles them for sm_90 in
place of running them (tests/autotune_launches.py): a key name Triton refuses, a key Triton
computes otherwise than the tuned-config table stores, a pruner or ``do_bench`` call that does
not fit this Triton, or a compile that fails, fails here rather than at a user's first backward.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from triton_nsr.kernels import tuned_configs  # noqa: E402
from triton_nsr.kernels.inspection.capture import LayerShape, capture, kernels  # noqa: E402
from triton_nsr.kernels.tuned_configs import TunedKernel  # noqa: E402

# What a layer call launches, per case: router, mixing, forward conv; kernel gradient (the
# all-taps one for a 16-bit NCHW dy, else per tap), mixing and router backward, input gradient.
LAYER_KERNELS = {"router_pool_kernel", "mix_fwd_kernel", "conv_fwd_kernel", "mix_bwd_kernel",
                 "router_bwd_kernel", "conv_bwd_input_kernel"}


def all_taps(precision, layout, variant):
    return precision == "bf16" and layout == "nchw" and variant is None


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    """The child's records: both shapes, three precisions, both layouts."""
    out = tmp_path_factory.mktemp("autotune") / "launches.json"
    env = {key: value for key, value in os.environ.items()
           if key not in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    result = subprocess.run([sys.executable, "-m", "tests.autotune_launches", str(out)],
                            capture_output=True, text=True, env=env, timeout=900,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_tuned_kernel_builds_its_autotuner(driven):
    import triton

    assert driven["triton"] == triton.__version__
    assert driven["built"] == {name: None for name in kernels()}


@pytest.mark.slow
def test_every_layer_launch_autotunes_on_the_key_the_table_stores(driven):
    records = driven["records"]
    cases = {(r["shape"], r["precision"], r["layout"], r["variant"]) for r in records}
    assert len(cases) == 2 * (3 * 2 + 1)
    for case in cases:
        launched = [r for r in records if (r["shape"], r["precision"], r["layout"],
                                           r["variant"]) == case]
        gradient = ("conv_bwd_weight_3x3_kernel" if all_taps(*case[1:])
                    else "conv_bwd_weight_kernel")
        assert {r["kernel"] for r in launched} == LAYER_KERNELS | {gradient}, case
    for record in records:
        assert record.get("error") is None, record
        # A new shape class: Triton's autotuner keyed it exactly as TunedKernel.shape_class
        # does (the tuned-config table's entry key), benchmarked each pruned config, and the
        # launch compiled for sm_90, with FP fusion stated.
        assert record["triton_key"] is not None, record
        assert record["keys_equal"], record
        configs = driven["configs"][record["kernel"]]
        pruned = record.get("pruned", configs)
        assert pruned and set(pruned) <= set(configs), record
        assert record["benched"] == len(pruned), record
        assert record["compiled"], record
        for compiled in record["compiled"]:
            assert compiled["name"] == record["kernel"]
            assert compiled["fp_fusion"] is True


@pytest.mark.slow
def test_the_transposed_kernel_gradient_tunes_its_own_tiles(driven):
    from triton_nsr.kernels.conv_bwd_weight import X_ROWS_WEIGHT_GRAD_CONFIGS
    from triton_nsr.kernels.inspection.compiled import config_label

    own = {config_label(c) for c in X_ROWS_WEIGHT_GRAD_CONFIGS}
    transposed = [r for r in driven["records"] if r["variant"] == "per_tap_x_in_registers"
                  and r["kernel"] == "conv_bwd_weight_kernel"]
    assert len(transposed) == 2
    for record in transposed:
        assert set(record["pruned"]) <= own
        assert "True" in record["ours"]


def test_a_key_name_that_is_no_argument_is_refused_when_the_kernel_is_built():
    kernel = kernels()["conv_bwd_weight_kernel"]
    with pytest.raises(ValueError, match="conv_bwd_weight_kernel.*'INPUT_ROUTE'"):
        TunedKernel(kernel.fn, kernel.configs, [*kernel.key, "INPUT_ROUTE"], interpreted=True)
    with pytest.raises(ValueError, match="'kernel_h', 'X_IN_REGISTERS'"):
        TunedKernel(kernels()["conv_bwd_weight_3x3_kernel"].fn, kernel.configs,
                    ["in_group_channels", "kernel_h", "X_IN_REGISTERS"], interpreted=True)
    for kernel in kernels().values():
        assert set(kernel.key) <= set(kernel.arg_names), kernel.name


# The sections of the committed table whose kernels have not changed since the H200 run that
# tuned them (the per-tap kernel gradient, the router backward, the mixing, whose router
# divides by the temperature after the peak is taken off, the mixing backward, which reads a
# conv weight's bank in its own strides, and the all-taps kernel gradient, whose new dy row
# enters the MMAs from registers, have). A change to one of these kernels' code makes its
# section unusable: take it off this list in the same commit, knowingly.
STILL_TUNED = ("conv_fwd_kernel", "conv_bwd_input_kernel", "router_pool_kernel")
TUNED_ON = tuned_configs.Target("3.6.0", "NVIDIA H200")


@pytest.mark.parametrize("name", STILL_TUNED)
def test_the_stored_table_still_serves_the_kernels_it_tuned(name):
    table = tuned_configs.load_table(tuned_configs.TABLE_PATH)
    ident = kernels()[name].section_id(TUNED_ON)
    assert ident in {tuned_configs.section_id(s) for s in table["sections"]}


def test_the_stored_keys_are_the_shape_classes_the_layer_computes():
    # W1-expand's bf16 layer, NCHW: every launch still tuned finds the config the H200 tuned
    # for it, and the all-taps kernel gradient's shape class is a key of its stored section
    # (from before its code changed), keyed as before the kernels had a key list each.
    table = tuned_configs.load_table(tuned_configs.TABLE_PATH)
    shape = LayerShape("W1-expand", 16, 32, 128, 48, 48)
    hits = set()
    for launch in capture(shape, "bf16", "nchw"):
        kernel = kernels()[launch.kernel]
        key = kernel.shape_class(launch.named)
        if launch.kernel in STILL_TUNED:
            assert kernel.stored(key, TUNED_ON, table) is not None, (launch.kernel, key)
            hits.add(launch.kernel)
        elif launch.kernel == "conv_bwd_weight_3x3_kernel":
            stored_keys = {entry for section in table["sections"]
                           if section["kernel"] == launch.kernel
                           and (section["triton"], section["device"])
                           == (TUNED_ON.triton, TUNED_ON.device)
                           for entry in section["entries"]}
            assert tuned_configs.entry_key(key) in stored_keys, key
            hits.add(launch.kernel)
    assert "conv_bwd_weight_3x3_kernel" in hits and "conv_fwd_kernel" in hits


# Every kernel's source hash (tuned_configs.source_hash: the kernel and the jitted functions it
# calls, each from its def line). Moving a kernel verbatim, to another file or line, keeps it, and
# with it the kernel's sections of the committed table; a change to a kernel's code changes it:
# update the hash here in the same commit, and STILL_TUNED above if the kernel is on it.
SOURCE_HASHES = {
    "router_pool_kernel":
        "ddfeec295a64da942cb9e5dcf7fb4279afc06d22cebdb5b27ef13ff735665c46",
    "router_bwd_kernel":
        "42f62103cee209a64931c072d7e29de7d7170ac79be3b5dcda54f253a3720eb6",
    "mix_fwd_kernel":
        "4de645e631755e1158c859c35d86c862e5b4cd8acbf878f7ab743c9dec89139c",
    "mix_bwd_kernel":
        "642d78c5c766d4ee96fd317a41e024bdeea306770e74fd5d4469f7622e30be3b",
    "conv_fwd_kernel":
        "9b31d7c77ae8706952c7652072f00b5a4215d6325f0f6892d6460b9d095543a7",
    "conv_bwd_weight_3x3_kernel":
        "f0c0cee2994968d851f8db2ecf6522d1c1a9e54073d074e2ac1a50198eb32eae",
    "conv_bwd_weight_kernel":
        "9aff3e185fb65f88c82a212dc1ef5411378120144f31c07f8212b5f18b438278",
    "conv_bwd_weight_row_kernel":
        "8ec97c4c00299a0e6992cecbc5361e1c80b6de2cba36c8a306f00b4176f5a8ea",
    "conv_bwd_input_kernel":
        "56fd76fd26deee6c33ce3a2650fbf94920e02dc2dd275072e11660141c5fc5aa",
}


def test_every_kernel_keeps_its_source_hash():
    assert {name: kernel.source_hash for name, kernel in kernels().items()} == SOURCE_HASHES


def test_source_hash_leaves_out_the_decorators():
    kernel = kernels()["conv_bwd_weight_3x3_kernel"]
    source = tuned_configs.function_source(kernel.fn.fn)
    assert source.startswith("def conv_bwd_weight_3x3_kernel(")
    assert "@tuned" not in source and "@triton.jit" not in source
