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

pytest.importorskip("triton")
# Each test compiles kernels down to ptxas in child processes: tens of seconds on 2 cores.
pytestmark = pytest.mark.slow

GEMM_KERNELS = ("conv_fwd_kernel", "conv_bwd_input_kernel", "conv_bwd_weight_kernel",
                "conv_bwd_weight_3x3_kernel")


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
    run_compiled_mode("-m", "triton_nsr.kernels.inspection.report", "--workers", "2", "--json",
                      str(path), *options)
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def odd_bf16(tmp_path_factory):
    """Every kept config of every kernel on the odd shape (3 x 24 -> 48, 37x29), bf16 and TF32,
    both layouts."""
    return run_report(tmp_path_factory.mktemp("report"), "--shape", "odd", "--precision", "bf16",
                      "--precision", "tf32")


def gemm_compiles(data, layout=None, precision=None, kernels=GEMM_KERNELS, path=None,
                  alternative=None):
    indices = {r["compile"] for r in data["rows"]
               if r["kernel"] in kernels and layout in (None, r["layout"])
               and precision in (None, r["precision"]) and path in (None, r["path"])
               and alternative in (None, r["alternative"])}
    return [data["compiles"][str(i)] for i in sorted(indices)]


def test_every_kept_gemm_config_compiles_to_wgmma(odd_bf16):
    compiles = gemm_compiles(odd_bf16)
    assert len(compiles) >= 3 * len(GEMM_KERNELS)
    for c in compiles:
        assert c["error"] is None, c
        assert c["mma"] == "wgmma", c


def routes(data, kernel, operand, layout):
    return {c["operands"][operand]["route"] for c in gemm_compiles(data, layout, "bf16")
            if c["kernel"] == kernel}


def test_operand_routes_read_from_the_ptx(odd_bf16):
    # NCHW bf16 at width 29: rows 58 bytes apart, which TMA cannot take. The forward reads the
    # channels_last copy of x the pooling pass writes (24 channels = 48 bytes per pixel: a TMA
    # box at every tap), the input gradient the copy of dy the kernel gradient writes. The
    # all-taps kernel gradient boxes that copy of x too; it reads the NCHW dy itself, whose
    # 58-byte rows TMA cannot take and Triton cannot prove 16-byte aligned: 2-byte loads.
    for kernel in ("conv_fwd_kernel", "conv_bwd_input_kernel", "conv_bwd_weight_3x3_kernel"):
        assert {r["path"] for r in odd_bf16["rows"] if r["kernel"] == kernel
                and r["layout"] == "nchw"} == {"tma_channels_last"}
    for kernel in ("conv_fwd_kernel", "conv_bwd_input_kernel"):
        for layout in ("nchw", "channels_last"):
            assert routes(odd_bf16, kernel, 0, layout) == {"TMA"}
    for layout in ("nchw", "channels_last"):
        assert routes(odd_bf16, "conv_bwd_weight_3x3_kernel", 1, layout) == {"TMA"}
    assert routes(odd_bf16, "conv_bwd_weight_3x3_kernel", 0, "nchw") == {"ld.global 2B"}
    assert routes(odd_bf16, "conv_bwd_weight_3x3_kernel", 0, "channels_last") == {
        "cp.async 16B"}
    # The packed per-sample weights are contiguous along K with 16-element strides.
    for kernel in ("conv_fwd_kernel", "conv_bwd_input_kernel"):
        for layout in ("nchw", "channels_last"):
            assert routes(odd_bf16, kernel, 1, layout) == {"cp.async 16B"}


