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
    return markdown_table(COST_HEADERS, cost_rows(workloads))
