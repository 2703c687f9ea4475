"""The kernel report: every launch of real layer calls, compiled for sm_90, read, written down.

    python -m triton_nsr.kernels.inspection.report           # compile with this Triton, store
    python -m triton_nsr.kernels.inspection.report --render  # docs/kernels.md from stored data

For each layer shape (W1's two layers, W4, and an odd shape divisible by neither 8 nor 16), each
precision (bf16, TF32, fp32) and layout (NCHW, channels_last), the layer runs forward and backward
with its kernels recorded, not executed (kernels.capture); each recorded launch is compiled for
every autotune config that the tuner keeps for it, with the JIT's specialisation
(kernels.compiled), on a pool of processes sharing Triton's cache. The findings go to
docs/kernels/triton-<version>.json, one file per Triton version, and docs/kernels.md is rendered
from every stored file. Run it without TRITON_INTERPRET set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from triton_nsr.kernels.inspection.capture import (
    W1_EXPAND,
    W1_REDUCE,
    W4,
    LayerShape,
    alternative_launches,
    capture,
    kept_configs,
    kernels,
)
from triton_nsr.kernels.inspection.compiled import (
    compile_and_inspect,
    config_label,
    hopper_shortfalls,
    specialisation_key,
)
from triton_nsr.kernels.inspection.grid_fill import render_grid_fill
from triton_nsr.kernels.inspection.traffic import l2_to_sm_bytes, weight_layout_costs

# W1 and W4 as bench/workloads.py defines them (tests check they agree), and an odd shape.
SHAPES = [
    W1_EXPAND,
    W1_REDUCE,
    W4,
    LayerShape("odd", 3, 24, 48, 37, 29),
]
PRECISION_NAMES = ("bf16", "tf32", "fp32")
LAYOUT_NAMES = ("nchw", "channels_last")
GEMM_KERNELS = ("conv_fwd_kernel", "conv_bwd_input_kernel", "conv_bwd_weight_kernel",
                "conv_bwd_weight_3x3_kernel")
DOCS = Path(__file__).resolve().parents[3] / "docs"


def _compile_job(job):
    """Worker: compile one (kernel, launch, config index) and return its findings as a dict."""
    kernel, launch, index = job
    tuner = kernels()[kernel]
    return compile_and_inspect(tuner, launch, tuner.configs[index]).as_dict()


def collect(shapes=SHAPES, precisions=PRECISION_NAMES, layouts=LAYOUT_NAMES,
            workers: int = 2) -> dict:
    """Capture, compile (once per distinct specialisation) and return the report's data."""
    import triton

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter has no compiler to read")
    tuners = kernels()
    rows, jobs, keys = [], {}, {}
    for shape in shapes:
        for precision in precisions:
            for layout in layouts:
                launches = [(launch, False) for launch in capture(shape, precision, layout)]
                launches += [(launch, True)
                             for launch in alternative_launches(shape, precision, layout)]
                for launch, alternative in launches:
                    tuner = tuners[launch.kernel]
                    for index in kept_configs(tuner, launch):
                        config = tuner.configs[index]
                        key = specialisation_key(tuner, launch, config)
                        keys.setdefault(key, len(keys))
                        jobs.setdefault(keys[key], (launch.kernel, launch, index))
                        traffic = l2_to_sm_bytes(launch.kernel, launch.named, config.kwargs,
                                                 launch.batch)
                        rows.append({"shape": shape.name, "precision": precision,
                                     "layout": layout, "kernel": launch.kernel,
                                     "path": launch.kwargs.get("INPUT_ROUTE"),
                                     "alternative": alternative,
                                     "compile": keys[key], "traffic": traffic})
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        compiled = dict(zip(jobs, pool.map(_compile_job, jobs.values())))
    return {"triton": triton.__version__, "target": "sm_90",
            "compile_seconds": round(time.perf_counter() - start, 1),
            "compiles": {str(k): v for k, v in compiled.items()}, "rows": rows,
            "removed": removed_configs()}


