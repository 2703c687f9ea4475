"""How many programs each launch of a training layer starts, against the GPU's multiprocessors.

A launch of fewer programs than the GPU has SMs leaves the others idle for as long as it runs,
whatever its kernel does: on the training layers the small launches (pooling, mixing, router
and mixing backwards) are latency-bound, and a launch that fills the GPU is the first
condition for them to cost little. The counts come from the launchers' own grids (recorded
launches, :func:`capture.capture`), evaluated for every autotune config the tuner keeps for
that launch, so they hold whichever config the tuner picks within that range. Nothing is
compiled or run; the numbers do not depend on the Triton version.

    python -c "from triton_nsr.kernels.inspection.grid_fill import grid_fill; print(grid_fill())"
"""

from __future__ import annotations

from dataclasses import replace

from triton_nsr.kernels.inspection.capture import (
    H200_MULTIPROCESSORS,
    W1_EXPAND,
    W1_REDUCE,
    capture,
    kept_configs,
    kernels,
)

# The training layers of W1 at the batch they train with and at batch 1 (a latency-bound
# deployment), bf16 in the layouts a user runs.
GRID_FILL_SHAPES = [W1_EXPAND, replace(W1_EXPAND, batch=1), W1_REDUCE, replace(W1_REDUCE, batch=1)]
GRID_FILL_CASES = (("bf16", "channels_last"), ("bf16", "nchw"))


def grid_fill(shapes=GRID_FILL_SHAPES, cases=GRID_FILL_CASES) -> list[dict]:
    """One row per launch of one forward and backward pass: shape, batch, precision, layout,
    kernel, and the fewest and most programs over the configs the tuner keeps for it."""
    tuners = kernels()
    rows = []
    for shape in shapes:
        for precision, layout in cases:
            for launch in capture(shape, precision, layout):
                counts = [launch.programs[index]
                          for index in kept_configs(tuners[launch.kernel], launch)]
                rows.append({"shape": shape.name, "batch": shape.batch, "precision": precision,
                             "layout": layout, "kernel": launch.kernel,
                             "programs": (min(counts), max(counts))})
    return rows


def _cell(programs: tuple[int, int]) -> str:
    low, high = programs
    text = str(low) if low == high else f"{low}-{high}"
    return text if low >= H200_MULTIPROCESSORS else f"**{text}**"


def render_grid_fill(rows: list[dict] | None = None) -> list[str]:
    """docs/kernels.md's section: a table per case, a row per kernel, a column per shape."""
    rows = grid_fill() if rows is None else rows
    out = ["## Programs per launch", "",
           "Programs each launch of one forward and backward pass starts, over the configs "
           f"the tuner keeps for it (kernels/inspection/grid_fill.py), against the "
           f"{H200_MULTIPROCESSORS} SMs of an H100 or H200; **bold**: fewer programs than "
           "SMs for some kept config, so part of the GPU idles while the launch runs. From the "
           "launchers' grids, not a GPU.", ""]
    columns = list(dict.fromkeys((r["shape"], r["batch"]) for r in rows))
    for case in dict.fromkeys((r["precision"], r["layout"]) for r in rows):
        kernels_in_order = list(dict.fromkeys(
            r["kernel"] for r in rows if (r["precision"], r["layout"]) == case))
        out += [f"{case[0]}, {case[1]}:", "",
                "| kernel | " + " | ".join(f"{name} batch {batch}" for name, batch in columns)
                + " |",
                "| --- |" + " --- |" * len(columns)]
        for kernel in kernels_in_order:
            cells = []
            for column in columns:
                found = [r["programs"] for r in rows
                         if (r["precision"], r["layout"]) == case and r["kernel"] == kernel
                         and (r["shape"], r["batch"]) == column]
                cells.append(_cell(found[0]) if found else "")
            out.append(f"| `{kernel}` | " + " | ".join(cells) + " |")
        out.append("")
    short = sorted({r["kernel"] for r in rows if r["programs"][0] < H200_MULTIPROCESSORS})
    out += ["Launches below one program per SM somewhere above: "
            + (", ".join(f"`{k}`" for k in short) if short else "none") + ".", ""]
    return out
