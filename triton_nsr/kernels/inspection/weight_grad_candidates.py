"""Rank schedules for the kernel gradient (dW per sample) on CPU: sm_90 compiles and a time model.

On an H200 the kernel gradient is latency-bound: W1-expand's per-tap launch (288 programs of 36
dependent 64x32x64 steps) took 68 us, 3.9x the forward conv, and splitting its pixel sum made it
slower. This module lists the schedules that could replace it, for each training shape (bf16,
dy in channels_last and NCHW), and ranks them by a stated model of programs x dependent steps:

    waves = ceil(programs / 132 SMs)
    step  = max(a + b * (MMAs in the step - 1),             the step's latency floor
                FLOPs of the step / (tensor rate / 132),    its MMA at the SM's share
                bytes of the step / (L2 rate / 132))        its operands at the SM's share
    time  = waves * (steps * step + P) + F

An SM is taken to work through its programs one step at a time: programs that share it share
its step rate, which is what the measured pixel splits showed (more, shorter programs were not
faster). Fitted to the two H200 measurements of today's per-tap kernel alone (probe, 865104e),
a and F reproduce both but miss the split runs (b49e5e9) by up to 62%; the ranking's model fits
a, P and F to every per-tap timing and b to the all-taps ones, and the probe-only model's times
are shown beside it. The rates are the same lease's measured bf16 matmul and device copy (the
copy rate stands in for L2, unmeasured).

Candidates that exist as code (the per-tap kernel, with x in registers too, the all-taps
kernel and the row kernel, three taps of a kernel row sharing one dy tile, over the configs
their autotuners keep, at several pixel splits, with longer pixel steps and the whole
input-channel extent as N) are compiled for sm_90 with the arguments of a real launch
(capture.py, compiled.py). Row tiles outside the row kernel's configs, and a persistent
(stream-K) schedule of the per-tap items, which needs new kernel code, are modelled from their
nearest compiled relative. Everything is deterministic and atomic-free: each output element
has one writer, or its partial sums are added in a fixed order.

    python -m triton_nsr.kernels.inspection.weight_grad_candidates --compile  # store compiles
    python -m triton_nsr.kernels.inspection.weight_grad_candidates            # docs table

Run ``--compile`` once per Triton version (without TRITON_INTERPRET); the table is rendered
from the stored files, docs/kernels/weight-grad-candidates-triton-<version>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import triton

from triton_nsr.kernels.inspection.capture import (
    H200_MULTIPROCESSORS,
    VARIANT_KERNELS,
    W1_EXPAND,
    W1_REDUCE,
    W2,
    W4,
    LayerShape,
    capture,
    kept_configs,
    kernel_gradient_variant,
    kernels,
)
from triton_nsr.kernels.inspection.compiled import (
    HOPPER_SHARED_MEMORY,
    compile_and_inspect,
    config_label,
    hopper_shortfalls,
)
from triton_nsr.kernels.tiling import cdiv

ROOT = Path(__file__).resolve().parents[3]
STORE = ROOT / "docs" / "kernels"
RESULTS = ROOT / "bench" / "results"
# The H200 lease the calibration comes from: the layer probe (per-kernel GPU time per call), the
# benchmark run beside it (measured peaks) and the earlier split timings.
PROBE = RESULTS / "20261130T211500_probe_865104e.json"
PEAKS = RESULTS / "20261130T211648_cuda_865104e.json"
SPLITS = RESULTS / "20261130T205744_splits_b49e5e9.json"

PER_TAP, ALL_TAPS, ROWS = (VARIANT_KERNELS[v] for v in ("per_tap", "all_taps", "row_of_3"))
# The kernel each schedule kind launches (x rows: the per-tap kernel, transposed).
KERNEL_OF = {**VARIANT_KERNELS, "x_rows": PER_TAP}
LAYOUTS = ("channels_last", "nchw")
MAX_REGISTERS = 255
ELEMENT_BYTES = 2  # bf16
# Longer pixel steps: per-tap tiles with BLOCK_K past the configs' 64 (shared memory permitting).
LONGER_STEPS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 256}, num_warps=4, num_stages=2),
]


def training_shapes() -> list[LayerShape]:
    """W1's two layers, W2 and W4 (capture.py; bench/workloads.py defines the same)."""
    return [W1_EXPAND, W1_REDUCE, W2, W4]