def test_synchronous_loads_are_charged_to_the_line_the_llvm_ir_names():
    # Triton 3.9's PTX put a predicated ld.global under the .loc of the line scheduled before
    # it (385 for a load on 382); the LLVM IR's !dbg names the load's own line, or, for a load
    # inlined from a helper in another file, the kernel line it was inlined at.
    from triton_nsr.kernels.inspection.compiled import global_loads_by_line

    ptx = """
    .file 1 "/src/kernels/k.py"
    .loc 1 382 14
    cp.async.cg.shared.global [ %r1 + 0 ], [ %rd1 + 0 ], 0x10, %r2;
    .loc 1 385 14
    @%p2 ld.global.v4.b32 { %r148, %r149, %r150, %r151 }, [ %rd30 + 0 ];
    @%p2 ld.global.b16 { %rs1 }, [ %rd31 + 0 ];
    """
    llir = """
  %1 = tail call i32 asm "@$2 ld.global.v4.b32 { $0 }, [ $1 + 0 ];", "=r,l,b"(...), !dbg !62
  %2 = tail call i16 asm "@$2 ld.global.b16 { $0 }, [ $1 + 0 ];", "=c,l,b"(...), !dbg !70
  %3 = load <2 x float>, ptr addrspace(1) %r, align 8, !dbg !62
!1 = !DIFile(filename: "k.py", directory: "/src/kernels")
!4 = distinct !DISubprogram(name: "k", linkageName: "k", scope: !1, file: !1, line: 300)
!15 = !DIFile(filename: "tiling.py", directory: "/src/kernels")
!17 = distinct !DILexicalBlockFile(scope: !4, file: !15, discriminator: 0)
!62 = !DILocation(line: 382, column: 14, scope: !4)
!70 = !DILocation(line: 20, column: 5, scope: !17, inlinedAt: !71)
!71 = !DILocation(line: 396, column: 17, scope: !4)
"""
    assert global_loads_by_line(ptx, "/src/kernels/k.py") == {
        382: {"cp.async 16B"}, 385: {"ld.global 16B", "ld.global 2B"}}
    assert global_loads_by_line(ptx, "/src/kernels/k.py", llir) == {
        382: {"cp.async 16B", "ld.global 16B", "ld.global 8B"}, 396: {"ld.global 2B"}}


def meets_criteria(c):
    return (c["error"] is None and c["mma"] == "wgmma" and c["spill_bytes"] == 0
            and (c["wait_depth"] or 0) >= 1
            and all(o["route"] in ("TMA", "cp.async 16B") for o in c["operands"]))


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_forward_and_input_gradient_tma_paths_meet_the_hopper_criteria(odd_bf16, precision,
                                                                        layout):
    # Every kept config on a TMA path: wgmma, operands by TMA or 16-byte cp.async, wait >= 1,
    # no spills. Launches TMA cannot take name the gather fallback instead.
    kernels = ("conv_fwd_kernel", "conv_bwd_input_kernel")
    paths = {r["path"] for r in odd_bf16["rows"] if r["kernel"] in kernels
             and (r["precision"], r["layout"]) == (precision, layout)}
    # Width 29 is unaligned: in NCHW both read the channels_last copies of x and dy.
    assert paths == {"tma_channels_last"}
    for path in ("tma_nchw", "tma_channels_last"):
        for c in gemm_compiles(odd_bf16, layout, precision, kernels, path):
            assert meets_criteria(c), c


def test_weight_gradient_meets_the_hopper_criteria(odd_bf16):
    # bf16 with a channels_last dy takes the per-tap kernel (faster on an H200); the report
    # also compiles the all-taps kernel there, which meets the criteria: x by TMA, dy by
    # 16-byte cp.async. The per-tap kernel gathers x at tap-shifted pixels: on W1 and W4 by
    # 16-byte cp.async (the H200's own compiles, bench.gpu.jit_compare), but the odd shape's 24
    # channels are a pixel stride Triton cannot prove 16-byte aligned: 2-byte loads, the named
    # fallback. An NCHW dy takes the all-taps kernel; at width 29 its dy cannot come by
    # cp.async either (below).
    layer = {r["compile"] for r in odd_bf16["rows"] if not r["alternative"]
             and (r["layout"], r["precision"]) == ("channels_last", "bf16")
             and r["kernel"].startswith("conv_bwd_weight")}
    per_tap = gemm_compiles(odd_bf16, "channels_last", "bf16", ("conv_bwd_weight_kernel",))
    assert {c["hash"] for c in per_tap} == {odd_bf16["compiles"][str(i)]["hash"] for i in layer}
    assert len(per_tap) >= 3
    for c in per_tap:
        assert c["mma"] == "wgmma" and c["spill_bytes"] == 0, c
        assert {o["name"]: o["route"] for o in c["operands"]} == {
            "dy": "cp.async 16B", "x": "ld.global 2B"}, c
    compiles = gemm_compiles(odd_bf16, "channels_last", "bf16", ("conv_bwd_weight_3x3_kernel",))
    assert len(compiles) >= 3
    for c in compiles:
        assert meets_criteria(c), c
    # The NCHW fallback loads dy by 2 bytes and writes its copy. The 64x32 and 128x32 tiles do
    # so without spilling (on 4 warps, or with BLOCK_K=32 at 128 rows, they spilled 190-290 B
    # here; 64x64 spills 32 B with Triton 3.9, none with 3.6).
    compiles = gemm_compiles(odd_bf16, "nchw", "bf16", ("conv_bwd_weight_3x3_kernel",))
    assert sum("BLOCK_N=32" in c["config"] for c in compiles) == 2
    for c in compiles:
        assert c["mma"] == "wgmma", c
        assert "BLOCK_N=32" not in c["config"] or c["spill_bytes"] == 0, c


