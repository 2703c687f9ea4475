"""The lease's correctness smoke: every Triton kernel against a float64 reference, twice.

One case is a workload in one precision and layout. It runs the whole layer on the Triton path
(mixing and convolution forward; input, kernel, bank and routing gradients backward: every
kernel) and the paper's formulation in float64 on the same values, and compares the output and
every gradient by relative error ||out - ref|| / ||ref||. The Triton path runs twice on the
same inputs; the two results must agree bit for bit (determinism). Configs are fixed by the
caller (the lease runs this under a no-autotuning policy): what is checked is what is timed.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from bench import hardware, providers
from bench.workloads import Workload

# name: (dtype, TF32 allowed)
PRECISIONS = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
}
# Relative-error bounds: float32 arithmetic lands far below 1e-4; TF32 and fp16 round products
# to 10 mantissa bits (about 5e-4 each); bf16 to 7 bits (about 4e-3), and its router's softmax
# runs in bf16 too.
TOLERANCES = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 5e-3, "bf16": 3e-2}
OUTPUT_NAMES = ("output", "grad_input", "grad_weight", "grad_bias", "grad_mlp_weight",
                "grad_mlp_bias")


def _as(inputs: providers.LayerInputs, dtype: torch.dtype) -> providers.LayerInputs:
    """The same tensors in ``dtype``, each keeping its memory layout."""
    converted = {f.name: getattr(inputs, f.name).to(dtype)
                 for f in dataclasses.fields(inputs)
                 if isinstance(getattr(inputs, f.name), torch.Tensor)}
    return dataclasses.replace(inputs, **converted)


def _run(forward, leaves: list[torch.Tensor], output_grad: torch.Tensor) -> list[torch.Tensor]:
    """The output and the gradients of ``leaves`` for ``output_grad`` (cast to the output)."""
    for leaf in leaves:
        leaf.requires_grad_(True)
    try:
        output = forward()
        grads = torch.autograd.grad(output, leaves, output_grad.to(output.dtype))
    finally:
        for leaf in leaves:
            leaf.requires_grad_(False)
    return [output.detach()] + list(grads)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; inf for non-finite values."""
    actual = actual.double()
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = expected.norm().item()
    return (actual - expected).norm().item() / (scale if scale > 0 else 1.0)


def check_case(workload: Workload, precision: str, layout: str, device: str) -> dict:
    """One smoke case: a row with per-tensor errors, the tolerance, status and determinism.

    status is 'passed', 'failed' (an error above tolerance, a non-finite value, or two runs that
    differ) or 'error' (an exception, with its message).
    """
    dtype, tf32 = PRECISIONS[precision]
    row = {"workload": workload.name, "precision": precision, "layout": layout,
           "tolerance": TOLERANCES[precision], "status": "error", "message": "",
           "errors": {}, "deterministic": None, "seconds": None}
    start = time.perf_counter()
    try:
        with hardware.tf32_mode(tf32):
            inputs = providers.LayerInputs.create(workload, device, dtype,
                                                  layout == "channels_last", tf32)
            forward, leaves = providers.get("triton_nsr").build(inputs)
            output_shape = forward().shape
            output_grad = torch.randn(output_shape, device=device, dtype=torch.float64)
            first = _run(forward, leaves, output_grad)
            second = _run(forward, leaves, output_grad)
        exact = _as(inputs, torch.float64)
        with hardware.tf32_mode(False):
            reference_forward, reference_leaves = providers.reference_part("layer", exact)
            # The same output gradient the Triton path saw, after its rounding.
            expected = _run(reference_forward, reference_leaves, output_grad.to(dtype).double())
    # Whatever breaks (a compile error, an unsupported dtype) is this case's outcome.
    except Exception as error:
        row["message"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        row["seconds"] = round(time.perf_counter() - start, 3)
        return row
    errors = {name: relative_error(a, e) for name, a, e in zip(OUTPUT_NAMES, first, expected)}
    deterministic = all(torch.equal(a, b) for a, b in zip(first, second))
    worst = max(errors, key=errors.get)
    failures = []
    if errors[worst] > row["tolerance"]:
        failures.append(f"{worst} relative error {errors[worst]:.2e} > {row['tolerance']:.0e}")
    if not deterministic:
        failures.append("two runs on the same inputs differ")
    row.update(status="failed" if failures else "passed", message="; ".join(failures),
               errors=errors, deterministic=deterministic,
               seconds=round(time.perf_counter() - start, 3))
    return row
