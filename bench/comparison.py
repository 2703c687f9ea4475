"""The comparison a user makes, rendered from one stored run: eager and CUDA-graphed, wall and
GPU-busy time side by side, and the targets of the next GPU run, met or missed.

Wall time is from a synchronised start, GPU-busy time the profiler's kernel time, host time
their difference (bench/timing.py); rows measured before those columns existed show wall only.
Nothing here measures anything.
"""

from __future__ import annotations

from bench.costs import markdown_table

# The providers compared, eager and CUDA-graphed (bench/providers.py, bench/end_to_end.py).
LAYER_PROVIDERS = (("static_conv", "static_conv_graphed"), ("paper", "paper_graphed"),
                   ("triton_nsr", "triton_nsr_graphed"))
JOB_PROVIDERS = (("static", "static_graphed"), ("paper", "paper_graphed"),
                 ("triton_nsr", "triton_nsr_graphed"))
TARGET_LAYERS = ("W1-expand", "W1-reduce", "W2", "W4")
TARGET_CONFIG = ("bf16", "channels_last")
TRAIN_JOB = "E2E-train"


def _row(run: dict, **match) -> dict | None:
    for row in run["measurements"]:
        if row["status"] == "ok" and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cells(row: dict | None) -> list[str]:
    if row is None:
        return ["-", "-", "-"]
    return [_ms(row["latency_ms"]["median"]), _ms(row.get("gpu_busy_ms")),
            _ms(row.get("host_ms"))]


def comparison_table(run: dict) -> str | None:
    """Per layer, pass and provider: wall, GPU-busy and host ms, eager and graphed; then the
    training step. None when the run has no graphed or profiled rows."""
    if not any(row.get("gpu_busy_ms") is not None or row["provider"].endswith("_graphed")
               for row in run["measurements"]):
        return None
    table = []
    for workload in [*TARGET_LAYERS, "W3", TRAIN_JOB]:
        job = workload == TRAIN_JOB
        providers = JOB_PROVIDERS if job else LAYER_PROVIDERS
        configs = [("bf16", "channels_last")] if job else [TARGET_CONFIG, ("tf32", "nchw")]
        for precision, layout in configs:
            for pass_ in ("forward", "forward_backward"):
                for eager, graphed in providers:
                    match = dict(workload=workload, precision=precision, layout=layout)
                    match["pass"] = pass_
                    rows = [_row(run, provider=eager, **match),
                            _row(run, provider=graphed, **match)]
                    if rows == [None, None]:
                        continue
                    table.append([workload, f"{precision} {layout}", pass_, eager,
                                  *_cells(rows[0]), *_cells(rows[1])])
    if not table:
        return None
    return markdown_table(["workload", "config", "pass", "provider", "eager wall ms",
                           "eager GPU ms", "eager host ms", "graphed wall ms",
                           "graphed GPU ms", "graphed host ms"], table)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _miss_reason(row: dict) -> str:
    """Where a missed layer's time goes, from the row's own split."""
    if row.get("gpu_busy_ms") is None:
        return ""
    host, busy = row["host_ms"], row["gpu_busy_ms"]
    return f"; host {host:.3f} ms, GPU {busy:.3f} ms: the {'host' if host > busy else 'GPU'}"


def targets(run: dict) -> list[list[str]]:
    """[target, measured, verdict] rows for the targets this run has the rows of."""
    rows = []
    precision, layout = TARGET_CONFIG
    for workload in TARGET_LAYERS:
        for pass_ in ("forward", "forward_backward"):
            match = dict(workload=workload, precision=precision, layout=layout)
            match["pass"] = pass_
            ours = _row(run, provider="triton_nsr", **match)
            static = _row(run, provider="static_conv", **match)
            if ours is None or static is None:
                continue
            if ours.get("host_ms") is not None and static.get("host_ms"):
                ratio = ours["host_ms"] / static["host_ms"]
                rows.append([f"{workload} {pass_}: host time <= 3x the static conv's",
                             f"{ratio:.2f}x ({ours['host_ms']:.3f} vs "
                             f"{static['host_ms']:.3f} ms)", _verdict(ratio <= 3)])
            limit = 2.0 if pass_ == "forward" else 1.5
            wall = ours["latency_ms"]["median"] / static["latency_ms"]["median"]
            rows.append([f"{workload} {pass_}: eager wall <= {limit}x the static conv's",
                         f"{wall:.2f}x" + (_miss_reason(ours) if wall > limit else ""),
                         _verdict(wall <= limit)])
            if pass_ == "forward_backward" and ours.get("gpu_busy_ms") is not None \
                    and static.get("gpu_busy_ms"):
                busy = ours["gpu_busy_ms"] / static["gpu_busy_ms"]
                rows.append([f"{workload} forward_backward: GPU time <= 2.5x the static "
                             "conv's", f"{busy:.2f}x", _verdict(busy <= 2.5)])
    train = dict(workload=TRAIN_JOB, precision="bf16", layout="channels_last")
    train["pass"] = "forward_backward"
    ours, paper = (_row(run, provider="triton_nsr_graphed", **train),
                   _row(run, provider="paper_graphed", **train))
    if ours is not None and paper is not None:
        speedup = paper["latency_ms"]["median"] / ours["latency_ms"]["median"]
        rows.append(["graphed WDSR-NSR training step >= 1.5x faster than the paper's graphed "
                     "step", f"{speedup:.2f}x", _verdict(speedup >= 1.5)])
    w3 = dict(workload="W3", precision=precision, layout=layout)
    w3["pass"] = "forward"
    ours, paper, static = (_row(run, provider=p, **w3)
                           for p in ("triton_nsr", "paper", "static_conv"))
    if ours is not None and paper is not None and static is not None:
        mine = ours["latency_ms"]["median"]
        speedup = paper["latency_ms"]["median"] / mine
        rows.append(["W3 forward >= 3.5x faster than the paper's layer", f"{speedup:.2f}x",
                     _verdict(speedup >= 3.5)])
        rows.append(["W3 forward below the static conv", f"{mine:.3f} vs "
                     f"{static['latency_ms']['median']:.3f} ms",
                     _verdict(mine < static["latency_ms"]["median"])])
        rows.append(["W3 forward <= 0.45 ms", f"{mine:.3f} ms", _verdict(mine <= 0.45)])
    return rows


def section(run: dict) -> list[str]:
    """The report's parts for this run's comparison and targets; empty without them."""
    parts = []
    table = comparison_table(run)
    if table is not None:
        parts += ["## Eager and CUDA-graphed: wall, GPU-busy and host time",
                  "Wall time from a synchronised start (L2 flushed first), GPU-busy time from "
                  "the profiler (the kernels' device time), host time their difference: what "
                  "the GPU waited for. Graphed: torch.compile(mode=\"reduce-overhead\"), "
                  "replayed as CUDA graphs.", table]
    rows = targets(run)
    if rows:
        parts += ["## Targets of this run", "Each as it was set beside the measurements it "
                  "names (docs/design.md); a miss says where the time goes.",
                  markdown_table(["target", "measured", "verdict"], rows)]
    return parts