CARRIED_ROWS = r"""
import re
import sys
import torch
from triton_nsr.kernels.inspection.capture import LayerShape, alternative_launches, kernels
from triton_nsr.kernels.inspection.compiled import compile_launch
from triton_nsr.kernels.inspection.report import kept_configs
in_channels, out_channels = int(sys.argv[1]), int(sys.argv[2])
shape = LayerShape("T", 2, in_channels, out_channels, 16, 16)
for launch in alternative_launches(shape, "bf16", "channels_last"):
    if launch.kernel == "conv_bwd_weight_3x3_kernel":
        print("TRANSPOSED", launch.named["TRANSPOSED"])
        tuner = kernels()[launch.kernel]
        config = tuner.configs[kept_configs(tuner, launch)[0]]
        ttir = compile_launch(tuner, launch, config).asm["ttir"]
        for a, b in re.findall(r"= tt\.dot (%[\w.]+), (%[\w.]+),", ttir):
            print(a, b)
"""


@pytest.mark.parametrize("in_channels,out_channels,transposed",
                         [(64, 64, False), (128, 32, True)])
def test_all_taps_weight_gradient_multiplies_three_distinct_rows(in_channels, out_channels,
                                                                 transposed):
    # The kernel's dots as Triton's frontend lowered them: 9 dots, 3 carried rows (kernel rows
    # 0-2; dy's, or x's when TRANSPOSED) times 3 shifted taps, no operand a constant. A row
    # carried over two steps from one shared zero tile was once left uncarried, its dots
    # multiplying zeros (wrong on a GPU, right in the interpreter, which runs the Python as
    # written).
    lines = run_compiled_mode("-c", CARRIED_ROWS, str(in_channels),
                              str(out_channels)).splitlines()
    assert lines[0] == f"TRANSPOSED {transposed}", lines
    dots = [line.split() for line in lines[1:]]
    assert len(dots) == 9, dots
    assert len({a for a, _ in dots}) == 3 and len({b for _, b in dots}) == 3, dots
    assert not any(name.startswith("%cst") for dot in dots for name in dot), dots


TRAFFIC = """
import json
from triton_nsr.kernels.inspection.capture import alternative_launches, capture, kernels
from triton_nsr.kernels.inspection.report import SHAPES, kept_configs
from triton_nsr.kernels.inspection.traffic import l2_to_sm_bytes
ratios = {}
for shape in SHAPES[:3]:
    for launch in [*capture(shape, "bf16", "channels_last"),
                   *alternative_launches(shape, "bf16", "channels_last")]:
        if launch.kernel.startswith("conv_bwd_weight"):
            tuner = kernels()[launch.kernel]
            for i in kept_configs(tuner, launch):
                read, unique = l2_to_sm_bytes(launch.kernel, launch.named,
                                              tuner.configs[i].kwargs, launch.batch)
                ratios[f"{shape.name} {launch.kernel} {i}"] = read / unique
print(json.dumps(ratios))
"""


