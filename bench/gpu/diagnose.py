"""Kernel-by-kernel diagnosis on a GPU: each convolution kernel alone, per config, against conv2d.

The lease's smoke checks the whole layer and so names no culprit; and the two GPU-only faults
found so far are in single kernels: the all-taps weight gradient gave wrong 16-bit gradients
on an H200 (a dy row Triton's frontend left uncarried, fixed since; the 16-bit path runs it),
and TMA boxes at tap-shifted NCHW columns faulted ("illegal instruction"; off on the layer's
path). This command runs, case by case, one launcher (conv_fwd, conv_bwd_input,
conv_bwd_weight) with one variant (the all-taps kernel in every dtype, the per-tap one, or the
NCHW TMA route forced) and one fixed config, and compares it with a float64 reference
(F.conv2d and its gradients, per sample).

A fault that breaks the CUDA context is sticky, so the cases run in a child process that
reports one JSON line per case; when the child dies or a case leaves the context broken, the
parent records that case as the fault and starts a fresh child at the next one. Cases run in
priority order until the budget is spent; the rest are recorded as not reached.

    python -m bench.gpu.diagnose --output-dir OUT [--budget-s 120]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.results import environment, step_parser

RESULT_FILE = "diagnose.json"
# name: (dtype, TF32 allowed, relative-error bound): bounds as bench/gpu/smoke.py's, one kernel.
PRECISIONS = {
    "bf16": (torch.bfloat16, False, 2e-2),
    "fp16": (torch.float16, False, 5e-3),
    "tf32": (torch.float32, True, 5e-3),
    "fp32": (torch.float32, False, 1e-4),
}
# (batch, in, out, height, width): channel and width counts TMA takes (multiples of 16 bytes),
# several tiles in every GEMM dimension, two samples.
SHAPE = (2, 64, 96, 24, 40)
CONFIGS_PER_KERNEL = 3


@dataclass(frozen=True)
class Case:
    """One launch to check: kernel, forced variant, precision, layout and config index."""

    kernel: str  # "forward", "input_grad", "weight_grad"
    # "default" (weight_grad: per tap), "all_taps" (weight_grad), "all_taps_transposed"
    # (weight_grad, in and out channels swapped: x's rows carried), "tma_nchw"
    variant: str
    precision: str
    layout: str
    config: int

    def label(self) -> str:
        return (f"{self.kernel}/{self.variant} {self.precision} {self.layout} "
                f"config {self.config}")


def cases() -> list[Case]:
    """Every case, most informative first: the faulty kernels, then the layer's own."""
    found = []
    configs = range(CONFIGS_PER_KERNEL)
    for precision in ("bf16", "fp16", "tf32"):  # the all-taps kernel, wrong until 2026-11-30
        for layout in ("nchw", "channels_last"):
            found += [Case("weight_grad", "all_taps", precision, layout, c) for c in configs]
    for precision in ("bf16", "fp16"):  # TRANSPOSED, new on 2026-11-30: channels_last only
        found += [Case("weight_grad", "all_taps_transposed", precision, "channels_last", c)
                  for c in configs]
    for precision in ("bf16", "tf32"):  # what the layer runs
        for layout in ("channels_last", "nchw"):
            for kernel in ("weight_grad", "forward", "input_grad"):
                found += [Case(kernel, "default", precision, layout, c) for c in configs]
    for precision in ("bf16", "tf32"):  # the NCHW TMA fault, one config each
        found += [Case(kernel, "tma_nchw", precision, "nchw", 0)
                  for kernel in ("forward", "input_grad")]
    return found


# ----------------------------------------------------------------------------- one case


def fixed_config(tuner, config):
    """A stand-in for a tuned kernel that launches ``config`` (a triton.Config) as is."""

    class Fixed:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                return tuner.fn[grid](*args, **kwargs, **config.kwargs,
                                      num_warps=config.num_warps,
                                      num_stages=config.num_stages)
            return launch

    return Fixed()


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.double()
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = expected.norm().item()
    return (actual - expected).norm().item() / (scale if scale > 0 else 1.0)


