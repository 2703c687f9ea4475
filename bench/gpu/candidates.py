"""The kernel gradient's ranked candidates timed on a GPU, against today's launch.

kernels/inspection/weight_grad_candidates.py ranks schedules of the kernel gradient on CPU (sm_90
compiles and a model of programs x dependent steps, docs/design.md "Kernel-gradient
candidates") and stores, per training shape, today's launch and the three fastest schedules a
launch can force (docs/kernels/weight-grad-lease.json: kernel, tile, warps, stages, pixel
splits). This times each of them in bf16 with a channels_last dy, as the layer launches it
(partial sums not added): the kernel and config forced, the split count forced, three repeat
launches on the same inputs checked bit for bit, the summed partials against the float64
gradient, and the median launch time with L2 flushed. While the budget lasts, every shape's
today and best candidate come first (:func:`in_priority`); the model's time sits beside each
measured one.

    python -m bench.gpu.candidates --output-dir OUT [--budget-s 45]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.results import environment, row_lines, run_step
from bench.timing import Timer

RESULT_FILE = "candidates.json"
WARMUP, REPEATS = 1, 10


def lease_entries(path: Path | None = None) -> tuple[list[dict], dict]:
    """(the stored candidates, {shape name: (batch, in, out, height, width)})."""
    from triton_nsr.kernels.inspection import weight_grad_candidates

    stored = json.loads((path or weight_grad_candidates.LEASE_FILE).read_text())
    shapes = {s.name: (s.batch, s.in_channels, s.out_channels, s.height, s.width)
              for s in weight_grad_candidates.training_shapes()}
    return stored["entries"], shapes


def entry_config(entry: dict):
    """The entry's tile as a triton.Config (forced as is, bench.gpu.diagnose.fixed_config)."""
    import triton

    return triton.Config(dict(entry["tile"]), num_warps=entry["num_warps"],
                         num_stages=entry["num_stages"])


def in_priority(entries: list[dict]) -> list[dict]:
    """Each shape's today and best candidate first (shapes in the file's order), then the
    second candidates, then the third: a short budget still compares every shape."""
    order = {name: i for i, name in enumerate(dict.fromkeys(e["shape"] for e in entries))}
    seen: dict[str, int] = {}
    ranked = []
    for entry in entries:
        index = seen[entry["shape"]] = seen.get(entry["shape"], -1) + 1
        ranked.append(((max(index, 1), order[entry["shape"]], index), entry))
    return [entry for _, entry in sorted(ranked, key=lambda pair: pair[0])]


def measure(output_dir: Path, budget_s: float, device: str, entries=None, shapes=None,
            precision: str = "bf16", layout: str = "channels_last",
            timer: Timer | None = None) -> dict:
    """Time every entry within ``budget_s`` seconds; write and return OUT/candidates.json."""
    from bench.gpu.layer_probe import weight_grad_repeats

    if entries is None:
        entries, shapes = lease_entries()
    timer = timer or Timer(device, WARMUP, REPEATS)
    started = time.perf_counter()
    rows = []
    for entry in in_priority(entries):
        row = {"workload": entry["shape"], "role": entry["role"], "variant": entry["variant"],
               "asked_splits": entry["splits"], "modelled_us": entry["modelled_us"]}
        if time.perf_counter() - started > budget_s:
            rows.append({**row, "status": "not reached"})
            continue
        measured = weight_grad_repeats(shapes[entry["shape"]], precision, layout,
                                       entry["variant"], entry_config(entry), device, timer,
                                       splits=entry["splits"])
        status = "error" if isinstance(measured.get("error"), str) else "measured"
        rows.append({**row, **measured, "status": status})
    record = {"environment": environment(device), "precision": precision, "layout": layout,
              "budget_s": budget_s, "elapsed_s": round(time.perf_counter() - started, 1),
              "rows": rows}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESULT_FILE).write_text(json.dumps(record, indent=1))
    return record


def summary(record: dict) -> str:
    """One line per row: shape, role, kernel, tile, splits, measured and modelled time, the
    repeat check and the error."""
    return row_lines(
        record["rows"],
        lambda row: (f"{row['workload']:>10} {row['role']:>9} {row['variant']:>8} "
                     f"{row.get('config', ''):<38} S={row['asked_splits']:<4}"),
        lambda row: (f"{row['ms'] * 1e3:8.1f} us (model {row['modelled_us']:.1f})  "
                     f"{row['differing_launches']} repeats differ  error {row['error']:.1e}"))


def main(argv: list[str] | None = None) -> int:
    return run_step(argv, __doc__, 45.0, "candidates", measure, summary)


if __name__ == "__main__":
    sys.exit(main())