def test_weight_gradient_reads_within_three_times_its_operands():
    # bf16 channels_last on W1 and W4 (kernels/inspection/traffic.py's model of L2 -> SM bytes): the
    # all-taps kernel keeps a config within 3x on every shape. W1-reduce (128 -> 32) runs it
    # TRANSPOSED, x's rows carried (read twice, 128 channels filling wgmma's rows) and dy
    # shifted (three times): 2.2x at best, where dy's rows carried gave 3.2x. The layer takes
    # the per-tap kernel there, 9-15x by this model and faster on an H200
    # (conv_bwd_weight.ALL_TAPS_LAYOUTS): the model is kept as the all-taps kernel's evidence.
    ratios = json.loads(run_compiled_mode("-c", TRAFFIC))
    all_taps = {name: r for name, r in ratios.items() if "3x3" in name}
    per_tap = {name: r for name, r in ratios.items() if "3x3" not in name}

    def best(shape):
        return min(r for name, r in all_taps.items() if name.startswith(shape + " "))

    assert best("W1-expand") <= 3 and best("W1-reduce") <= 3 and best("W4") <= 3, ratios
    assert max(all_taps.values()) < 4.5, ratios
    assert per_tap and min(per_tap.values()) > 3, ratios


CAPTURE_W4 = """
import json
from triton_nsr.kernels.inspection.capture import LayerShape, capture
launches = capture(LayerShape("W4", 1, 64, 64, 512, 512), "bf16", "channels_last")
print(json.dumps([[l.kernel, {k: v for k, v in l.named.items() if isinstance(v, int)}]
                  for l in launches]))
"""


def test_capture_records_forward_and_backward_launches():
    launches = [(name, named) for name, named in json.loads(run_compiled_mode("-c", CAPTURE_W4))]
    names = [name for name, _ in launches]
    assert names.count("router_pool_kernel") == names.count("router_bwd_kernel") == 1
    assert names.count("mix_fwd_kernel") == 1  # weight and bias banks in one launch
    assert names.count("conv_fwd_kernel") == 1
    assert names.count("conv_bwd_input_kernel") == 1
    # bf16 3x3 at stride 1 with a channels_last dy: the per-tap weight gradient, one launch.
    assert names.count("conv_bwd_weight_kernel") == 1
    assert "conv_bwd_weight_3x3_kernel" not in names
    weight_grad = launches[names.index("conv_bwd_weight_kernel")][1]
    # Batch 1 at 512x512 splits the pixel sum for an H200's 132 SMs.
    assert weight_grad["num_splits"] > 1
    forward = launches[names.index("conv_fwd_kernel")][1]
    assert forward["input_channel_stride"] == 1  # channels_last reached the kernel as such


def test_report_shapes_are_the_benchmark_workloads():
    from bench.workloads import main_workloads
    from triton_nsr.kernels.inspection.capture import W2
    from triton_nsr.kernels.inspection.report import SHAPES

    bench = {w.name: (w.batch, w.in_channels, w.out_channels, w.height, w.width, w.k, w.d)
             for w in main_workloads()}
    for shape in [*SHAPES, W2]:
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
    # The MMA's rows may be BLOCK_N (rows="BLOCK_N"): that one is floored at wgmma's 64.
    small = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": 16})
             for m, n in ((32, 64), (16, 64), (32, 16), (16, 16))]
    sizes = {"m": 32, "n": 32, "k": 16}
    assert fits_shape("m", "n", "k", rows="BLOCK_N")(small, sizes) == small
    # BLOCK_M's floor: both 64-wide N tiles overshoot; the first fills the third place.
    assert fits_shape("m", "n", "k")(small, sizes) == [small[0], *small[2:]]


def test_per_tap_weight_gradient_tries_the_tiles_of_its_orientation():
    from triton_nsr.kernels import conv_bwd_weight

    tuner = conv_bwd_weight.conv_bwd_weight_kernel
    named = {"out_group_channels": 256, "in_group_channels": 256, "tuning_pixels": 4096}
    for x_in_registers, mine in ((False, conv_bwd_weight.WEIGHT_GRAD_CONFIGS),
                                 (True, conv_bwd_weight.X_ROWS_WEIGHT_GRAD_CONFIGS)):
        kept = tuner.early_config_prune(tuner.configs, named, X_IN_REGISTERS=x_in_registers)
        assert len(kept) >= 3 and all(any(c is m for m in mine) for c in kept)
        rows = "BLOCK_N" if x_in_registers else "BLOCK_M"
        assert all(c.kwargs[rows] >= 64 for c in kept)


