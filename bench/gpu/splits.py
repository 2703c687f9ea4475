"""The kernel gradient's pixel splits timed on a GPU: what the split rule trades, measured.

conv_bwd_weight.weight_grad_splits cuts the kernel gradient's pixel sum into S pieces (row bands
for the all-taps kernel), each writing float32 partial sums that the mixing backward adds:
more pieces fill more SMs, and each moves 2 * B * out * Cg * 9 * 4 more bytes through HBM
(written, then read). The rule (one wave, at least MIN_PIXELS_PER_SPLIT pixels a piece) keeps
those bytes small (docs/design.md's bytes targets) but leaves W1's 48x48 images whole: the
all-taps kernel then runs 16-32 programs (one per sample and channel tile) on an H200's 132
SMs, where the per-tap kernel ran 9 times as many; and it cuts W4 into 64 bands of 8 rows. No
model settles that trade: this measures it. For each workload (bf16, channels_last, as the
layer launches it: partial sums not added) and each kernel (all-taps, per-tap) it times
conv_bwd_weight at several split counts, and checks that the partial sums add up to the
gradient (float64 reference).

    python -m bench.gpu.splits --output-dir OUT [--budget-s 45]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from bench.results import environment, row_lines, run_step
from bench.timing import Timer, summarize
from bench.workloads import main_workloads

RESULT_FILE = "splits.json"
# Split counts per workload: W1's 48 rows from whole to bands of 6; W4's 512 rows around the
# rule's 64 bands.
SPLIT_COUNTS = {"W1-expand": (1, 2, 4, 8), "W1-reduce": (1, 2, 4, 8), "W4": (16, 32, 64, 128)}
VARIANTS = ("all_taps", "per_tap")
WARMUP, REPEATS = 3, 10


def default_shapes() -> dict[str, tuple[int, int, int, int, int]]:
    """{workload: (batch, in, out, height, width)} of the workloads in SPLIT_COUNTS."""
    return {w.name: (w.batch, w.in_channels, w.out_channels, w.height, w.width)
            for w in main_workloads() if w.name in SPLIT_COUNTS}


def kernel_gradient_inputs(shape, device: str, dtype, layout: str = "channels_last"):
    """x (B, in, H, W) and dy (B, out, H, W), seeded, in ``layout`` ("nchw" or
    "channels_last")."""
    batch, cin, cout, height, width = shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, height, width, generator=generator).to(device, dtype)
    dy = torch.randn(batch, cout, height, width, generator=generator).to(device, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    return x, dy


def reference(shape, device: str, dtype) -> torch.Tensor:
    """The per-sample kernel gradient (B, out, in, 3, 3) in float64."""
    x, dy = (t.double() for t in kernel_gradient_inputs(shape, device, dtype))
    cout, cin = shape[2], shape[1]
    return torch.stack([torch.nn.grad.conv2d_weight(x[i:i + 1], (cout, cin, 3, 3),
                                                    dy[i:i + 1], padding=1)
                        for i in range(shape[0])])


def time_splits(shape, splits: int, variant: str, device: str, timer: Timer,
                dtype=torch.bfloat16) -> tuple[dict, torch.Tensor]:
    """Time one kernel gradient launch of a 3x3, padding-1 layer of ``shape`` (batch, in, out,
    height, width) cut into ``splits`` pieces; (row, the gradient its partial sums add up to)."""
    from triton_nsr.kernels import autotune, conv_bwd_weight
    from triton_nsr.kernels.inspection.capture import kernel_gradient_variant

    x, dy = kernel_gradient_inputs(shape, device, dtype)
    grad_weight = x.new_empty((shape[0], shape[2], shape[1], 3, 3))
    grad_bias = x.new_empty((shape[0], shape[2]))
    saved = conv_bwd_weight.weight_grad_splits
    conv_bwd_weight.weight_grad_splits = lambda *args: splits
    autotune.clear_launch_plans()
    try:
        def launch():
            return conv_bwd_weight.conv_bwd_weight(dy, x, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                                 1, False, grad_weight, grad_bias,
                                                 sum_splits=False)

        with kernel_gradient_variant(variant, dtype):
            parts, _ = launch()
            gradient = parts.double().sum(dim=0)
            timing = summarize(timer.samples(launch))
    finally:
        conv_bwd_weight.weight_grad_splits = saved
        autotune.clear_launch_plans()
    pieces = parts.shape[0]
    row = {"splits": pieces, "time_ms": timing,
           "partial_mb": 0.0 if pieces == 1 else 2 * parts.numel() * parts.element_size() / 1e6}
    return row, gradient


def measure(output_dir: Path, budget_s: float, device: str, shapes=None,
            split_counts=SPLIT_COUNTS, timer: Timer | None = None,
            dtype=torch.bfloat16) -> dict:
    """Time every (workload, kernel, split count) within ``budget_s`` seconds; write and return
    OUT/splits.json. Each row's ``error``: its summed partials against the float64 gradient
    (relative, Frobenius norm)."""
    shapes = default_shapes() if shapes is None else shapes
    timer = timer or Timer(device, WARMUP, REPEATS)
    started = time.perf_counter()
    rows = []
    for name, shape in shapes.items():
        expected = None
        for variant in VARIANTS:
            for splits in split_counts[name]:
                row = {"workload": name, "shape": list(shape), "variant": variant,
                       "asked_splits": splits}
                if time.perf_counter() - started > budget_s:
                    rows.append({**row, "status": "not reached"})
                    continue
                try:
                    measured, gradient = time_splits(shape, splits, variant, device, timer,
                                                     dtype)
                except Exception as failure:  # a compile error or a fault is this row's result
                    rows.append({**row, "status": "error",
                                 "message": f"{type(failure).__name__}: {failure}"[:300]})
                    continue
                if expected is None:
                    expected = reference(shape, device, dtype)
                error = (gradient - expected).norm().item() / (expected.norm().item() or 1.0)
                rows.append({**row, **measured, "status": "measured", "error": error})
    record = {"environment": environment(device), "dtype": str(dtype), "budget_s": budget_s,
              "elapsed_s": round(time.perf_counter() - started, 1), "rows": rows}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESULT_FILE).write_text(json.dumps(record, indent=1))
    return record


def summary(record: dict) -> str:
    """One line per row: workload, kernel, splits, median time, partial-sum MB, error."""
    return row_lines(
        record["rows"],
        lambda row: f"{row['workload']:>10} {row['variant']:>8} S={row['asked_splits']:<4}",
        lambda row: (f"ran {row['splits']:>3} pieces  {row['time_ms']['median']:.4f} ms"
                     f"  +{row['partial_mb']:.1f} MB  error {row['error']:.1e}"))


def main(argv: list[str] | None = None) -> int:
    return run_step(argv, __doc__, 45.0, "splits", measure, summary)


if __name__ == "__main__":
    sys.exit(main())