def removed_configs() -> list[dict]:
    """Configs taken out of the lists, with the reason (rendered into docs/kernels.md)."""
    from triton_nsr.kernels import conv, conv_bwd_weight, conv_bwd_weight_3x3

    removed = [("conv_fwd_kernel, conv_bwd_input_kernel", entry)
               for entry in conv.REMOVED_CONV_CONFIGS]
    removed += [("conv_bwd_weight_kernel", entry)
                for entry in conv_bwd_weight.REMOVED_WEIGHT_GRAD_CONFIGS]
    removed += [("conv_bwd_weight_3x3_kernel", entry)
                for entry in conv_bwd_weight_3x3.REMOVED_WEIGHT_GRAD_3X3_CONFIGS]
    return [{"kernel": kernel, "config": config_label(config), "reason": reason}
            for kernel, (config, reason) in removed]


def store(data: dict, directory: Path = DOCS / "kernels") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"triton-{data['triton']}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def load_all(directory: Path = DOCS / "kernels") -> list[dict]:
    """Every stored report, oldest Triton version first."""
    def version(path):
        return tuple(int(p) for p in path.stem.split("-")[1].split(".")[:3] if p.isdigit())

    return [json.loads(p.read_text()) for p in sorted(directory.glob("triton-*.json"), key=version)]


def _mb(value: int) -> str:
    return f"{value / 1e6:.1f}"


def _operand_cell(operand: dict) -> str:
    home = "smem" if operand["into_mma"] == "shared memory" else operand["into_mma"]
    return f"{operand['route']} -> {home}"


def _cases():
    """(kernel, precision, layout, alternative) in the tables' order: the layer's launches,
    then the alternatives the report compiles beside them (capture.alternative_launches)."""
    return [(kernel, precision, layout, alternative) for kernel in GEMM_KERNELS
            for precision in PRECISION_NAMES for layout in LAYOUT_NAMES
            for alternative in (False, True)]


def _launch(alternative: bool) -> str:
    return "*alternative*" if alternative else "layer"