# The pipelined loop of the old per-tap kernel gradient, as Triton 3.6 lowered it (TTGIR, cut
# down): dy also fed the bias sum, so its ring has 2 buffers for a load 2 steps ahead, while the
# wgmma reading it stays in flight (pendings = 1); x's ring has 3.
RACY_LOOP = """
    %dy_60 = ttg.local_alloc : () -> !ttg.memdesc<2x64x64xf32, #shared, #smem, mutable> loc(#l)
    %x_61 = ttg.local_alloc : () -> !ttg.memdesc<3x64x32xf32, #shared1, #smem, mutable> loc(#l)
    %dy_88 = ttg.memdesc_index %dy_60[%c0_i32] : !ttg.memdesc<2x64x64xf32> loc(#l)
    %x_102 = ttg.memdesc_index %x_61[%c0_i32] : !ttg.memdesc<3x64x32xf32> loc(#l)
    %dy_136 = ttg.memdesc_index %dy_60[%c1_i32] : !ttg.memdesc<2x64x64xf32> loc(#l)
    %x_150 = ttg.memdesc_index %x_61[%c1_i32] : !ttg.memdesc<3x64x32xf32> loc(#l)
      %dy_193 = ttg.memdesc_index %dy_60[%i] : !ttg.memdesc<2x64x64xf32> loc(#l)
      %x_195 = ttg.memdesc_index %x_61[%j] : !ttg.memdesc<3x64x32xf32> loc(#l)
      %acc = ttng.warp_group_dot %dy_193, %x_195, %arg33 {isAsync = true} : x
      %acc_196:3 = ttng.warp_group_dot_wait %acc, %dy_193, %x_195 {pendings = 1 : i32} : x
"""


def test_a_ring_of_shared_buffers_no_deeper_than_its_prefetch_races_a_running_mma():
    from triton_nsr.kernels.inspection.compiled import (
        Compiled,
        hopper_shortfalls,
        shared_buffer_races,
    )

    assert shared_buffer_races(RACY_LOOP) == ["dy: 2 buffers, loaded 2 steps ahead"]
    # A third buffer, or every MMA waited for before the next copies: no race.
    assert shared_buffer_races(RACY_LOOP.replace("<2x64x64", "<3x64x64")) == []
    assert shared_buffer_races(RACY_LOOP.replace("pendings = 1", "pendings = 0")) == []
    compiled = Compiled("k", "c", "wgmma", 1, 128, 0, 0,
                        races=shared_buffer_races(RACY_LOOP))
    assert hopper_shortfalls(compiled) == ["race on dy: 2 buffers, loaded 2 steps ahead"]


def test_no_kernel_the_layer_pipelines_overwrites_a_buffer_its_mma_reads(odd_bf16):
    # Every launch the layer makes (both precisions, both layouts) keeps every shared operand's
    # ring a buffer deeper than its prefetch. The per-tap kernel gradient loads dy again for its
    # bias sum and copy, and the all-taps kernel's new dy row enters its MMAs from registers:
    # loaded straight into the MMA, each had 2 buffers for a load 2 steps ahead under a wgmma
    # in flight (RACY_LOOP).
    compiles = [odd_bf16["compiles"][str(r["compile"])] for r in odd_bf16["rows"]
                if r["kernel"] in GEMM_KERNELS and not r["alternative"]]
    assert len(compiles) > 20 and all(c["races"] == [] for c in compiles), [
        (c["kernel"], c["config"], c["races"]) for c in compiles if c["races"]]
    # Known and left (docs/design.md): the all-taps kernel run TRANSPOSED, which the layer
    # never runs, sums its shifted tile (dy) for the bias.
    transposed = gemm_compiles(odd_bf16, kernels=("conv_bwd_weight_3x3_kernel",),
                               alternative=True)
    assert {race.split(":")[0] for c in transposed for race in c["races"]} <= {"shifted1"}


def test_tf32_per_tap_kernel_gradient_is_unpipelined(odd_bf16):
    # Pipelined, the TF32 per-tap kernel gradient wrote different bits on the same inputs on an
    # H200 (conv_bwd_weight.TF32_LOOP_STAGES): its pixel loop runs with one stage, so no MMA
    # group is left in flight. bf16 keeps its pipeline (a wgmma group in flight, wait 1) where
    # its loads allow it.
    tf32 = gemm_compiles(odd_bf16, precision="tf32", kernels=("conv_bwd_weight_kernel",),
                         alternative=False)
    assert tf32 and all(c["mma"] == "wgmma" and c["wait_depth"] == 0 for c in tf32), tf32
    from triton_nsr.kernels.inspection.capture import LayerShape, capture

    shape = LayerShape("T", 2, 16, 32, 8, 8)
    for precision, stages in (("tf32", 1), ("bf16", None), ("fp32", None)):
        (launch,) = [launch for launch in capture(shape, precision, "channels_last")
                     if launch.kernel == "conv_bwd_weight_kernel"]
        assert launch.named["LOOP_STAGES"] == stages, precision


