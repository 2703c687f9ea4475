"""What Triton's compiler makes of the kernels for Hopper (sm_90), read by the kernel report.

The interpreter tests check what the kernels compute; these check what the real compiler, down to
ptxas, builds from the launches a layer makes. No GPU is needed. Compiles run in a subprocess
(the test session runs Triton in interpreter mode) on two processes sharing Triton's cache.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

GEMM_KERNELS = ("conv_fwd_kernel", "conv_bwd_input_kernel", "conv_bwd_weight_kernel")


def run_compiled_mode(*command) -> str:
    """Run a python command in a process where Triton compiles (no interpreter); its stdout."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def run_report(tmp_path, *options) -> dict:
    """The report's data for a subset of cases."""
    path = tmp_path / "report.json"
    run_compiled_mode("-m", "triton_nsr.kernels.report", "--workers", "2", "--json", str(path),
                      *options)
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def odd_bf16(tmp_path_factory):
    """Every kept config of every kernel on the odd shape (3 x 24 -> 48, 37x29), bf16, both
    layouts."""
    return run_report(tmp_path_factory.mktemp("report"), "--shape", "odd", "--precision", "bf16")


def gemm_compiles(data, layout=None):
    indices = {r["compile"] for r in data["rows"]
               if r["kernel"] in GEMM_KERNELS and layout in (None, r["layout"])}
    return [data["compiles"][str(i)] for i in sorted(indices)]


def test_every_kept_gemm_config_compiles_to_wgmma(odd_bf16):
    compiles = gemm_compiles(odd_bf16)
    assert len(compiles) >= 3 * len(GEMM_KERNELS)
    for c in compiles:
        assert c["error"] is None, c
        assert c["mma"] == "wgmma", c


def forward_routes(data, operand):
    return {c["operands"][operand]["route"] for c in gemm_compiles(data)
            if c["kernel"] == "conv_fwd_kernel"}


def test_operand_routes_read_from_the_ptx(odd_bf16, tmp_path):
    # NCHW bf16: a tap shift moves the pixel tile by 2 bytes, so the input tile is loaded
    # synchronously. channels_last with 24 channels: the column stride 24 is not a multiple of
    # 16 for the JIT, so the 16-byte alignment cannot be proven either.
    assert forward_routes(odd_bf16, 0) == {"ld.global 2B"}
    # With 32 channels (W1-expand) channels_last reaches 16-byte cp.async for the input tile.
    w1 = run_report(tmp_path, "--shape", "W1-expand", "--precision", "bf16", "--layout",
                    "channels_last")
    assert forward_routes(w1, 0) == {"cp.async 16B"}
    # The per-sample weights (B, out, Cg, kh, kw) have no contiguous [c, o] dimension.
    assert forward_routes(odd_bf16, 1) == forward_routes(w1, 1) == {"ld.global 2B"}


@pytest.mark.xfail(strict=True, reason="Hopper main loops not rewritten yet (issue 10, part 3): "
                   "docs/kernels.md shows synchronous loads, wgmma wait depth 0 and, in the "
                   "weight gradient on this shape, spills")
def test_every_kept_gemm_config_meets_the_hopper_criteria(odd_bf16):
    for c in gemm_compiles(odd_bf16):
        assert c["spill_bytes"] == 0, c
        assert c["wait_depth"] and c["wait_depth"] >= 1, c
        assert all(o["route"] in ("TMA", "cp.async 16B") for o in c["operands"]), c


CAPTURE_W4 = """
import json
from triton_nsr.kernels.capture import LayerShape, capture
launches = capture(LayerShape("W4", 1, 64, 64, 512, 512), "bf16", "channels_last")
print(json.dumps([[l.kernel, {k: v for k, v in l.named.items() if isinstance(v, int)}]
                  for l in launches]))
"""


def test_capture_records_forward_and_backward_launches():
    launches = [(name, named) for name, named in json.loads(run_compiled_mode("-c", CAPTURE_W4))]
    names = [name for name, _ in launches]
    assert names.count("router_fwd_kernel") == names.count("router_bwd_kernel") == 1
    assert names.count("mix_fwd_kernel") == 1  # weight and bias banks in one launch
    assert names.count("conv_fwd_kernel") == 1
    assert names.count("conv_bwd_input_kernel") == 1
    assert names.count("conv_bwd_weight_kernel") == 1
    weight_grad = launches[names.index("conv_bwd_weight_kernel")][1]
    # Batch 1 at 512x512 splits the pixel sum for an H200's 132 SMs.
    assert weight_grad["num_splits"] > 1
    forward = launches[names.index("conv_fwd_kernel")][1]
    assert forward["input_channel_stride"] == 1  # channels_last reached the kernel as such


def test_report_shapes_are_the_benchmark_workloads():
    from bench.workloads import main_workloads
    from triton_nsr.kernels.report import SHAPES

    bench = {w.name: (w.batch, w.in_channels, w.out_channels, w.height, w.width, w.k, w.d)
             for w in main_workloads()}
    for shape in SHAPES:
        if shape.name != "odd":
            assert bench[shape.name] == (shape.batch, shape.in_channels, shape.out_channels,
                                         shape.height, shape.width, shape.k, shape.d)


def test_pruning_drops_oversized_tiles_and_keeps_three():
    import triton

    from triton_nsr.kernels.autotune import fits_shape, size_class

    assert size_class(48 * 48) == size_class(60 * 60) == 4096
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": 32})
               for m, n in ((64, 32), (128, 32), (64, 128), (128, 128), (256, 64))]
    prune = fits_shape("m", "n", "k")
    kept = prune(configs, {"m": 4096, "n": 32, "k": 32})
    assert [c.kwargs["BLOCK_N"] for c in kept] == [32, 32, 64]  # 2 fit; the least oversized
    assert len(prune(configs, {"m": 4096, "n": 128, "k": 32})) == 5


def test_index_dtype_widens_only_when_needed():
    import triton.language as tl

    from triton_nsr.kernels.autotune import index_dtype

    small = torch.empty(4, 8, 16, 16)
    assert index_dtype([small, None]) == tl.int32
    # A per-sample extent past 2**31 (strides only; no memory is touched).
    huge = torch.empty_strided((2, 3, 2**15, 2**15), (3 * 2**30, 2**30, 2**15, 1),
                               device="meta")
    assert index_dtype([small, huge]) == tl.int64