def run_case(case: Case, device: str, shape=SHAPE) -> dict:
    """Launch the case's kernel once and compare it with the float64 reference.

    shape: (batch, in, out, height, width) of a 3x3 convolution, padding 1, one group.
    """
    from triton_nsr.kernels import autotune, conv, conv_bwd_input, conv_bwd_weight
    from triton_nsr.kernels.inspection.capture import kernel_gradient_variant
    from triton_nsr.kernels.inspection.compiled import config_label

    dtype, tf32, tolerance = PRECISIONS[case.precision]
    batch, cin, cout, height, width = shape
    if case.variant == "all_taps_transposed":
        cin, cout = max(cin, cout), min(cin, cout)  # more input than output channels
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, height, width, generator=generator).to(device, dtype)
    w = (torch.randn(batch, cout, cin, 3, 3, generator=generator) / (3 * cin ** 0.5)).to(
        device, dtype)
    dy = torch.randn(batch, cout, height, width, generator=generator).to(device, dtype)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    geometry = ((1, 1), (1, 1, 1, 1), (1, 1), 1, tf32)
    module, name = {"forward": (conv, "conv_fwd_kernel"),
                    "input_grad": (conv_bwd_input, "conv_bwd_input_kernel"),
                    "weight_grad": (conv_bwd_weight, "conv_bwd_weight_kernel")}[case.kernel]
    saved = {}
    forced = contextlib.ExitStack()

    def patch(target, attribute, value):
        saved[(target, attribute)] = getattr(target, attribute)
        setattr(target, attribute, value)

    if case.variant.startswith("all_taps"):
        forced.enter_context(kernel_gradient_variant("all_taps", dtype))
        name = "conv_bwd_weight_3x3_kernel"
    elif case.kernel == "weight_grad":
        forced.enter_context(kernel_gradient_variant("per_tap"))
    if case.variant == "tma_nchw":
        patch(module, "route_of", lambda *args, **kwargs: ("tma_nchw", ""))
    tuner = getattr(module, name)
    patch(module, name, fixed_config(tuner, tuner.configs[case.config]))
    autotune.clear_launch_plans()
    row = {**asdict(case), "config_label": config_label(tuner.configs[case.config]),
           "tolerance": tolerance, "status": "error", "error": None, "message": ""}
    try:
        # The float64 reference runs on the CPU. On the GPU it was the first CUDA call after
        # the kernel's asynchronous launch, so a kernel fault surfaced in the reference's cuDNN
        # convolution (CUDNN_STATUS_INTERNAL_ERROR on the H200) and named cuDNN; now it
        # surfaces at the synchronisation below.
        xd, wd, dyd = x.double().cpu(), w.double().cpu(), dy.double().cpu()
        if case.kernel == "forward":
            actual = conv.conv_fwd(x, w, None, *geometry)
            expected = torch.cat([F.conv2d(xd[i:i + 1], wd[i], padding=1)
                                  for i in range(batch)])
        elif case.kernel == "input_grad":
            actual = conv_bwd_input.conv_bwd_input(dy, w, *geometry, torch.empty_like(x))
            expected = torch.cat([torch.nn.grad.conv2d_input(
                (1, cin, height, width), wd[i], dyd[i:i + 1], padding=1) for i in range(batch)])
        else:
            actual, actual_bias = torch.empty_like(w), dy.new_empty((batch, cout))
            conv_bwd_weight.conv_bwd_weight(dy, x, (3, 3), *geometry, actual, actual_bias)
            expected = torch.stack([torch.nn.grad.conv2d_weight(
                xd[i:i + 1], wd[i].shape, dyd[i:i + 1], padding=1) for i in range(batch)])
        if device == "cuda":
            torch.cuda.synchronize()
        error = _relative_error(actual.cpu(), expected)
        if case.kernel == "weight_grad":
            error = max(error, _relative_error(actual_bias.cpu(), dyd.sum(dim=(2, 3))))
        row.update(error=error, status="passed" if error <= tolerance else "failed")
    except Exception as failure:  # a compile error or a fault is this case's outcome
        row["message"] = f"{type(failure).__name__}: {str(failure).splitlines()[0][:300]}"
    finally:
        for (target, attribute), value in saved.items():
            setattr(target, attribute, value)
        forced.close()
        autotune.clear_launch_plans()
    return row