def render_version(data: dict) -> list[str]:
    """The markdown section of one Triton version."""
    compiles = data["compiles"]
    out = [f"## Triton {data['triton']} ({data['target']})", ""]
    out += [f"{len(compiles)} distinct compiles for {len(data['rows'])} (launch, config) pairs, "
            f"{data['compile_seconds']} s on this 2-core CPU machine.", ""]
    out += ["### Hopper criteria per GEMM kernel", "",
            "Kept configs meeting all four criteria (wgmma; both operands by TMA or 16-byte "
            "cp.async; wgmma wait depth >= 1; no spills), over every shape.", "",
            "| kernel | precision | layout | launch | configs on the fast path | what the "
            "others miss |",
            "| --- | --- | --- | --- | --- | --- |"]
    for kernel, precision, layout, alternative in _cases():
        chosen = {r["compile"] for r in data["rows"] if r["kernel"] == kernel
                  and r["precision"] == precision and r["layout"] == layout
                  and r.get("alternative", False) == alternative}
        if not chosen:
            continue
        misses: dict[str, int] = {}
        good = 0
        for index in chosen:
            shortfalls = hopper_shortfalls(_as_compiled(compiles[str(index)]))
            good += not shortfalls
            for item in shortfalls:
                misses[item] = misses.get(item, 0) + 1
        missing = "; ".join(f"{text} ({count})" for text, count in sorted(misses.items()))
        out.append(f"| `{kernel}` | {precision} | {layout} | {_launch(alternative)} "
                   f"| {good} of {len(chosen)} | {missing or '-'} |")
    out += ["", "### Every compile of the GEMM kernels", "",
            "One row per distinct compile; `shapes` lists the layer shapes whose launches "
            "specialise to it. Operands: route from global memory -> where the MMA reads it.", "",
            "| kernel | precision | layout | launch | path | config | shapes | MMA | A | B | "
            "wait | regs | spill B | smem B |", "| --- " * 14 + "|"]
    for kernel, precision, layout, alternative in _cases():
        shapes_of: dict[int, list[str]] = {}
        paths: dict[int, str] = {}
        for r in data["rows"]:
            if ((r["kernel"], r["precision"], r["layout"], r.get("alternative", False))
                    == (kernel, precision, layout, alternative)):
                paths[r["compile"]] = r.get("path") or "-"
                shapes_of.setdefault(r["compile"], [])
                if r["shape"] not in shapes_of[r["compile"]]:
                    shapes_of[r["compile"]].append(r["shape"])
        for index, shapes in shapes_of.items():
            c = compiles[str(index)]
            ops = [_operand_cell(o) for o in c["operands"]] or ["-", "-"]
            out.append(
                f"| `{kernel}` | {precision} | {layout} | {_launch(alternative)} | "
                f"{paths[index]} | {c['config']} | "
                f"{', '.join(shapes)} | {c['mma']} | {ops[0]} | {ops[1]} | "
                f"{c['wait_depth']} | {c['registers']} | {c['spill_bytes']} | "
                f"{c['shared_memory']} |" + (f" error: {c['error']}" if c["error"] else ""))
    out += ["", "### Other kernels", "",
            "| kernel | config | MMA | regs | spill B | smem B | compiles |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    others: dict[tuple, int] = {}
    for r in data["rows"]:
        if r["kernel"] not in GEMM_KERNELS:
            c = compiles[str(r["compile"])]
            row = (r["kernel"], c["config"], c["mma"], c["registers"], c["spill_bytes"],
                   c["shared_memory"])
            others.setdefault(row, set()).add(r["compile"])
    for row, indices in sorted(others.items()):
        out.append("| `" + row[0] + "` | " + " | ".join(str(v) for v in row[1:])
                   + f" | {len(indices)} |")
    return out


# Why a (kernel, precision, layout) misses the Hopper criteria, where it misses them on more
# than the odd shape. Each names the fallback the kernel takes instead.
_TAP_SHIFT = ("NCHW stores a row's pixels contiguously, and a tap moves the pixel tile by one "
              "element")
MISS_CAUSES = {
    ("conv_fwd_kernel", "bf16", "nchw"): (
        _TAP_SHIFT + " (2 bytes): below cp.async's 4-byte minimum, so the gather's loads are "
        "synchronous 2-byte `ld.global` with nothing in flight to overlap (wait depth 0). A TMA "
        "box at the tap-shifted column would take it, but every such launch faulted on an H200 "
        "(illegal instruction, lease of 2026-11-30) and the interpreter refuses it, so "
        "`input_route` sends NCHW to the gather, the named fallback, until a GPU shows why. "
        "The layer avoids it where the channels_last form can be boxed: the router's pooling "
        "pass writes a channels_last copy of an NCHW input for the forward, the kernel "
        "gradient one of an NCHW dy for the input gradient (one more x- or dy-sized write "
        "each), and TMA boxes those, where a tap moves the tile by whole pixels of C channels."),
    ("conv_fwd_kernel", "tf32", "nchw"): (
        _TAP_SHIFT + " (4 bytes in float32): cp.async of 4 bytes, pipelined (wait depth 1) but "
        "one instruction per element; the gather is the fallback, as for bf16 (and the layer "
        "reads channels_last copies instead)."),
    ("conv_bwd_weight_kernel", "bf16", "nchw"): (
        "The kernel gradient's K axis is the pixels, and x is read at tap-shifted pixels: 2 bytes "
        "off in bf16 NCHW, so an NCHW x comes by synchronous 2-byte loads (dy, unshifted, by "
        "16-byte cp.async but on the odd shape) and the MMA is waited on at every step; in the "
        "layer x arrives as the forward's channels_last copy instead."),
    ("conv_bwd_weight_kernel", "tf32", "nchw"): (
        "Wait depth 0 everywhere in TF32: the pixel loop is unpipelined on purpose "
        "(conv_bwd_weight.TF32_LOOP_STAGES), because pipelined it wrote different bits on the "
        "same inputs on an H200 (NCHW x, 64-row tiles, 2+ stages). "
        "In the layer an NCHW x reaches the kernel gradient as the forward's channels_last "
        "copy, (pixels, in): MN-major, which TF32 wgmma cannot read from shared memory (see "
        "channels_last below), so Triton transposes it on its way into shared memory: "
        "synchronous loads unpipelined, element by element (cp.async 4B) pipelined; dy, NCHW, "
        "is K-major and loads 16 bytes but on the odd shape. Reading x in NCHW instead would put "
        "it 4 bytes off at every tap. The *alternative* launches run the GEMM transposed "
        "(conv_bwd_weight.TF32_X_IN_REGISTERS): x's tile goes to wgmma's A from registers, which "
        "takes any layout, dy to its B, K-major, both by 16-byte cp.async, pipelined at the "
        "config's depth. They meet all four criteria but on the odd shape, and stay off in the "
        "layer until an H200 shows them repeating bit for bit (bench.gpu.layer_probe runs them "
        "first)."),
    ("conv_bwd_weight_kernel", "tf32", "channels_last"): (
        "Wait depth 0 everywhere in TF32: the pixel loop is unpipelined on purpose "
        "(conv_bwd_weight.TF32_LOOP_STAGES), because pipelined it wrote different bits on the "
        "same inputs on an H200. "
        "TF32 wgmma reads only K-major operands from shared memory, and K is the pixel axis: "
        "channels_last stores dy as (pixels, out) and x as (pixels, in), both MN-major, so Triton "
        "transposes them on their way into shared memory (unpipelined: synchronous loads; "
        "pipelined: element by element, cp.async 4B). wgmma could "
        "take one of them from registers (its A), but the other would still need a transposed "
        "copy of dy or x in memory, an extra dy- or x-sized pass per step. 16-bit wgmma takes "
        "MN-major operands from shared memory, which is why bf16 channels_last is on the fast "
        "path."),
}
MISS_CAUSES[("conv_bwd_weight_3x3_kernel", "bf16", "nchw")] = (
    "The all-taps kernel carries the rows of an NCHW dy as it is (never TRANSPOSED: a dy "
    "shifted by a column would be 2-byte loads) and writes its channels_last copy for the "
    "input gradient. On the odd shape dy's rows of 29 columns are 58 bytes apart, which neither "
    "TMA nor 16-byte cp.async can take: synchronous 2-byte loads, the fallback, and no MMA left "
    "in flight (wait depth 0). Its new dy row enters the MMAs from registers, so that its ring "
    "of shared buffers, which the carry, bias sum and copy also read, races no running MMA; "
    "the registers that takes spill one or two of W4's three kept tiles.")
MISS_CAUSES[("conv_bwd_weight_3x3_kernel", "bf16", "channels_last")] = (
    "Alternative only: the layer takes the per-tap kernel for a channels_last dy. On W4 the "
    "new row's registers spill one or two tiles, as in NCHW. (On W1-reduce, TRANSPOSED, it "
    "summed the centre tap's shifted dy tile for the bias, which cost that tile's ring a buffer "
    "under a running MMA; it now loads that tile again for the sum.)")
MISS_CAUSES[("conv_bwd_input_kernel", "bf16", "nchw")] = MISS_CAUSES[
    ("conv_fwd_kernel", "bf16", "nchw")]
MISS_CAUSES[("conv_bwd_input_kernel", "tf32", "nchw")] = MISS_CAUSES[
    ("conv_fwd_kernel", "tf32", "nchw")]
ODD_CAUSE = ("Only the odd shape: its 24 channels (channels_last) or 29 columns (NCHW) give "
             "strides that Triton's JIT cannot prove divisible by 16 elements (it specialises "
             "integers on divisibility by 16 only), so it cannot emit 16-byte vectors there.")
WEIGHT_GRAD_BUDGET = 3.0


def render_misses(data: dict) -> list[str]:
    """Where bf16 and TF32 kept configs miss the criteria, on which shapes, and why; then the
    kernel gradient's L2 budget."""
    out = [f"## Where bf16 and TF32 miss the criteria, and why (Triton {data['triton']})", "",
           "| kernel | precision | layout | launch | shapes that miss | what they miss | why |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for kernel, precision, layout, alternative in _cases():
        if precision not in ("bf16", "tf32"):
            continue
        shapes, misses = [], set()
        for r in data["rows"]:
            if ((r["kernel"], r["precision"], r["layout"], r.get("alternative", False))
                    != (kernel, precision, layout, alternative)):
                continue
            found = hopper_shortfalls(_as_compiled(data["compiles"][str(r["compile"])]))
            misses.update(found)
            if found and r["shape"] not in shapes:
                shapes.append(r["shape"])
        if not shapes:
            continue
        why = (ODD_CAUSE if shapes == ["odd"] and alternative else
               MISS_CAUSES.get((kernel, precision, layout),
                               ODD_CAUSE if shapes == ["odd"] else
                               "Not explained yet: to be investigated."))
        out.append(f"| `{kernel}` | {precision} | {layout} | {_launch(alternative)} | "
                   f"{', '.join(shapes)} | {'; '.join(sorted(misses))} | {why} |")
    spilling = sorted({(r["shape"], r["layout"], r["precision"]) for r in data["rows"]
                       if r["kernel"] in GEMM_KERNELS and r["precision"] in ("bf16", "tf32")
                       and data["compiles"][str(r["compile"])]["spill_bytes"]})
    if spilling:
        out += ["", "Spills (bf16 and TF32) only on: " + ", ".join(
            f"{shape} {layout} {precision}" for shape, layout, precision in spilling)
            + "; the compile tables above name the configs. Those tiles stay in the lists for "
            "the shapes where they compile clean, and the autotuner measures what it keeps."]
    best: dict[tuple[str, str], float] = {}
    per_tap: dict[str, float] = {}
    for r in data["rows"]:
        if (r["kernel"].startswith("conv_bwd_weight") and r["traffic"] and r["shape"] != "odd"
                and r["precision"] == "bf16"):
            ratio = r["traffic"][0] / r["traffic"][1]
            if r["kernel"] == "conv_bwd_weight_3x3_kernel":
                key = (r["shape"], r["layout"])
                best[key] = min(best.get(key, ratio), ratio)
            elif r["layout"] == "channels_last":
                per_tap[r["shape"]] = min(per_tap.get(r["shape"], ratio), ratio)
    if best:
        over = [f"{shape} {layout}" for (shape, layout), ratio in best.items()
                if ratio > WEIGHT_GRAD_BUDGET]
        out += ["", "The bf16 all-taps kernel gradient's L2 -> SM bytes against the unique "
                "bytes of x and dy, best kept config per shape and layout: " + ", ".join(
                    f"{shape} {layout} {ratio:.2f}x" for (shape, layout), ratio in best.items())
                + f"; the budget is {WEIGHT_GRAD_BUDGET:.0f}x"
                + (f", missed on {', '.join(over)}." if over else ", met everywhere.")
                + " The all-taps kernel reads its carried rows twice and its shifted tensor "
                "three times (the per-tap kernel both 9 times); with more input than output "
                "channels and a channels_last dy it carries x and shifts dy (TRANSPOSED), so "
                "the wider tensor is read twice and fills wgmma's rows."
                + (" An NCHW dy stays the rows (shifted by a column it would be 2-byte loads, "
                   "and the kernel writes its channels_last copy from unshifted rows): "
                   "W1-reduce's 32 output channels then fill half of wgmma's 64 rows, 9 float32 "
                   "accumulators cap a tile at 64x64, and its 128 input channels take two "
                   "tiles, each reading dy twice." if "W1-reduce nchw" in over else "")]
    if per_tap:
        out += ["", "With a channels_last dy the layer runs the per-tap kernel instead, "
                + ", ".join(f"{shape} {ratio:.1f}x" for shape, ratio in per_tap.items())
                + " by the same model: measured on an H200 (bench/results/"
                "20261130T205744_splits_b49e5e9.json, autotuned, split as the layer splits) it "
                "took 70 us against the all-taps kernel's 203 us on W1-expand, 75 against 156 "
                "on W1-reduce (TRANSPOSED) and 229 (32 splits; the layer takes 29) against 323 on "
                "W4, and was faster at every "
                "split count tried. Its 9 times more programs fill the 132 SMs (W1's all-taps "
                "launch is 16-32 programs); L2 bandwidth was not the limit the model assumed."]
    return out


def render_traffic(data: dict) -> list[str]:
    """L2 -> SM bytes of every GEMM kernel's tiling on W1 and W4 (bf16; NCHW, and for the
    weight gradient, whose kernel's roles depend on dy's layout, channels_last too)."""
    out = ["## L2 -> SM bytes of the tilings (bf16)", "",
           "Bytes the programs of one launch read, against the unique bytes of its operands "
           "(kernels/inspection/traffic.py; TF32 and fp32 double both). The weight gradient's "
           "budget is 3x the unique bytes of x and dy. The forward and input gradient read the "
           "same bytes in both layouts (NCHW reads the channels_last copies).", "",
           "| kernel | shape | layout | config | read MB | unique MB | read / unique |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    seen = set()
    for r in data["rows"]:
        if (r["traffic"] is None or r["precision"] != "bf16" or r["shape"] == "odd"
                or (r["layout"] != "nchw" and not r["kernel"].startswith("conv_bwd_weight"))):
            continue
        config = data["compiles"][str(r["compile"])]["config"]
        key = (r["kernel"], r["shape"], r["layout"], config)
        if key in seen:
            continue
        seen.add(key)
        read, unique = r["traffic"]
        out.append(f"| `{r['kernel']}` | {r['shape']} | {r['layout']} | {config} | {_mb(read)} "
                   f"| {_mb(unique)} | {read / unique:.1f} |")
    return out


def render_weight_layouts() -> list[str]:
    """The packed-copy vs mix-in-the-conv comparison (kernels/inspection/traffic.py's models)."""
    out = ["## Per-sample weights: packed copies or mixing inside the conv", "",
           "The GEMMs need the per-sample weights contiguous along K. Either the mixing kernel "
           "writes them once in the packed layout the GEMMs read (operands.py; the forward and "
           "the 16-bit input gradient read the same one, TF32 gets a second one from the same "
           "launch) and both GEMMs read them, or every program mixes its weight tile from the k "
           "banks, which costs k / BLOCK_M of the MMA time at the tensor-core to FMA rate unless "
           "overlapped. Models from kernels/inspection/traffic.py (bf16, BLOCK_M=128, H200 "
           "data-sheet rates; no GPU measurement): the packed weights' HBM time (one write, two "
           "reads) against the in-conv mixing's extra main-loop time, for the forward and the "
           "input gradient together.", "",
           "| shape | packed MB | packed us | MMA us (2 GEMMs) | in-conv extra | in-conv us |",
           "| --- | --- | --- | --- | --- | --- |"]
    cheaper = []
    for s in SHAPES:
        c = weight_layout_costs(s.batch, s.in_channels, s.out_channels, s.height, s.width, s.k)
        cheaper.append(c["packed_us"] < c["in_conv_us"])
        out.append(f"| {s.name} | {_mb(c['packed_bytes'])} | {c['packed_us']:.2f} | "
                   f"{c['mma_us']:.2f} | {c['in_conv_fraction']:.2f}x | {c['in_conv_us']:.2f} |")
    verdict = ("The packed weights' modelled time is below the in-conv mixing's on every shape"
               if all(cheaper) else "The packed weights are not the cheaper model on every shape")
    out += ["", verdict + ", so the mixing stays its own launch and the tensor cores do "
            "only the convolution. (The HBM bytes model of `python -m bench costs` counts the "
            "packed weights' passes against issue 11's byte targets; docs/design.md weighs the "
            "two.)", ""]
    return out


def _as_compiled(record: dict):
    from triton_nsr.kernels.inspection.compiled import Compiled, Operand

    fields = dict(record)
    fields["operands"] = [Operand(**o) for o in record["operands"]]
    return Compiled(**fields)


def render(reports: list[dict]) -> str:
    """docs/kernels.md from the stored reports."""
    lines = ["# Kernels on Hopper: what the compiler makes of every launch", "",
             "Generated by `python -m triton_nsr.kernels.inspection.report` from the stored data "
             "in `docs/kernels/` (do not edit by hand). Each layer shape runs forward and backward "
             "through `triton_nsr.ops` with the kernels recorded instead of run; every recorded "
             "launch is compiled for sm_90 with each autotune config the tuner keeps for it, "
             "specialised as Triton's JIT specialises those arguments. No GPU is involved: these "
             "are compiler findings, not measurements.", "",
             "Shapes: " + "; ".join(f"{s.name} = batch {s.batch}, {s.in_channels}->"
                                   f"{s.out_channels}, {s.height}x{s.width}" for s in SHAPES)
             + "; 3x3 kernel, padding 1, k=4, d=16. Precisions: bf16, TF32 (float32 with "
             "allow_tf32), fp32 (IEEE). Layouts: NCHW and channels_last.", "",
             "Columns: MMA is the tensor-core instruction in the PTX (wgmma, mma.sync, or none). "
             "A and B are the dot's operands (forward: input pixels x weights; input gradient: "
             "dy x weights; all-taps weight gradient: its carried rows x its shifted tensor, "
             "dy x input or, TRANSPOSED, input x dy; per-tap weight gradient: dy x input), "
             "each as *route from global memory -> "
             "where the MMA reads it*: TMA (`cp.async.bulk.tensor`), `cp.async` of N bytes per "
             "instruction (pipelined through shared memory), or a synchronous `ld.global` of N "
             "bytes (no overlap), read from the PTX line table. wait is the deepest "
             "`wgmma.wait_group` (0: every MMA is waited for before the next loads). regs and "
             "spill B from the cubin (cuobjdump), smem B from Triton's metadata.", "",
             "Paths: the forward and input gradient read their pixel operand through a TMA "
             "descriptor at tap-shifted coordinates (`tma_nchw`, `tma_channels_last`; the zero "
             "fill is the padding) where kernels/operands.py's `input_route` allows it (for an "
             "NCHW input the layer's forward reads the channels_last copy the router's pooling "
             "pass writes, and its input gradient the copy of dy the kernel gradient writes, "
             "where those are what TMA can take), else by "
             "the pointer gather (`gather`, the fallback: stride > 1, strides that are not "
             "multiples of 16 bytes such as a bf16 width not divisible by 8, sliced or expanded "
             "inputs, float64, and NCHW columns that a tap shifts off 16 bytes: such boxes "
             "faulted on an H200). Their per-sample weights come packed contiguous along K. The "
             "weight gradient of a 16-bit 3x3 layer at stride 1 with an NCHW dy runs the "
             "all-taps `conv_bwd_weight_3x3_kernel` (kernels/conv_bwd_weight.py `ALL_TAPS_DTYPES` "
             "and `ALL_TAPS_LAYOUTS`; it carries dy's rows and boxes x, in the layer the NCHW "
             "input's channels_last copy, at tap-shifted pixels by TMA); every other one, a "
             "channels_last dy included, the per-tap `conv_bwd_weight_kernel`, which was the "
             "faster of the two on an H200 at every split count. The report compiles the "
             "all-taps kernel for a channels_last dy too (marked *alternative* in the data: "
             "there, where x has more channels than dy, it runs TRANSPOSED, carrying x's rows "
             "and boxing dy). The TF32 per-tap kernel's pixel loop runs unpipelined "
             "(`TF32_LOOP_STAGES`, wait depth 0): pipelined, it wrote different bits launch "
             "after launch on an H200. For an NCHW dy in TF32 the report also compiles the "
             "per-tap kernel transposed and pipelined (`TF32_X_IN_REGISTERS`, *alternative*: x "
             "to wgmma's A from registers, dy to its B from shared memory), which the layer "
             "takes once a GPU has shown it deterministic. The `launch` column tells the "
             "layer's launches from the alternatives.", ""]
    removed = reports[-1]["removed"] if reports else []
    lines += ["## Configs removed from the autotune lists", ""]
    lines += [f"- `{r['kernel']}` {r['config']}: {r['reason']}" for r in removed] or ["None."]
    lines += ["", "At launch, `fits_shape` (kernels/autotune.py) also drops the configs whose "
              "BLOCK_M, BLOCK_N or BLOCK_K passes the next power of two of its GEMM size (the "
              "MMA's rows floored at wgmma's 64: BLOCK_M, or BLOCK_N in the transposed TF32 "
              "kernel gradient, which tries only its own tiles, `X_ROWS_WEIGHT_GRAD_CONFIGS`): "
              "such tiles compute and load masked lanes only. When "
              "fewer than 3 configs survive, the least oversized fill up to 3. The tables below "
              "list only kept configs.", ""]
    for data in reports:
        lines += render_version(data) + [""]
    if reports:
        lines += render_misses(reports[-1]) + [""]
    if reports:
        lines += render_traffic(reports[-1]) + [""]
    lines += render_weight_layouts()
    lines += render_grid_fill()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render", action="store_true",
                        help="only re-render docs/kernels.md from the stored data")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="compile processes (default: one per CPU)")
    parser.add_argument("--shape", action="append", choices=[s.name for s in SHAPES],
                        help="only these shapes (repeatable); with --precision and --layout")
    parser.add_argument("--precision", action="append", choices=PRECISION_NAMES)
    parser.add_argument("--layout", action="append", choices=LAYOUT_NAMES)
    parser.add_argument("--json", type=Path,
                        help="write the data of the chosen subset here instead of docs/")
    args = parser.parse_args(argv)
    if args.json:
        shapes = [s for s in SHAPES if s.name in (args.shape or [s.name])]
        data = collect(shapes, args.precision or PRECISION_NAMES, args.layout or LAYOUT_NAMES,
                       args.workers)
        args.json.write_text(json.dumps(data))
        return 0
    if not args.render:
        path = store(collect(workers=args.workers))
        print(f"stored {path}")
    (DOCS / "kernels.md").write_text(render(load_all()))
    print(f"wrote {DOCS / 'kernels.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
