"""The GPU lease's plan: steps in priority order, their cases, and what each should cost.

One source for the lease (bench/gpu/lease.py runs these steps) and its dry run (which prints them
with their expected Triton compiles, autotune benchmarks and seconds, on any machine). The
compiles are counted, not guessed: the dry run runs every Triton case with launches recorded
instead of executed (``tuned_configs.Policy(record=...)``), looks each shape class up in the
committed table of tuned configs for the target (Triton and device), and counts the binaries
Triton would build: one per config and specialization for an autotuned shape class, one for a
stored or first config. The seconds are a model: the constants below, stated in the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench import end_to_end, hardware, providers
from bench.gpu import smoke
from bench.workloads import (
    FORWARD,
    FORWARD_BACKWARD,
    W4_256,
    EndToEnd,
    Workload,
    end_to_end_jobs,
    main_workloads,
    sweep_workloads,
    tiny_workloads,
)
from triton_nsr.kernels import tuned_configs

HEADLINE_CONFIGS = (("bf16", "channels_last"), ("tf32", "nchw"))
HEADLINE_PROVIDERS = ("paper", "triton_nsr", "static_conv")
# The comparison a user makes: each of the three eager and CUDA-graphed (reduce-overhead), the
# graphed ones on the training pass, where host time weighs.
GRAPHED_PROVIDERS = ("paper_graphed", "triton_nsr_graphed", "static_conv_graphed")
TRAIN_PROVIDERS = ("paper", "triton_nsr", "static", "paper_graphed", "triton_nsr_graphed",
                   "static_graphed")
JOB_PROVIDERS = ("paper", "triton_nsr")
# The layers the comparison covers, most important first; W3 (patch evaluation) runs its
# forward only, eagerly, for its target.
COMPARISON_LAYERS = ("W1-expand", "W1-reduce", "W2", "W4")
LAYOUTS = ("nchw", "channels_last")

# The machine a lease plans for when the dry run cannot see it (device README: one H200,
# Triton 3.6), with its peaks as measured there (copy 4.3 TB/s, bf16 matmul 790 TFLOP/s).
TARGET = tuned_configs.Target(triton="3.6.0", device="NVIDIA H200")
TARGET_TFLOPS = {"bf16": 790.0, "tf32": 400.0, "fp32": 50.0}
TARGET_GBPS = 4300.0
# The time model (seconds). Triton compiles take 0.2-0.7 s each on a Hopper host; a lease
# benchmarks each autotune candidate for 5 + 20 ms plus launch overhead; layers run at a
# fraction of their roofline; the constants per job and per torch.compile are rough guesses.
COMPILE_S = 0.45
LEASE_AUTOTUNE_WARMUP_MS, LEASE_AUTOTUNE_REP_MS = 5, 20
AUTOTUNE_BENCH_S = 0.04
ROOFLINE_EFFICIENCY = 0.3
MEASUREMENT_OVERHEAD_S = 0.3
CUDNN_BENCHMARK_S = 0.3
TORCH_COMPILE_S = 30.0
# reduce-overhead compiles: one layer's forward and backward graphs, and a whole WDSR-NSR
# training step's (guesses, as TORCH_COMPILE_S).
GRAPH_COMPILE_S = 15.0
GRAPH_MODEL_COMPILE_S = 60.0
# The comparison's share of the lease: 240 s of make gpu's 360 s budget.
COMPARISON_FRACTION = 240 / 360
JOB_SETUP_S = 8.0
JOB_CALL_S = {"train": 0.05, "eval": 0.4}
PEAKS_S = 6.0
SMOKE_RUN_S = 1.0
# Interpreted runs (the CPU rehearsal): seconds per kernel launch and per plain-torch call.
INTERPRETED_LAUNCH_S = 0.08
CPU_CALL_S = 0.01


@dataclass(frozen=True)
class Case:
    """One unit of a step: the peaks, a smoke check, a layer in one precision and layout with
    its providers and passes, or an end-to-end job with its providers."""

    kind: str
    target: Workload | EndToEnd | None = None
    precision: str | None = None
    layout: str | None = None
    providers: tuple[str, ...] = ()
    only_passes: tuple[str, ...] | None = None

    @property
    def passes(self) -> tuple[str, ...]:
        if self.kind == "layer":
            if self.only_passes is not None:
                return tuple(p for p in self.target.passes if p in self.only_passes)
            return self.target.passes
        if self.kind == "job":
            return (FORWARD_BACKWARD if self.target.kind == "train" else FORWARD,)
        return ()

    @property
    def measurements(self) -> int:
        return len(self.providers) * len(self.passes) if self.kind in ("layer", "job") else 1

    def label(self) -> str:
        parts = [self.kind] + ([self.target.name] if self.target else [])
        parts += [p for p in (self.precision, self.layout) if p]
        passes = f" {'/'.join(self.only_passes)}" if self.only_passes else ""
        return (" ".join(parts) + (f" [{', '.join(self.providers)}]" if self.providers else "")
                + passes)


@dataclass(frozen=True)
class Step:
    """A lease step: at most ``cap_fraction`` of the budget; ``autotune`` says whether its
    kernels may autotune shape classes the table lacks (else they take their first config)."""

    name: str
    title: str
    cap_fraction: float
    cases: tuple[Case, ...]
    autotune: bool = True


@dataclass(frozen=True)
class Scale:
    """Full size for a GPU, or tiny for the CPU rehearsal of the lease in the interpreter."""

    name: str
    layers: tuple[Workload, ...]
    smoke_layers: tuple[Workload, ...]
    jobs: tuple[EndToEnd, ...]
    sweeps: tuple[Workload, ...]
    extra_providers: tuple[str, ...]
    warmup: int
    repeats: int
    max_autotunes: int

    @classmethod
    def full(cls) -> Scale:
        main = {w.name: w for w in main_workloads()}
        return cls(
            "full", tuple(main.values()),
            # W2 at batch 16, and one 256x256 image: batch 1 takes the split kernel gradient.
            (main["W2"], W4_256),
            tuple(end_to_end_jobs()), tuple(sweep_workloads()), ("paper_compiled",),
            warmup=3, repeats=20, max_autotunes=48)

    @classmethod
    def tiny(cls) -> Scale:
        """Interpreter-sized shapes. No torch.compile: one CPU compile outlasts the rehearsal."""
        tiny = tiny_workloads()[0]
        sweeps = tuple(Workload(f"tiny-b{b}", "sweep-batch", b, 8, 16, 8, 8, k=2, d=4,
                                sweep_value=b, description="tiny, batch swept")
                       for b in (1, 3))
        jobs = (EndToEnd("E2E-train-tiny", "train", batch=1, patch_size=17,
                         description="one WDSR-NSR x2 training step on one 17x17 patch"),)
        return cls("tiny", (tiny,), (Workload("smoke-tiny", "smoke", 2, 4, 8, 5, 7, k=2, d=2),),
                   jobs, sweeps, (), warmup=1, repeats=2, max_autotunes=0)


def comparison_cases(scale: Scale) -> tuple[Case, ...]:
    """The user's comparison, in the order the targets need it (docs/design.md, "Targets of
    the next GPU run"): the three providers eager on every layer in bf16 channels_last, W3's
    forward, the WDSR-NSR training step graphed (triton_nsr and the paper's) then the rest of
    it, the layers CUDA-graphed (forward+backward), then TF32 NCHW."""
    layers = {w.name: w for w in scale.layers}
    names = [n for n in COMPARISON_LAYERS if n in layers] or [w.name for w in scale.layers
                                                               if w.name != "W3"]
    (precision, layout), (precision2, layout2) = HEADLINE_CONFIGS
    cases = [Case("layer", layers[n], precision, layout, HEADLINE_PROVIDERS) for n in names]
    if "W3" in layers:
        cases.append(Case("layer", layers["W3"], precision, layout, HEADLINE_PROVIDERS))
    for job in scale.jobs:
        if job.kind == "train":
            graphed = ("triton_nsr_graphed", "paper_graphed")
            cases.append(Case("job", job, "bf16", "channels_last", graphed))
            cases.append(Case("job", job, "bf16", "channels_last",
                              tuple(p for p in TRAIN_PROVIDERS if p not in graphed)))
    cases += [Case("layer", layers[n], precision, layout, GRAPHED_PROVIDERS,
                   only_passes=(FORWARD_BACKWARD,)) for n in names]
    for n in names:
        cases.append(Case("layer", layers[n], precision2, layout2, HEADLINE_PROVIDERS))
        cases.append(Case("layer", layers[n], precision2, layout2, GRAPHED_PROVIDERS,
                          only_passes=(FORWARD_BACKWARD,)))
    return tuple(cases)


def lease_steps(scale: Scale) -> list[Step]:
    """The lease's steps, most important first."""
    precision, layout = HEADLINE_CONFIGS[0]
    extras = tuple(Case("layer", w, p, lay, scale.extra_providers)
                   for w in scale.layers for p, lay in HEADLINE_CONFIGS
                   if scale.extra_providers)
    extras += tuple(Case("layer", w, precision, layout, HEADLINE_PROVIDERS)
                    for w in scale.sweeps)
    return [
        Step("device", "device, versions, measured peaks (bf16 and TF32 matmul, copy)", 0.06,
             (Case("peaks"),)),
        Step("smoke", "correctness smoke: fixed configs vs float64, fp32/TF32/bf16/fp16, "
                      "NCHW and channels_last, forward and every gradient, bitwise repeat",
             0.22, tuple(Case("smoke", w, p, lay) for w in scale.smoke_layers
                         for p in smoke.PRECISIONS for lay in LAYOUTS), autotune=False),
        Step("comparison", "the comparison: static conv, paper's layer and triton_nsr, eager "
                           "and CUDA-graphed, wall and GPU-busy time, per layer (bf16 "
                           "channels_last, then TF32 NCHW) and for a WDSR-NSR training step",
             COMPARISON_FRACTION, comparison_cases(scale)),
        Step("end_to_end", "WDSR-NSR patch evaluation (bf16 autocast)", 0.1,
             tuple(Case("job", job, "bf16", "nchw", JOB_PROVIDERS) for job in scale.jobs
                   if job.kind != "train")),
        Step("extras", "paper under torch.compile, then the sweeps (bf16, channels_last)", 1.0,
             extras),
    ]


# ----------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """Expected work of one step: Triton compiles, autotune benchmarks and seconds."""

    cases: int = 0
    measurements: int = 0
    compiles: int = 0
    autotuned: int = 0
    benchmarks: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # (case label, estimated seconds) in the step's order
    case_seconds: list[tuple[str, float]] = field(default_factory=list)


def _recorded_launches(run) -> list[tuned_configs.Launch]:
    record: list = []
    with tuned_configs.use(tuned_configs.Policy(record=record)):
        run()
    return record


def _record_layer(workload: Workload, precision: str, layout: str, device: str,
                  backward: bool) -> list[tuned_configs.Launch]:
    """The Triton launches of one call of the triton_nsr layer (with its backward)."""
    dtype, tf32 = smoke.PRECISIONS[precision]
    inputs = providers.LayerInputs.create(workload, device, dtype, layout == "channels_last", tf32)
    forward, leaves = providers.get("triton_nsr").build(inputs)

    def call() -> None:
        for leaf in leaves:
            leaf.requires_grad_(backward)
        output = forward()
        if backward:
            torch.autograd.grad(output, leaves, torch.empty_like(output))

    return _recorded_launches(call)


def _record_job(job: EndToEnd, device: str) -> list[tuned_configs.Launch]:
    step = end_to_end.build(job, "triton_nsr", device)
    return _recorded_launches(step)


class Planner:
    """Walks the steps in order, as the lease will, keeping Triton's compile cache in mind."""

    def __init__(self, scale: Scale, device: str, target: tuned_configs.Target,
                 table: dict) -> None:
        self.scale = scale
        self.device = device
        # Full-size plans model the GPU even when recorded on a CPU; tiny ones the interpreter.
        self.gpu = scale.name == "full"
        self.target = target
        self.table = table
        self.units: set = set()
        self.tuned: set = set()
        self.autotuned = 0

    def _compile_work(self, launches, autotune: bool) -> tuple[int, int, int]:
        """(new compiles, new autotuned shape classes, benchmarks) of ``launches``."""
        compiles = tuned = benchmarks = 0
        for launch in launches:
            kernel = launch.kernel
            ident = (kernel.name, launch.key)
            stored = kernel.stored(launch.key, self.target, self.table)
            if stored is None and ident in self.tuned:
                configs = ["best"]
            elif stored is not None:
                configs = [stored]
            elif autotune and self.autotuned < self.scale.max_autotunes:
                self.tuned.add(ident)
                self.autotuned += 1
                tuned += 1
                benchmarks += len(kernel.configs)
                configs = list(range(len(kernel.configs)))
            else:
                configs = [0]
            for config in configs:
                unit = (kernel.name, launch.key if config == "best" else None, config,
                        launch.specialization)
                if unit not in self.units:
                    self.units.add(unit)
                    compiles += 1
        return compiles, tuned, benchmarks

    def _call_seconds(self, case: Case, provider: str, pass_: str, launches: int) -> float:
        """Seconds of one call: the roofline model on a GPU, per launch when interpreted."""
        if not self.gpu:
            return launches * INTERPRETED_LAUNCH_S + CPU_CALL_S
        workload = case.target
        itemsize = hardware.PRECISIONS[case.precision][0].itemsize
        flops, nbytes = providers.part_flops_and_bytes(
            providers.get(provider).part, workload, workload.cost(itemsize), itemsize)
        factor = 3 if pass_ == FORWARD_BACKWARD else 1
        floor = max(flops / (TARGET_TFLOPS[case.precision] * 1e12), nbytes / (TARGET_GBPS * 1e9))
        return factor * floor / ROOFLINE_EFFICIENCY

    def estimate(self, step: Step) -> Estimate:
        est = Estimate(cases=len(step.cases))
        calls = self.scale.warmup + self.scale.repeats + 1  # + the peak-memory call
        for case in step.cases:
            before = est.seconds
            self._estimate_case(est, step, case, calls)
            est.case_seconds.append((case.label(), est.seconds - before))
        return est

    def _estimate_case(self, est: Estimate, step: Step, case: Case, calls: int) -> None:
        """Add ``case``'s measurements, compiles and seconds to ``est``."""
        est.measurements += case.measurements
        if case.kind == "peaks":
            est.seconds += PEAKS_S if self.gpu else 1.0
            return
        if case.kind == "smoke":
            launches = _record_layer(case.target, case.precision, case.layout, self.device,
                                     backward=True)
            self._add(est, launches, autotune=False)
            per_run = (SMOKE_RUN_S if self.gpu
                       else len(launches) * INTERPRETED_LAUNCH_S)
            est.seconds += 3 * per_run
            return
        if case.kind == "job":
            for provider in case.providers:
                if provider.endswith("_graphed") and not self.gpu:
                    continue  # skipped without CUDA
                launches = (_record_job(case.target, self.device)
                            if provider.startswith("triton_nsr") else [])
                self._add(est, launches, step.autotune)
                per_call = (JOB_CALL_S[case.target.kind] if self.gpu
                            else len(launches) * INTERPRETED_LAUNCH_S + 1.0)
                est.seconds += JOB_SETUP_S + calls * per_call
                if provider.endswith("_graphed"):
                    est.seconds += GRAPH_MODEL_COMPILE_S
            return
        for provider in case.providers:
            if providers.get(provider).graphed and not self.gpu:
                continue  # skipped without CUDA
            for pass_ in case.passes:
                launches = []
                if providers.get(provider).needs_triton:
                    launches = _record_layer(case.target, case.precision, case.layout,
                                             self.device, pass_ == FORWARD_BACKWARD)
                    self._add(est, launches, step.autotune)
                elif self.gpu:
                    est.seconds += CUDNN_BENCHMARK_S
                if providers.get(provider).graphed:
                    est.seconds += GRAPH_COMPILE_S
                elif providers.get(provider).compiles:
                    est.seconds += TORCH_COMPILE_S
                est.seconds += MEASUREMENT_OVERHEAD_S + calls * self._call_seconds(
                    case, provider, pass_, len(launches))

    def _add(self, est: Estimate, launches, autotune: bool) -> None:
        compiles, tuned, benchmarks = self._compile_work(launches, autotune)
        est.compiles += compiles
        est.autotuned += tuned
        est.benchmarks += benchmarks
        if self.gpu:
            est.seconds += compiles * COMPILE_S + benchmarks * AUTOTUNE_BENCH_S


def _case_lines(est: Estimate, cap: float) -> list[str]:
    """The comparison's cases in the order they run, with their estimated seconds, where the
    step's cap falls among them."""
    lines, spent = [], 0.0
    for label, seconds in est.case_seconds:
        spent += seconds
        where = "" if spent <= cap else "  (beyond the cap: not reached)"
        lines.append(f"{'':<11} {'':>5} {'':>5} {'':>8} {'':>9} {'':>7} {seconds:>7.0f} "
                     f"{'':>6} {spent:>6.0f}    {label}{where}")
    return lines


def reserve_seconds(budget_s: float) -> float:
    """Time kept back at the end of a lease for the last write and the summary page."""
    return max(3.0, min(20.0, 0.03 * budget_s))


def format_plan(scale: Scale, budget_s: float, device: str, target: tuned_configs.Target,
                table: dict) -> tuple[str, bool]:
    """The dry run's text, and whether the steps before 'extras' fit the budget.

    Each step gets at most its cap; whatever a step leaves unused goes to the next ones.
    """
    planner = Planner(scale, device, target, table)
    reserve = reserve_seconds(budget_s)
    lines = [
        f"lease plan: {scale.name} shapes, budget {budget_s:.0f} s ({reserve:.0f} s kept for "
        f"the last write), estimated for Triton {target.triton} on "
        f"{target.device if planner.gpu else 'the CPU interpreter'}",
        f"timing: {scale.warmup} warm-up + {scale.repeats} timed calls per measurement; "
        f"autotuning only for shape classes missing from the table, at most "
        f"{scale.max_autotunes}, {LEASE_AUTOTUNE_WARMUP_MS}+{LEASE_AUTOTUNE_REP_MS} ms per "
        "candidate",
        "",
        f"{'step':<11} {'cases':>5} {'meas.':>5} {'compiles':>8} {'autotuned':>9} "
        f"{'benchm.':>7} {'est. s':>7} {'cap s':>6} {'end s':>6}  what",
    ]
    clock, fits = 0.0, True
    totals = Estimate()
    for step in lease_steps(scale):
        est = planner.estimate(step)
        cap = step.cap_fraction * budget_s
        clock += min(est.seconds, cap, max(0.0, budget_s - reserve - clock))
        if step.name != "extras" and est.seconds > cap:
            fits = False
        for name in ("cases", "measurements", "compiles", "autotuned", "benchmarks", "seconds"):
            setattr(totals, name, getattr(totals, name) + getattr(est, name))
        cut = "" if est.seconds <= cap else "  (over its cap: cut short)"
        lines.append(f"{step.name:<11} {est.cases:>5} {est.measurements:>5} {est.compiles:>8} "
                     f"{est.autotuned:>9} {est.benchmarks:>7} {est.seconds:>7.0f} {cap:>6.0f} "
                     f"{clock:>6.0f}  {step.title}{cut}")
        if step.name == "comparison":
            lines += _case_lines(est, cap)
    lines.append(f"{'total':<11} {totals.cases:>5} {totals.measurements:>5} {totals.compiles:>8} "
                 f"{totals.autotuned:>9} {totals.benchmarks:>7} {totals.seconds:>7.0f}")
    lines += [
        "",
        f"steps device..end_to_end {'fit' if fits else 'do NOT fit'} their caps; the lease "
        f"ends by {clock:.0f} s of {budget_s:.0f} s; what the "
        "extras cannot reach is recorded as not reached.",
        f"model: {COMPILE_S} s per Triton compile, {AUTOTUNE_BENCH_S} s per autotune "
        f"candidate, layers at {ROOFLINE_EFFICIENCY:.0%} of the roofline + "
        f"{MEASUREMENT_OVERHEAD_S} s per measurement, {TORCH_COMPILE_S:.0f} s per torch.compile, "
        f"{JOB_SETUP_S:.0f} s per job set-up",
    ]
    return "\n".join(lines), fits