# ----------------------------------------------------------------------------- processes


def child(cases_path: Path, start: int, device: str) -> None:
    """Run the cases from ``start`` on, printing one JSON line each; stop after a case that
    leaves the CUDA context broken (the parent goes on in a fresh process)."""
    from bench.gpu import jit_log
    from bench.gpu.lease import broken_context

    jit_log.install("diagnose")
    stored = json.loads(cases_path.read_text())
    listed = [Case(**fields) for fields in stored["cases"]]
    for index in range(start, len(listed)):
        row = run_case(listed[index], device, tuple(stored["shape"]))
        broken = broken_context(device)
        if broken:
            row.update(status="fault", message=row["message"] or broken)
        print(json.dumps({"index": index, **row}), flush=True)
        if broken:
            return


def diagnose(output_dir: Path, budget_s: float, device: str, listed=None,
             shape=SHAPE) -> dict:
    """Run every case (default: :func:`cases`) on ``shape`` within ``budget_s`` seconds; write
    and return OUT/diagnose.json."""
    listed = cases() if listed is None else listed
    output_dir.mkdir(parents=True, exist_ok=True)
    cases_path = output_dir / "diagnose_cases.json"
    cases_path.write_text(json.dumps({"shape": list(shape),
                                      "cases": [asdict(case) for case in listed]}))
    started = time.perf_counter()
    results: dict[int, dict] = {}
    start = 0
    while start < len(listed) and time.perf_counter() - started < budget_s:
        left = budget_s - (time.perf_counter() - started)
        command = [sys.executable, "-m", "bench.gpu.diagnose", "--child", str(cases_path),
                   "--start", str(start), "--device", device]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=left,
                                  env=os.environ.copy())
            output, tail = done.stdout, done.stderr[-500:]
        except subprocess.TimeoutExpired as timeout:
            output = (timeout.stdout or b"").decode() if isinstance(timeout.stdout, bytes) \
                else (timeout.stdout or "")
            tail = "the budget ran out during this case"
        for line in output.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                results[row.pop("index")] = row
        reached = max(results, default=start - 1) + 1
        if reached == start:
            # The child died inside this case (a crash, not an exception): it is the fault.
            results[start] = {**asdict(listed[start]), "status": "fault",
                              "message": tail.strip().splitlines()[-1] if tail.strip() else
                              "the child process died"}
            reached = start + 1
        start = reached
    rows = [results.get(i) or {**asdict(case), "status": "not reached",
                               "message": "not reached: the budget ran out"}
            for i, case in enumerate(listed)]
    record = {"environment": environment(device), "shape": list(shape), "budget_s": budget_s,
              "elapsed_s": round(time.perf_counter() - started, 1), "cases": rows}
    (output_dir / RESULT_FILE).write_text(json.dumps(record, indent=1))
    cases_path.unlink()
    return record


def summary(record: dict) -> str:
    """One line per case: status, error, label."""
    lines = []
    for row in record["cases"]:
        error = row.get("error")
        shown = f"{error:.1e}" if isinstance(error, float) else "-"
        label = Case(**{k: row[k] for k in ("kernel", "variant", "precision", "layout",
                                             "config")}).label()
        lines.append(f"{row['status']:>11}  {shown:>8}  {label}  {row.get('message', '')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = step_parser(__doc__, 120.0, output_required=False)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.start, args.device)
        return 0
    if args.output_dir is None:
        parser.error("--output-dir is required")
    record = diagnose(args.output_dir, args.budget_s, args.device)
    print(summary(record))
    return int(any(row["status"] in ("failed", "fault", "error") for row in record["cases"]))


if __name__ == "__main__":
    sys.exit(main())
