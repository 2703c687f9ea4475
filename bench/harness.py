"""The one harness: every (workload, precision, layout, provider, pass) timed the same way.

A run measures the device's peaks first, then each case; every case becomes one measurement
row (status 'ok', 'skipped' with the reason, or 'error' with the exception), so a failing
provider never hides the others and the JSON says what was not measured and why.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from bench import end_to_end, hardware, providers, results
from bench.timing import Timer, summarize, wall_busy_host
from bench.workloads import FORWARD, FORWARD_BACKWARD, EndToEnd, Workload

LAYOUTS = ("nchw", "channels_last")
# Backward of a convolution or matmul does the forward's work twice (input and weight
# gradients): the usual 3x estimate for a training step's FLOPs and minimum bytes.
BACKWARD_FACTOR = 3


@dataclass
class Settings:
    """What to run. The first precision and layout are the headline configuration: sweeps and
    end-to-end jobs run in it only, to keep a full GPU run within tens of minutes; the other
    workloads run in every precision and layout."""

    device: str
    precisions: list[str] = field(default_factory=lambda: list(hardware.PRECISIONS))
    layouts: list[str] = field(default_factory=lambda: list(LAYOUTS))
    providers: list[str] = field(default_factory=lambda: list(providers.PROVIDERS))
    passes: list[str] = field(default_factory=lambda: [FORWARD, FORWARD_BACKWARD])
    repeats: int = 30
    warmup: int = 5
    # cuDNN's per-shape algorithm search for the baselines (CUDA only; see hardware.py).
    cudnn_benchmark: bool = True

    def check(self) -> None:
        for precision in self.precisions:
            if precision not in hardware.PRECISIONS:
                raise ValueError(f"unknown precision {precision!r}; "
                                 f"choose from {sorted(hardware.PRECISIONS)}")
        for layout in self.layouts:
            if layout not in LAYOUTS:
                raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
        for name in self.providers:
            providers.get(name)
        for name in self.passes:
            if name not in (FORWARD, FORWARD_BACKWARD):
                raise ValueError(f"unknown pass {name!r}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("repeats must be >= 1 and warmup >= 0")
        if not (self.precisions and self.layouts and self.providers and self.passes):
            raise ValueError("precisions, layouts, providers and passes must not be empty")


@functools.cache
def _counted_flops(part: str, workload: Workload, backward: bool) -> int:
    return providers.count_flops(part, workload, backward)


def _row(workload: str, provider: str, part: str, precision: str, layout: str, pass_: str,
         status: str = "ok", message: str = "") -> dict:
    return {
        "workload": workload, "provider": provider, "part": part, "precision": precision,
        "layout": layout, "pass": pass_, "status": status, "message": message,
        "latency_ms": None, "gpu_busy_ms": None, "host_ms": None,
        "peak_memory_bytes": None, "flops_analytic": None,
        "flops_counted": None, "bytes_analytic": None, "tflops": None, "gbps": None,
        "roofline_fraction": None,
    }


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _training_step(forward: Callable[[], object], leaves: list[torch.Tensor]):
    """Forward, then the gradients of every leaf for fixed random output gradients.

    torch.autograd.grad returns the gradients instead of accumulating them into ``.grad``, so
    repeats neither add into old gradients nor keep the previous repeat's alive (which would
    skew the peak-memory reading).
    """
    for leaf in leaves:
        leaf.requires_grad_(True)
    grads = [torch.randn_like(o) for o in providers.output_list(forward())]

    def step() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(providers.output_list(forward()), leaves, grads)

    return step


def _inference_step(forward: Callable[[], object], leaves: list[torch.Tensor]):
    for leaf in leaves:
        leaf.requires_grad_(False)

    def step() -> object:
        with torch.no_grad():
            return forward()

    return step


class Harness:
    """Runs :class:`Settings` over workloads, appending rows to one run record."""

    def __init__(self, settings: Settings, progress: Callable[[str], None]) -> None:
        settings.check()
        self.settings = settings
        self.progress = progress
        self.timer = Timer(settings.device, settings.warmup, settings.repeats)
        self.peaks: dict = {}
        self._done = 0
        self._total = 0

    def run(self, workloads: list[Workload], jobs: list[EndToEnd]) -> dict:
        """Measure peaks, every layer workload and every end-to-end job; return the run."""
        s = self.settings
        self.progress(f"measuring peaks on {s.device} ({', '.join(s.precisions)}, copy)")
        self.peaks = hardware.measure_peaks(s.device, s.precisions, self.timer)
        catalogue = {w.name: w.as_dict() for w in workloads} | {j.name: j.as_dict()
                                                                 for j in jobs}
        run = results.new_run(s.device, asdict(s), self.peaks, catalogue)
        plan = [(w, p, layout) for w in workloads for p, layout in self._configs(w)]
        e2e_providers = [p for p in s.providers if p in end_to_end.PROVIDERS]
        self._total = sum(len(s.providers) * len(self._passes(w)) for w, _, _ in plan)
        self._total += len(jobs) * len(e2e_providers)
        with hardware.cudnn_benchmark(s.cudnn_benchmark and s.device == "cuda"):
            for workload, precision, layout in plan:
                run["measurements"] += self._layer_case(workload, precision, layout)
            for job in jobs:
                for name in e2e_providers:
                    run["measurements"].append(self._job_case(job, name))
        return run

    def _configs(self, workload: Workload) -> list[tuple[str, str]]:
        s = self.settings
        if workload.group.startswith("sweep-"):
            return [(s.precisions[0], s.layouts[0])]
        return [(p, layout) for p in s.precisions for layout in s.layouts]

    def _passes(self, workload: Workload) -> list[str]:
        return [p for p in self.settings.passes if p in workload.passes]

    def _report(self, row: dict) -> dict:
        self._done += 1
        what = (f"{row['workload']} {row['provider']} {row['precision']} {row['layout']} "
                f"{row['pass']}")
        if row["status"] == "ok":
            lat = row["latency_ms"]
            outcome = f"{lat['median']:.3f} ms [{lat['p20']:.3f}, {lat['p80']:.3f}]"
        else:
            outcome = f"{row['status']}: {row['message']}"
        self.progress(f"[{self._done}/{self._total}] {what}: {outcome}")
        return row

    def _layer_case(self, workload: Workload, precision: str, layout: str) -> list[dict]:
        s = self.settings
        dtype, tf32 = hardware.PRECISIONS[precision]
        rows = []
        try:
            inputs = providers.LayerInputs.create(workload, s.device, dtype,
                                                  layout == "channels_last", tf32)
        except (RuntimeError, ValueError) as error:
            for name in s.providers:
                for pass_ in self._passes(workload):
                    rows.append(self._report(_row(workload.name, name, providers.get(name).part,
                                                  precision, layout, pass_, "error",
                                                  f"inputs: {_describe(error)}")))
            return rows
        for name in s.providers:
            provider = providers.get(name)
            reason = providers.unavailable_reason(provider, s.device, inputs.x.dtype)
            for pass_ in self._passes(workload):
                row = _row(workload.name, name, provider.part, precision, layout, pass_)
                if reason is not None:
                    row.update(status="skipped", message=reason)
                else:
                    with hardware.tf32_mode(tf32):
                        self._measure_layer(row, provider, inputs, pass_)
                rows.append(self._report(row))
        del inputs
        if s.device == "cuda":
            torch.cuda.empty_cache()
        return rows

    def _measure_layer(self, row: dict, provider: providers.Provider,
                       inputs: providers.LayerInputs, pass_: str) -> None:
        """Fill ``row`` with latency, memory, FLOPs, bytes and rates, or with the error."""
        workload = inputs.workload
        backward = pass_ == FORWARD_BACKWARD
        try:
            forward, leaves = provider.build(inputs)
            make_step = _training_step if backward else _inference_step
            step = make_step(forward, leaves)
            latency = summarize(self.timer.samples(step))
            timing = wall_busy_host(latency, self.timer.gpu_busy_ms(step))
            memory = self.timer.peak_memory(step)
        # A provider may fail in any way (compiler errors, OOM, missing kernels); the row
        # records it and the run goes on.
        except Exception as error:
            row.update(status="error", message=_describe(error))
            return
        finally:
            for tensor in inputs.tensors():
                tensor.requires_grad_(False)
        itemsize = inputs.x.element_size()
        cost = workload.cost(itemsize)
        flops, nbytes = providers.part_flops_and_bytes(provider.part, workload, cost, itemsize)
        factor = BACKWARD_FACTOR if backward else 1
        flops, nbytes = flops * factor, nbytes * factor
        seconds = latency["median"] * 1e-3
        tflops = flops / seconds / 1e12
        row.update(
            **timing,
            peak_memory_bytes=memory,
            flops_analytic=flops,
            flops_counted=_counted_flops(provider.part, workload, backward),
            bytes_analytic=nbytes,
            tflops=tflops,
            gbps=nbytes / seconds / 1e9,
            roofline_fraction=tflops / hardware.roofline_tflops(self.peaks, row["precision"],
                                                                flops, nbytes),
        )

    def _job_case(self, job: EndToEnd, provider: str) -> dict:
        s = self.settings
        # The training step runs channels_last (end_to_end.build), the patch evaluation NCHW.
        precision = s.precisions[0]
        layout = "channels_last" if job.kind == "train" else "nchw"
        row = _row(job.name, provider, "model", precision, layout,
                   FORWARD_BACKWARD if job.kind == "train" else FORWARD)
        dtype, tf32 = hardware.PRECISIONS[precision]
        reason = None
        if job.kind != "train" and provider in end_to_end.TRAIN_ONLY:
            reason = "compared on the training step only"
        elif provider.endswith("_graphed") and s.device != "cuda":
            reason = "CUDA graphs need CUDA"
        elif provider in providers.PROVIDERS:
            reason = providers.unavailable_reason(providers.get(provider), s.device, dtype)
        if reason is not None:
            row.update(status="skipped", message=reason)
            return self._report(row)
        # Whole models run with float32 weights; bfloat16 means autocast, as people train.
        autocast = (torch.autocast(s.device, dtype=dtype) if dtype != torch.float32
                    else contextlib.nullcontext())
        try:
            step = end_to_end.build(job, provider, s.device)
            with hardware.tf32_mode(tf32), autocast:
                latency = summarize(self.timer.samples(step))
                timing = wall_busy_host(latency, self.timer.gpu_busy_ms(step))
                memory = self.timer.peak_memory(step)
        except ImportError as error:
            row.update(status="skipped", message=_describe(error))
        except Exception as error:  # recorded in the row, as in _measure_layer
            row.update(status="error", message=_describe(error))
        else:
            row.update(**timing, peak_memory_bytes=memory)
        if s.device == "cuda":
            torch.cuda.empty_cache()
        return self._report(row)

