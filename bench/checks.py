"""Correctness of the Triton kernels against the reference on one tiny case.

Cheap enough for the CPU interpreter (seconds): a timing of a wrong kernel is worthless, so the
benchmark checks before it measures. Each check compares the output and every gradient.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from bench import hardware, providers
from bench.workloads import Workload

# float32 tolerance (atol, rtol) with TF32 off, as in tests/utils.py.
ATOL, RTOL = 2e-4, 2e-4
CHECK_WORKLOAD = Workload("check", "check", 2, 4, 8, 5, 7, k=2, d=2,
                          description="kernel check: 2 x 4 -> 8, 5x7, k=2, d=2")


@dataclass
class CheckResult:
    """One comparison: 'passed', 'failed' or 'skipped', the worst error and a message."""

    name: str
    status: str
    max_abs_error: float | None = None
    message: str = ""

    def line(self) -> str:
        error = "" if self.max_abs_error is None else f" (max abs error {self.max_abs_error:.2e})"
        return f"  {self.name}: {self.status}{error}{' - ' + self.message if self.message else ''}"


def _outputs_and_grads(forward, leaves: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """The outputs of ``forward`` and the gradients of ``leaves`` for seeded output grads."""
    for leaf in leaves:
        leaf.requires_grad_(True)
    try:
        outputs = providers.output_list(forward())
        generator = torch.Generator(device=outputs[0].device).manual_seed(seed)
        grads = [torch.randn(o.shape, generator=generator, device=o.device, dtype=o.dtype)
                 for o in outputs]
        leaf_grads = torch.autograd.grad(outputs, leaves, grads)
    finally:
        for leaf in leaves:
            leaf.requires_grad_(False)
    return [o.detach() for o in outputs] + list(leaf_grads)


def _compare(name: str, actual: list[torch.Tensor], expected: list[torch.Tensor]) -> CheckResult:
    worst = 0.0
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            return CheckResult(name, "failed", message=f"shape {tuple(a.shape)} != "
                                                       f"{tuple(e.shape)}")
        if not torch.isfinite(a).all():
            return CheckResult(name, "failed", message="non-finite values")
        worst = max(worst, (a - e).abs().max().item())
        if not torch.allclose(a, e, atol=ATOL, rtol=RTOL):
            return CheckResult(name, "failed", worst, "outside float32 tolerance")
    return CheckResult(name, "passed", worst)


def check_kernels(device: str) -> list[CheckResult]:
    """Compare triton_mix, triton_conv and triton_nsr with the reference (output and grads).

    Needs CUDA or TRITON_INTERPRET=1 set before triton was imported; returns one 'skipped'
    result when triton_nsr.ops cannot be imported.
    """
    try:
        importlib.import_module("triton_nsr.ops")
    except ImportError as error:
        return [CheckResult("triton_nsr.ops", "skipped", message=f"not importable ({error})")]
    # A module that exists but fails to import (a kernel that does not compile at import
    # time, say) is a failure to report, not a reason to stop the benchmark.
    except Exception as error:
        return [CheckResult("triton_nsr.ops", "failed",
                            message=f"import failed: {type(error).__name__}: {error}")]
    inputs = providers.LayerInputs.create(CHECK_WORKLOAD, device, torch.float32,
                                          channels_last=False, allow_tf32=False)
    results = []
    # TF32 off for the kernels (they follow cudnn.allow_tf32) and the reference alike.
    with hardware.tf32_mode(False):
        for name in ("triton_mix", "triton_conv", "triton_nsr"):
            provider = providers.get(name)
            try:
                forward, leaves = provider.build(inputs)
                actual = _outputs_and_grads(forward, leaves, seed=0)
                reference_forward, reference_leaves = providers.reference_part(provider.part,
                                                                               inputs)
                expected = _outputs_and_grads(reference_forward, reference_leaves, seed=0)
            # Any failure of a kernel is a failed check, reported with its message.
            except Exception as error:
                results.append(CheckResult(name, "failed",
                                           message=f"{type(error).__name__}: {error}"))
                continue
            results.append(_compare(name, actual, expected))
    return results