# --- the schedules' geometry --------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """One way to run the kernel gradient of one layer: what the time model needs.

    ``kernel``: "per_tap", "x_rows" (per tap, x^T dy^T with x's tile as the MMA's A from
    registers), "all_taps", "row_of_3" (the row kernel, or modelled for other tiles) or
    "persistent" (modelled). ``mma``: the
    (M, N, K) of one MMA; ``dots``: MMAs per step. ``operand_bytes``: what a step loads of the
    unshifted operand (dy, or x for a TRANSPOSED all-taps launch) and of the shifted one.
    ``total_steps``: steps summed over programs (what a persistent schedule spreads evenly).
    """

    kernel: str
    block_m: int
    block_n: int
    block_k: int
    warps: int
    stages: int
    splits: int
    programs: int
    steps: int
    dots: int
    mma: tuple[int, int, int]
    operand_bytes: tuple[int, int]
    total_steps: int

    @property
    def step_bytes(self) -> int:
        return sum(self.operand_bytes)

    @property
    def step_flops(self) -> int:
        m, n, k = self.mma
        return 2 * m * n * k * self.dots

    @property
    def tile(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k}"


def per_tap_schedule(shape: LayerShape, config, splits: int, kernel: str = "per_tap",
                     taps_per_program: int = 1) -> Schedule:
    """The per-tap kernel's grid (conv_bwd_weight.ConvWeightGradient): B * 9 * S * OG tiles *
    Cg tiles programs, each walking cdiv(cdiv(Ho*Wo, S), BLOCK_K) pixel steps. ``kernel``
    "x_rows" swaps the MMA's rows and columns (X_IN_REGISTERS); "row_of_3"
    (``taps_per_program`` 3) gives a program the three taps of one kernel row: a third of the
    programs, three MMAs and three shifted x tiles beside one dy tile per step."""
    bm, bn, bk = (config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    og, cg = shape.out_channels, shape.in_channels
    pixels = shape.height * shape.width
    programs = (shape.batch * 9 // taps_per_program * splits * cdiv(og, bm) * cdiv(cg, bn))
    steps = cdiv(cdiv(pixels, splits), bk)
    mma = (bn, bm, bk) if kernel == "x_rows" else (bm, bn, bk)
    operand_bytes = (min(bm, og) * bk * ELEMENT_BYTES,
                     taps_per_program * min(bn, cg) * bk * ELEMENT_BYTES)
    return Schedule(kernel, bm, bn, bk, config.num_warps, config.num_stages, splits, programs,
                    steps, taps_per_program, mma, operand_bytes, programs * steps)


def all_taps_schedule(shape: LayerShape, config, splits: int, transposed: bool) -> Schedule:
    """The all-taps kernel's grid: B * S * M tiles * N tiles programs (M, N = OG, Cg, or Cg, OG
    TRANSPOSED), each walking (rows per split + 2) image rows of cdiv(Wo, BLOCK_K) column
    blocks; a step is 9 MMAs on two loaded rows and three shifted tiles."""
    bm, bn, bk = (config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    m, n = ((shape.in_channels, shape.out_channels) if transposed
            else (shape.out_channels, shape.in_channels))
    splits = min(splits, shape.height)
    programs = shape.batch * splits * cdiv(m, bm) * cdiv(n, bn)
    steps = (cdiv(shape.height, splits) + 2) * cdiv(shape.width, bk)
    operand_bytes = (2 * min(bm, m) * bk * ELEMENT_BYTES, 3 * min(bn, n) * bk * ELEMENT_BYTES)
    return Schedule("all_taps", bm, bn, bk, config.num_warps, config.num_stages, splits,
                    programs, steps, 9, (bm, bn, bk), operand_bytes, programs * steps)


def persistent_schedule(base: Schedule, sms: int = H200_MULTIPROCESSORS) -> Schedule:
    """``base``'s work items run by one program per SM, each taking an equal share of all the
    steps (stream-K): an item cut between two programs is written as two float32 partial tiles,
    added in program order by a deterministic fix-up. No wave quantisation is left."""
    return replace(base, kernel="persistent", programs=sms,
                   steps=cdiv(base.total_steps, sms))


# --- the time model -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Model:
    """time = waves * (steps * step + wave_us) + fixed_us (the module's docstring): constants in
    microseconds, rates per second for the whole GPU."""

    floor_us: float
    dot_us: float
    fixed_us: float
    wave_us: float = 0.0
    tensor_flops: float = 800e12
    l2_bytes: float = 4.2e12
    sms: int = H200_MULTIPROCESSORS

    def step_terms(self, schedule: Schedule, byte_factor: float = 1.0) -> dict[str, float]:
        """The three per-step times in us: latency floor, MMA and bytes at the SM's share."""
        return {"floor": self.floor_us + self.dot_us * (schedule.dots - 1),
                "mma": schedule.step_flops / (self.tensor_flops / self.sms) * 1e6,
                "bytes": schedule.step_bytes * byte_factor / (self.l2_bytes / self.sms) * 1e6}

    def time_us(self, schedule: Schedule, byte_factor: float = 1.0) -> float:
        step = max(self.step_terms(schedule, byte_factor).values())
        waves = cdiv(schedule.programs, self.sms)
        fixup = 0.0
        if schedule.kernel == "persistent":
            # The cut items' float32 partials: written and read once, plus one more launch.
            tile = schedule.block_m * schedule.block_n * 4 * schedule.dots
            fixup = 2 * self.sms * tile / self.l2_bytes * 1e6 + self.fixed_us
        return waves * (schedule.steps * step + self.wave_us) + self.fixed_us + fixup

    def bound(self, schedule: Schedule, byte_factor: float = 1.0) -> str:
        terms = self.step_terms(schedule, byte_factor)
        return max(terms, key=terms.get)


@dataclass(frozen=True)
class Measurement:
    """One H200 timing of the kernel gradient (bf16, channels_last)."""

    shape: str
    kernel: str
    splits: int
    us: float
    source: str


def measurements(probe: Path = PROBE, splits: Path = SPLITS) -> list[Measurement]:
    """The probe's per-tap kernel gradient per call (W1-expand, W4) and every split run."""
    found = []
    for profile in json.loads(probe.read_text())["profile"]:
        kernel = profile["kernels"].get(PER_TAP)
        if profile["pass"] == "forward_backward" and kernel:
            # The layer's own split count (weight_grad_splits), recomputed in _layer_splits.
            found.append(Measurement(profile["workload"], "per_tap", 0, kernel["us_per_call"],
                                     probe.name))
    for row in json.loads(splits.read_text())["rows"]:
        if row["status"] == "measured":
            found.append(Measurement(row["workload"], row["variant"], row["splits"],
                                     row["time_ms"]["median"] * 1e3, splits.name))
    return found


def measured_rates(path: Path = PEAKS) -> dict:
    """The lease's bf16 matmul FLOP/s and device-copy bytes/s."""
    peaks = json.loads(path.read_text())["peaks"]
    return {"tensor_flops": peaks["matmul_tflops"]["bf16"] * 1e12,
            "l2_bytes": peaks["copy_gbps"] * 1e9}


def _nonnegative_fit(columns: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: the best over subsets of the columns."""
    best, best_error = np.zeros(columns.shape[1]), None
    for size in range(1, columns.shape[1] + 1):
        for subset in itertools.combinations(range(columns.shape[1]), size):
            coefficients = np.linalg.lstsq(columns[:, subset], times, rcond=None)[0]
            if (coefficients < 0).any():
                continue
            full = np.zeros(columns.shape[1])
            full[list(subset)] = coefficients
            error = float(np.sum((columns @ full - times) ** 2))
            if best_error is None or error < best_error:
                best, best_error = full, error
    return best


def calibrate(points: list[tuple[Measurement, Schedule]], rates: dict,
              with_waves: bool = False) -> Model:
    """Fit the model's constants to timed schedules, each step assumed at its latency floor
    (checked afterwards: :func:`fit_table`'s bound column).

    Per tap: a and F to the probe's points, or a, P and F to every per-tap point
    (``with_waves``). Then b to the all-taps points, a, P and F held."""
    per_tap = [(m, s) for m, s in points if s.kernel == "per_tap"
               and (with_waves or m.source == PROBE.name)]
    columns = np.array([[cdiv(s.programs, H200_MULTIPROCESSORS) * s.steps,
                         cdiv(s.programs, H200_MULTIPROCESSORS), 1.0] for _, s in per_tap])
    times = np.array([m.us for m, _ in per_tap])
    if not with_waves:
        columns = columns[:, [0, 2]]
    fitted = _nonnegative_fit(columns, times)
    floor_us, wave_us, fixed_us = (fitted if with_waves else (fitted[0], 0.0, fitted[1]))
    model = Model(floor_us, 0.0, fixed_us, wave_us, **rates)
    all_taps = [(m, s) for m, s in points if s.kernel == "all_taps"]
    extra = np.array([cdiv(s.programs, model.sms) * s.steps * (s.dots - 1) for _, s in all_taps])
    rest = np.array([m.us - model.time_us(s) for m, s in all_taps])
    dot_us = max(float(extra @ rest / (extra @ extra)), 0.0) if len(all_taps) else 0.0
    return replace(model, dot_us=dot_us)


# --- launches and compiles ----------------------------------------------------------------------

@contextlib.contextmanager
def _splits_forced(splits: int | None):
    """conv_bwd_weight.weight_grad_splits answers ``splits`` inside the block (None: its rule)."""
    from triton_nsr.kernels import conv_bwd_weight
    from triton_nsr.kernels.autotune import clear_launch_plans

    saved = conv_bwd_weight.weight_grad_splits
    if splits is not None:
        conv_bwd_weight.weight_grad_splits = lambda *args: splits
    clear_launch_plans()
    try:
        yield
    finally:
        conv_bwd_weight.weight_grad_splits = saved
        clear_launch_plans()


def kernel_gradient_launch(shape: LayerShape, layout: str, variant: str,
                           splits: int | None = None):
    """The recorded kernel gradient launch of a bf16 layer pass with the kernel ``variant``
    ("per_tap", "all_taps" or "row_of_3") forced, at ``splits`` pieces (None: the layer's rule)."""
    import torch

    with _splits_forced(splits), kernel_gradient_variant(variant, torch.bfloat16):
        launches = capture(shape, "bf16", layout)
    return next(launch for launch in launches if launch.kernel == KERNEL_OF[variant])


def _layer_splits(shape: LayerShape, variant: str) -> int:
    """The pixel splits the layer gives ``variant`` on ``shape`` (the rule, an H200's SMs)."""
    return kernel_gradient_launch(shape, "channels_last", variant).named["num_splits"]


def _x_rows(launch):
    """The per-tap launch run X_IN_REGISTERS (bf16: not a layer path, a candidate)."""
    return replace(launch, kwargs={**launch.kwargs, "X_IN_REGISTERS": True},
                   named={**launch.named, "X_IN_REGISTERS": True})


@dataclass
class CompiledCandidate:
    """A compiled (kernel, tile) of one shape and layout: where its schedules come from."""

    shape: str
    layout: str
    kernel: str
    config: triton.Config
    launch: object = field(repr=False)
    family: str = ""

    @property
    def key(self) -> str:
        return f"{self.shape}|{self.layout}|{self.kernel}|{config_label(self.config)}"


def compiled_candidates(shape: LayerShape, layout: str) -> list[CompiledCandidate]:
    """The (kernel, tile)s of existing kernels to compile for one shape and dy layout: the kept
    configs of the per-tap kernel (x in registers too) and of the all-taps kernel, the longer
    pixel steps (LONGER_STEPS) and BLOCK_N = Cg. Launches at the layer's split count."""
    tuners = kernels()
    per_tap = kernel_gradient_launch(shape, layout, "per_tap")
    all_taps = kernel_gradient_launch(shape, layout, "all_taps")
    x_rows = _x_rows(per_tap)
    found: list[CompiledCandidate] = []
    tiles: dict[str, set] = {"per_tap": set(), "x_rows": set(), "row_of_3": set()}

    def add(kernel, config, launch, family):
        tile = tuple(config.kwargs.values())
        if kernel in tiles:
            if tile in tiles[kernel]:
                return
            tiles[kernel].add(tile)
        found.append(CompiledCandidate(shape.name, layout, kernel, config, launch, family))

    tuner = tuners[PER_TAP]
    for index in kept_configs(tuner, per_tap):
        add("per_tap", tuner.configs[index], per_tap, "per-tap, kept config")
    for index in kept_configs(tuner, x_rows):
        add("x_rows", tuner.configs[index], x_rows, "per-tap x rows, kept config")
    for config in LONGER_STEPS:
        add("per_tap", config, per_tap, "per-tap, longer pixel steps")
    cg = shape.in_channels
    add("per_tap", triton.Config({"BLOCK_M": 64, "BLOCK_N": cg, "BLOCK_K": 64}, num_warps=4,
                                 num_stages=3), per_tap, "per-tap, N = Cg")
    if cg >= 64:
        add("x_rows", triton.Config({"BLOCK_M": 32, "BLOCK_N": cg, "BLOCK_K": 64}, num_warps=4,
                                    num_stages=3), x_rows, "per-tap x rows, N = Cg")
    tuner = tuners[ALL_TAPS]
    for index in kept_configs(tuner, all_taps):
        add("all_taps", tuner.configs[index], all_taps, "all taps (9 share a dy row)")
    rows = kernel_gradient_launch(shape, layout, "row_of_3")
    tuner = tuners[ROWS]
    for index in kept_configs(tuner, rows):
        add("row_of_3", tuner.configs[index], rows, "row of 3 taps, kept config")
    return found


def _compile_job(job):
    """Worker: compile one candidate's launch and return its findings as a dict."""
    kernel, launch, kwargs, warps, stages = job
    config = triton.Config(kwargs, num_warps=warps, num_stages=stages)
    return compile_and_inspect(kernels()[kernel], launch, config).as_dict()


def collect(shapes=None, layouts=LAYOUTS, workers: int = 2) -> dict:
    """Compile every candidate of existing kernels with this Triton; the findings by key."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter has no compiler to read")
    candidates = [c for shape in (shapes or training_shapes()) for layout in layouts
                  for c in compiled_candidates(shape, layout)]
    jobs = [(KERNEL_OF[c.kernel], c.launch, c.config.kwargs, c.config.num_warps,
             c.config.num_stages) for c in candidates]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(_compile_job, jobs))
    return {"triton": triton.__version__, "target": "sm_90",
            "compiles": {c.key: f for c, f in zip(candidates, found)}}


def store(data: dict, directory: Path = STORE) -> Path:
    path = directory / f"weight-grad-candidates-triton-{data['triton']}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def load_stored(directory: Path = STORE) -> dict[str, dict]:
    """{Triton version: stored compiles}, for every stored file."""
    return {json.loads(p.read_text())["triton"]: json.loads(p.read_text())["compiles"]
            for p in sorted(directory.glob("weight-grad-candidates-triton-*.json"))}


def _versions(stored: dict[str, dict]) -> list[str]:
    return sorted(stored, key=lambda v: tuple(int(p) for p in v.split(".")[:3]))


def newest_compiles(stored: dict[str, dict]) -> dict:
    """The stored compiles of the newest Triton version (what the tables rank)."""
    return stored[_versions(stored)[-1]]


# --- ranking ------------------------------------------------------------------------------------

@dataclass
class Ranked:
    """One schedule of one shape and layout, with its findings and modelled time."""

    shape: str
    layout: str
    family: str
    schedule: Schedule
    source: str
    findings: dict
    time_us: float = 0.0
    bound: str = ""
    rejected: str | None = None
    today: bool = False

    @property
    def label(self) -> str:
        s = self.schedule
        return f"{s.kernel} {s.tile} w{s.warps} s{s.stages} S={s.splits}"


def rejection(findings: dict) -> str | None:
    """Why a schedule cannot run as is: a compile error, more shared memory than an SM has,
    spills (or an estimate past 255 registers), a shared buffer overwritten under an MMA."""
    if findings.get("error"):
        return findings["error"]
    if findings.get("shared_memory", 0) > HOPPER_SHARED_MEMORY:
        return f"needs {findings['shared_memory']} B of shared memory"
    if findings.get("registers", 0) > MAX_REGISTERS:
        return f"about {findings['registers']} registers a thread"
    if findings.get("spill_bytes"):
        return f"{findings['spill_bytes']} B spilled"
    if findings.get("races"):
        return "shared-buffer race"
    return None


def narrow_load_factor(findings: dict, schedule: Schedule) -> float:
    """How many times a step's bytes count: an operand loaded by accesses narrower than 16 bytes
    (cp.async or ld.global of N bytes) counts its bytes 16 / N times. An assumption (no such
    launch was timed); 1 where nothing narrower than 16 bytes was found."""
    factors = {}
    for operand in findings.get("operands", []):
        sizes = [int(part.split()[-1].rstrip("B")) for part in operand["route"].split(" + ")
                 if part.startswith(("cp.async", "ld.global"))]
        factors[operand["name"] in ("x", "shifted")] = 16 / min(sizes) if sizes else 1.0
    unshifted, shifted = schedule.operand_bytes
    return ((unshifted * factors.get(False, 1.0) + shifted * factors.get(True, 1.0))
            / (unshifted + shifted))


def h200_tuned_index(kernel: str, launch) -> int | None:
    """The config index the committed table stores for this launch's shape class on the H200
    (any kernel source hash: the tile the lease timed). An entry keyed before the kernel's key
    gained an element (the per-tap kernel's X_IN_REGISTERS) matches with that element left out."""
    from triton_nsr.kernels.tuned_configs import entry_key, load_table

    tuner = kernels()[kernel]
    key = tuner.shape_class(launch.named)
    keys = [entry_key(key)] + [entry_key(key[:i] + key[i + 1:]) for i in range(len(tuner.key))]
    for section in load_table()["sections"]:
        if section["kernel"] != kernel or "H200" not in section["device"]:
            continue
        for candidate in keys:
            if candidate in section["entries"]:
                return section["entries"][candidate]["config"]
    return None


def split_counts(shape: LayerShape, layer_splits: int) -> list[int]:
    """Powers of two that leave every split at least 256 pixels, and the layer's own count."""
    pixels = shape.height * shape.width
    counts = {2 ** i for i in range(11) if pixels // 2 ** i >= 256}
    return sorted(counts | {layer_splits})


def schedules_of(shape: LayerShape, candidate: CompiledCandidate, findings: dict,
                 layer_splits: dict[str, int], today_index: dict) -> list[Ranked]:
    """The compiled candidate at every split count, and for a per-tap tile its modelled
    relatives (persistent; on channels_last a row of 3 taps, where the row kernel's own
    configs do not compile that tile)."""
    config, kernel = candidate.config, candidate.kernel
    out = []
    variant = kernel if kernel in ("all_taps", "row_of_3") else "per_tap"
    transposed = bool(candidate.launch.named.get("TRANSPOSED"))
    tuner = kernels()[KERNEL_OF[kernel]]
    is_today_tile = (kernel in ("per_tap", "all_taps") and today_index.get(kernel) is not None
                     and tuner.configs[today_index[kernel]] is config)
    source = f"compiled (Triton {triton.__version__})"
    for splits in split_counts(shape, layer_splits[variant]):
        if kernel == "all_taps":
            schedule = all_taps_schedule(shape, config, splits, transposed)
        elif kernel == "row_of_3":
            schedule = per_tap_schedule(shape, config, splits, "row_of_3", 3)
        else:
            schedule = per_tap_schedule(shape, config, splits, kernel)
        out.append(Ranked(shape.name, candidate.layout, candidate.family, schedule, source,
                          findings, today=is_today_tile and splits == layer_splits[variant]
                          and today_index["layer"] == kernel))
    if kernel == "per_tap":
        base = per_tap_schedule(shape, config, 1)
        out.append(Ranked(shape.name, candidate.layout, "persistent stream-K (modelled)",
                          persistent_schedule(base), "modelled from " + config_label(config),
                          findings))
        compiled_rows = {config_label(c) for c in kernels()[ROWS].configs}
        if candidate.layout == "channels_last" and config_label(config) not in compiled_rows:
            bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
            # The ring holds one dy and three x tiles a stage; two more accumulators.
            estimate = {**findings,
                        "shared_memory": findings.get("shared_memory", 0) * (bm + 3 * bn)
                        // (bm + bn),
                        "registers": findings.get("registers", 0)
                        + 2 * bm * bn // (32 * config.num_warps)}
            for splits in split_counts(shape, layer_splits.get("row_of_3",
                                                              layer_splits["per_tap"])):
                out.append(Ranked(shape.name, candidate.layout, "row of 3 taps (modelled)",
                                  per_tap_schedule(shape, config, splits, "row_of_3", 3),
                                  "modelled from " + config_label(config), estimate))
    return out


def rank(model: Model, compiles: dict[str, dict], shapes=None,
         layouts=LAYOUTS) -> list[Ranked]:
    """Every schedule of every shape and layout, with its modelled time; sorted per (shape,
    layout) by time, then programs, then label: a fixed order for equal times."""
    ranked = []
    for shape in shapes or training_shapes():
        layer_splits = {v: _layer_splits(shape, v) for v in ("per_tap", "all_taps", "row_of_3")}
        for layout in layouts:
            candidates = compiled_candidates(shape, layout)
            layer = kernel_gradient_launch(shape, layout, _layer_variant(layout))
            today_index = {"layer": "all_taps" if layer.kernel == ALL_TAPS else "per_tap",
                           "per_tap": h200_tuned_index(PER_TAP, kernel_gradient_launch(
                               shape, layout, "per_tap")),
                           "all_taps": h200_tuned_index(ALL_TAPS, kernel_gradient_launch(
                               shape, layout, "all_taps"))}
            for candidate in candidates:
                findings = compiles.get(candidate.key, {})
                for row in schedules_of(shape, candidate, findings, layer_splits, today_index):
                    if not findings:
                        row.source = "not compiled"
                    row.rejected = rejection(row.findings)
                    factor = narrow_load_factor(row.findings, row.schedule)
                    row.time_us = model.time_us(row.schedule, factor)
                    row.bound = model.bound(row.schedule, factor)
                    ranked.append(row)
    ranked.sort(key=lambda r: (r.shape, r.layout, r.rejected is not None, round(r.time_us, 6),
                               r.schedule.programs, r.family, r.label))
    return ranked


def _layer_variant(layout: str) -> str:
    from triton_nsr.kernels import conv_bwd_weight

    return "all_taps" if layout in conv_bwd_weight.ALL_TAPS_LAYOUTS else "per_tap"


def best_designs(ranked: list[Ranked], shape: str, layout: str, count: int = 3,
                 compiled: bool = True, leave_out: tuple[str, ...] = ()) -> list[Ranked]:
    """The ``count`` fastest schedules of distinct families (one tile and split each), not
    rejected, not today's, of no schedule kind in ``leave_out``; ``compiled``: only those
    existing kernels run (a lease can time them now), else only the modelled ones (new kernel
    code)."""
    chosen, families = [], set()
    for row in ranked:
        if ((row.shape, row.layout) != (shape, layout) or row.rejected or row.today
                or row.family in families or row.source.startswith("modelled") == compiled
                or row.schedule.kernel in leave_out):
            continue
        families.add(row.family)
        chosen.append(row)
        if len(chosen) == count:
            break
    return chosen


# What the next GPU run times (bench/gpu/candidates.py): written beside the stored compiles.
LEASE_FILE = STORE / "weight-grad-lease.json"
LEASE_LAYOUT = "channels_last"


def lease_candidates(ranked: list[Ranked], layout: str = LEASE_LAYOUT,
                     count: int = 3) -> list[dict]:
    """Per training shape (dy in ``layout``, bf16: the default training path), today's launch
    (the H200 table's tile at the layer's split count) and the ``count`` fastest compiled
    schedules of distinct families that a launch can force: a config of the kernel's tuner or
    a longer-step tile, any split count. The transposed per-tap kernel ("x rows") is left out:
    the layer runs it for TF32 only, so no launch can force it in bf16."""
    out = []
    for shape in training_shapes():
        today = [("today", row) for row in ranked
                 if (row.shape, row.layout) == (shape.name, layout) and row.today][:1]
        chosen = [("candidate", row) for row in best_designs(ranked, shape.name, layout, count,
                                                             leave_out=("x_rows",))]
        for role, row in today + chosen:
            s = row.schedule
            out.append({"shape": shape.name, "role": role, "family": row.family,
                        "variant": (s.kernel if s.kernel in ("all_taps", "row_of_3")
                                    else "per_tap"),
                        "tile": {"BLOCK_M": s.block_m, "BLOCK_N": s.block_n,
                                 "BLOCK_K": s.block_k},
                        "num_warps": s.warps, "num_stages": s.stages, "splits": s.splits,
                        "modelled_us": round(row.time_us, 1)})
    return out


def store_lease(entries: list[dict], path: Path = LEASE_FILE) -> Path:
    path.write_text(json.dumps({"layout": LEASE_LAYOUT, "precision": "bf16",
                                "entries": entries}, indent=1) + "\n")
    return path


# --- rendering ----------------------------------------------------------------------------------

def fit_rows(model: Model, points: list[tuple[Measurement, Schedule]]) -> list[str]:
    """Markdown rows: each timed schedule, measured against modelled."""
    out = ["| measured | shape | kernel | tile | splits | programs | steps | waves x steps "
           "| bound | us measured | us modelled | error |", "| --- " * 12 + "|"]
    for m, s in points:
        t = model.time_us(s)
        out.append(f"| {m.source.split('_')[1]} | {m.shape} | {m.kernel} | {s.tile} | "
                   f"{s.splits} | {s.programs} | {s.steps} | "
                   f"{cdiv(s.programs, model.sms) * s.steps} | {model.bound(s)} | {m.us:.0f} | "
                   f"{t:.0f} | {(t - m.us) / m.us:+.0%} |")
    return out


def calibration_points() -> list[tuple[Measurement, Schedule]]:
    """Each H200 measurement with the schedule it ran: the table's H200 tile for the shape class
    of the layer's launch (a split run's own autotune was not stored: the same tile assumed)."""
    shapes = {s.name: s for s in training_shapes()}
    tuners = kernels()
    points = []
    for m in measurements():
        shape = shapes[m.shape]
        name = PER_TAP if m.kernel == "per_tap" else ALL_TAPS
        launch = kernel_gradient_launch(shape, "channels_last", m.kernel)
        splits = m.splits or launch.named["num_splits"]
        config = tuners[name].configs[h200_tuned_index(name, launch)]
        if m.kernel == "per_tap":
            schedule = per_tap_schedule(shape, config, splits)
        else:
            schedule = all_taps_schedule(shape, config, splits,
                                         bool(launch.named.get("TRANSPOSED")))
        points.append((replace(m, splits=splits), schedule))
    return points


def _cell_findings(row: Ranked) -> str:
    f = row.findings
    if not f:
        return "-"
    shortfalls = hopper_shortfalls(_as_compiled(f)) if row.source.startswith("compiled") else []
    text = (f"{f.get('registers')} regs, {f.get('spill_bytes', 0)} B spill, "
            f"{f.get('shared_memory', 0) // 1024} KiB smem")
    if row.source.startswith("compiled"):
        text += f", {f.get('mma')}, wait {f.get('wait_depth')}"
    return text + (f"; {'; '.join(shortfalls)}" if shortfalls else "")


def _as_compiled(findings: dict):
    from triton_nsr.kernels.inspection.compiled import Compiled, Operand

    data = dict(findings)
    data["operands"] = [Operand(**o) for o in data.get("operands", [])]
    return Compiled(**data)


def render(model: Model, sensitivity: Model, stored: dict[str, dict], top: int = 5) -> list[str]:
    """The ranking tables (markdown) of every shape and layout, from the stored compiles of the
    newest Triton; the other versions' register counts beside them."""
    versions = _versions(stored)
    newest = stored[versions[-1]]
    ranked = rank(model, newest)
    other = {r.label + r.layout + r.shape: r for r in rank(sensitivity, newest)}
    out = []
    for shape, layout in dict.fromkeys((r.shape, r.layout) for r in ranked):
        rows = [r for r in ranked if (r.shape, r.layout) == (shape, layout)]
        today = [r for r in rows if r.today]
        shown = [r for r in rows if not r.rejected][:top]
        shown += [r for r in today if r not in shown]
        out += [f"{shape}, dy {layout} ({sum(1 for r in rows if not r.rejected)} schedules, "
                f"{sum(1 for r in rows if r.rejected)} rejected):", "",
                "| # | schedule | family | programs | waves | steps | MMA x per step | "
                f"KB / step | bound | us | us, P = 0 | Triton {versions[-1]} | "
                f"{' | '.join('Triton ' + v for v in versions[:-1]) or '-'} |",
                "| --- " * 13 + "|"]
        for r in shown:
            s = r.schedule
            m, n, k = s.mma
            mark = " (today)" if r.today else ""
            older = "-"
            for version in versions[:-1]:
                f = _match_older(stored[version], r)
                if f is not None:
                    older = (f"{f['registers']} regs, {f['spill_bytes']} B spill, wait "
                             f"{f['wait_depth']}")
            out.append(f"| {rows.index(r) + 1} | `{r.label}`{mark} | {r.family} | {s.programs} "
                       f"| {cdiv(s.programs, model.sms)} | {s.steps} | {m}x{n}x{k} x {s.dots} "
                       f"| {s.step_bytes / 1024:.0f} | {r.bound} | {r.time_us:.0f} | "
                       f"{other[r.label + r.layout + r.shape].time_us:.0f} | "
                       f"{_cell_findings(r)} | {older} |")
        rejected = sorted({f"{r.schedule.kernel} {r.schedule.tile}: {r.rejected}"
                           for r in rows if r.rejected})
        if rejected:
            out += ["", "Rejected: " + "; ".join(rejected) + "."]
        best = best_designs(ranked, shape, layout)
        new = best_designs(ranked, shape, layout, count=2, compiled=False)
        out += ["", "Best three of the existing kernels: " + ", ".join(
            f"`{r.label}` ({r.time_us:.0f} us)" for r in best) + (
            f"; today `{today[0].label}` models {today[0].time_us:.0f} us." if today else "."),
            "Best new code: " + ", ".join(f"`{r.label}` ({r.time_us:.0f} us)" for r in new)
            + ".", ""]
    return out


def _match_older(compiles: dict, row: Ranked) -> dict | None:
    if not row.source.startswith("compiled"):
        return None
    s = row.schedule
    kernel = "all_taps" if s.kernel == "all_taps" else s.kernel
    for key, findings in compiles.items():
        shape, layout, kind, label = key.split("|")
        if ((shape, layout, kind) == (row.shape, row.layout, kernel)
                and label.startswith(f"BLOCK_M={s.block_m} BLOCK_N={s.block_n} "
                                     f"BLOCK_K={s.block_k} w{s.warps} s{s.stages}")):
            return findings
    return None


def models() -> tuple[Model, Model, list]:
    """(the ranking's model: a, b, P and F fitted to every H200 timing; the probe-only model
    with P = 0; the calibration points)."""
    points = calibration_points()
    rates = measured_rates()
    return calibrate(points, rates, with_waves=True), calibrate(points, rates), points


def rms_error(model: Model, points) -> float:
    """Root mean square of the relative errors over the timed schedules."""
    return float(np.sqrt(np.mean([(model.time_us(s) / m.us - 1) ** 2 for m, s in points])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true",
                        help="compile every candidate with this Triton and store the findings")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.compile:
        print(store(collect(workers=args.workers)))
        return 0
    model, probe_only, points = models()
    for name, fitted in (("ranking", model), ("probe only", probe_only)):
        print(f"{name}: a = {fitted.floor_us:.3f} us, b = {fitted.dot_us:.3f} us, "
              f"P = {fitted.wave_us:.2f} us, F = {fitted.fixed_us:.2f} us; rms error "
              f"{rms_error(fitted, points):.0%} over {len(points)} timings")
        print("\n".join(fit_rows(fitted, points)))
        print()
    print()
    stored = load_stored()
    print("\n".join(render(model, probe_only, stored)))
    # Ranked as the tables are, on the newest Triton's compiles.
    print(f"\nthe next GPU run's candidates: "
          f"{store_lease(lease_candidates(rank(model, newest_compiles(stored))))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
