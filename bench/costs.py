"""The analytic cost table (params, FLOPs, bytes) of the workloads, and a markdown formatter.

Pure arithmetic from triton_nsr.flops: no device, no timing. Printed by ``python -m bench`` on
machines without a GPU and included in docs/performance.md.
"""

from __future__ import annotations

from bench.workloads import Workload
from triton_nsr.flops import paper_overhead_bound

COST_HEADERS = (
    "workload", "input", "C_in->C_out", "static params", "NSR params", "static GFLOP",
    "NSR GFLOP", "extra FLOPs", "paper bound (c=C_in)", "min MB fp32",
)


def markdown_table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table; readable as plain text in a terminal too."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cost_rows(workloads: list[Workload]) -> list[list[str]]:
    """One row per workload: parameters, forward FLOPs and minimum bytes (float32)."""
    rows = []
    for w in workloads:
        cost = w.cost(itemsize=4)
        bound = paper_overhead_bound(w.height, w.in_channels, w.kernel_size, w.k, w.d)
        rows.append([
            w.name,
            f"{w.batch}x{w.height}x{w.width}",
            f"{w.in_channels}->{w.out_channels}",
            f"{cost.static_params:,}",
            f"{cost.nsr_params:,}",
            f"{cost.static_flops / 1e9:.3f}",
            f"{cost.nsr_flops / 1e9:.3f}",
            f"+{100 * cost.extra_flops_ratio:.3f}%",
            f"{100 * bound:.3f}%",
            f"{cost.nsr_bytes / 1e6:.1f}",
        ])
    return rows


def cost_table(workloads: list[Workload]) -> str:
    """The cost table followed by how the analytic overhead compares with the paper's bound."""
    return markdown_table(COST_HEADERS, cost_rows(workloads)) + "\n\n" + bound_note(workloads)


def bound_note(workloads: list[Workload]) -> str:
    """Which workloads' exact FLOP overhead exceeds the supplementary's bound, computed.

    The bound assumes as many output as input channels and ignores the bias; with c = C_in it
    can be exceeded when C_out < C_in.
    """
    over = []
    for w in workloads:
        exact = w.cost().extra_flops_ratio
        bound = paper_overhead_bound(w.height, w.in_channels, w.kernel_size, w.k, w.d)
        if exact > bound:
            over.append(f"{w.name} ({100 * exact:.3f}% > {100 * bound:.3f}%)")
    if not over:
        return ("The exact FLOP overhead stays under the supplementary's bound (with c = C_in) "
                "for every workload above.")
    return ("The exact FLOP overhead exceeds the supplementary's bound (with c = C_in; the "
            "bound assumes C_out = C_in and no bias) for " + ", ".join(over) + ".")