X_IN_REGISTERS = r"""
import json
from triton_nsr.kernels.inspection.capture import LayerShape, alternative_launches, kernels
from triton_nsr.kernels.inspection.compiled import compile_and_inspect
from triton_nsr.kernels.inspection.report import kept_configs
compiles = []
for launch in alternative_launches(LayerShape("T", 2, 64, 32, 16, 16), "tf32", "nchw"):
    tuner = kernels()[launch.kernel]
    for index in kept_configs(tuner, launch):
        compiled = compile_and_inspect(tuner, launch, tuner.configs[index]).as_dict()
        compiles.append(compiled | {key: launch.named[key]
                                    for key in ("X_IN_REGISTERS", "LOOP_STAGES")})
print(json.dumps(compiles))
"""


def test_tf32_weight_gradient_with_x_in_registers_meets_the_hopper_criteria():
    # An NCHW dy in TF32 (64 -> 32 channels, 16x16), the per-tap kernel run transposed: x's
    # tile, the channels_last copy (MN-major), goes to wgmma's A from registers, dy (K-major)
    # to its B from shared memory, both by 16-byte cp.async, pipelined at the config's depth
    # (a wgmma group in flight). The layer keeps it off until an H200 shows it repeats
    # (conv_bwd_weight.TF32_X_IN_REGISTERS); the report compiles it as an alternative.
    compiles = json.loads(run_compiled_mode("-c", X_IN_REGISTERS).splitlines()[-1])
    assert len(compiles) >= 3
    for c in compiles:
        assert c["X_IN_REGISTERS"] is True and c["LOOP_STAGES"] is None, c
        assert meets_criteria(c) and c["races"] == [], c
        assert {o["name"]: (o["route"], o["into_mma"]) for o in c["operands"]} == {
            "x": ("cp.async 16B", "registers"), "dy": ("cp.async 16B", "shared memory")}, c


def test_index_dtype_widens_only_when_needed():
    import triton.language as tl

    from triton_nsr.kernels.autotune import index_dtype_of

    small = ((4, 8, 16, 16), (2048, 256, 16, 1))
    assert index_dtype_of([small]) == tl.int32
    # A per-sample extent past 2**31 (shape and strides only).
    huge = ((2, 3, 2**15, 2**15), (3 * 2**30, 2**30, 2**15, 1))
    assert index_dtype_of([small, huge]) == tl.int64


def test_the_report_says_why_each_miss_happens():
    # render_misses on stored-report-shaped data: a miss on the odd shape only gets the
    # divisibility cause, a known structural miss its own, an unknown one says so; fast
    # compiles and fp32 rows are not listed.
    from triton_nsr.kernels.inspection.report import MISS_CAUSES, ODD_CAUSE, render_misses

    def record(kernel, a_route, wait, spill=0):
        return {"kernel": kernel, "config": "BLOCK_M=64", "mma": "wgmma", "wait_depth": wait,
                "registers": 100, "spill_bytes": spill, "shared_memory": 0, "error": None,
                "operands": [{"name": "a", "route": a_route, "into_mma": "smem"},
                             {"name": "b", "route": "cp.async 16B", "into_mma": "smem"}]}

    compiles = {"0": record("conv_fwd_kernel", "TMA", 1),
                "1": record("conv_fwd_kernel", "ld.global 2B", 0),
                "2": record("conv_bwd_input_kernel", "cp.async 4B", 1, spill=8),
                "3": record("conv_bwd_weight_kernel", "ld.global 2B", 0),
                "4": record("conv_bwd_weight_kernel", "cp.async 4B", 3)}
    rows = [
        {"kernel": "conv_fwd_kernel", "precision": "bf16", "layout": "channels_last",
         "shape": "W4", "compile": 0, "traffic": None},
        {"kernel": "conv_fwd_kernel", "precision": "bf16", "layout": "nchw", "shape": "W4",
         "compile": 1, "traffic": None},
        {"kernel": "conv_bwd_input_kernel", "precision": "tf32", "layout": "channels_last",
         "shape": "odd", "compile": 2, "traffic": None},
        {"kernel": "conv_bwd_weight_kernel", "precision": "bf16", "layout": "channels_last",
         "shape": "W4", "compile": 3, "traffic": [900, 100]},
        {"kernel": "conv_fwd_kernel", "precision": "fp32", "layout": "nchw", "shape": "W4",
         "compile": 1, "traffic": None},
        {"kernel": "conv_bwd_weight_3x3_kernel", "precision": "bf16", "layout": "nchw",
         "shape": "W4", "compile": 0, "traffic": [350, 100]},
        # An alternative launch missing on the odd shape only: the divisibility cause, not
        # the layer's own cause for that kernel, precision and layout.
        {"kernel": "conv_bwd_weight_kernel", "precision": "tf32", "layout": "nchw",
         "shape": "odd", "compile": 4, "traffic": None, "alternative": True},
    ]
    text = "\n".join(render_misses({"triton": "3.9.0", "rows": rows, "compiles": compiles}))
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(lines) == 4
    assert MISS_CAUSES[("conv_fwd_kernel", "bf16", "nchw")] in lines[0]
    assert "| odd |" in lines[1] and ODD_CAUSE in lines[1] and "8 B spilled" in lines[1]
    assert "Not explained yet" in lines[2] and "| layer |" in lines[2]
    assert "| *alternative* | odd |" in lines[3] and ODD_CAUSE in lines[3]
    assert "Spills (bf16 and TF32) only on: odd channels_last tf32" in text
    # The budget is the all-taps kernel's; the layer's per-tap kernel (channels_last) is set
    # beside it with what the H200 measured.
    assert ("best kept config per shape and layout: W4 nchw 3.50x; the budget is 3x, "
            "missed on W4 nchw." in text)
    assert "the layer runs the per-tap kernel instead, W4 9.0x by the same model" in text


def test_triton_gives_a_tile_with_a_second_use_a_ring_one_buffer_short():
    # tests/ring_race_repro.py, compiled for sm_90 with the installed Triton (3.6 and 3.9 both
    # show it): a pipelined tile that feeds only the dot has a full ring; one that also feeds a
    # sum has a buffer too few under a running wgmma; a second, separately masked load for the
    # sum (triton_nsr's workaround) gives the dot's tile its full ring back.
    races = json.loads(run_compiled_mode("-m", "tests.ring_race_repro").splitlines()[-1])
    assert races["0"] == [] and races["2"] == [], races
    assert races["1"] == ["a: 2 buffers, loaded 2 steps ahead"], races


@pytest.mark.gpu
def test_the_full_ring_repeats_bit_for_bit_on_a_gpu():
    # On a GPU: the dot whose tile feeds only the dot, and the workaround's second load, give
    # the same bits launch after launch and the right product; the short ring (SUM_A = 1) is
    # launched too and how many of its launches differed is printed (-s), for the record of
    # which Triton versions show the race on which card.
    import torch

    from tests.ring_race_repro import ring_repro_kernel

    torch.manual_seed(0)
    block, k_size = 64, 4096
    a = torch.randn(block, k_size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k_size, block, device="cuda", dtype=torch.bfloat16)
    expected = a.float() @ b.float()
    for sum_a in (0, 2, 1):
        results = []
        for _ in range(20):
            out = torch.full((block, block), float("nan"), device="cuda")
            sums = torch.full((block,), float("nan"), device="cuda")
            ring_repro_kernel[(1,)](a, b, out, sums, k_size, block, SUM_A=sum_a, BLOCK=block,
                                    STAGES=3, num_warps=4)
            results.append((out, sums))
        differing = sum(not (torch.equal(o, results[0][0]) and torch.equal(s, results[0][1]))
                        for o, s in results[1:])
        if sum_a == 1:
            print(f"short ring: {differing} of 19 launches differed")
            continue
        assert differing == 0, sum_a
        torch.testing.assert_close(results[0][0], expected, rtol=2e-2, atol=1e-1)
        if sum_a == 2:
            torch.testing.assert_close(results[0][1], a.float().sum(1), rtol=1e-3, atol=1e-2)
