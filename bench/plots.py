"""Charts rendered from one stored run (the JSON dict); nothing here measures anything.

Each function writes one PNG under ``directory`` and returns its path, or None when the run
has no data for that chart (for example a run without sweeps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EXTRA = "pip install 'triton_nsr[bench]' (or pip install matplotlib)"

SWEEPS = {
    "sweep-batch": ("batch", "batch size"),
    "sweep-resolution": ("resolution", "height = width (px)"),
    "sweep-k": ("k", "sparsity groups k"),
    "sweep-channels": ("channels", "channels C (C -> C)"),
}


class MissingMatplotlibError(ImportError):
    """The charts need matplotlib, which is not installed; the message says how to get it."""


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on benchmark machines)."""
    try:
        import matplotlib
    except ImportError as error:
        raise MissingMatplotlibError(f"the report's charts need matplotlib: {EXTRA}; "
                                "`python -m bench report --no-charts` renders the tables "
                                "alone") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def is_headline_workload(workload: dict) -> bool:
    """Workloads reported in every table: all but sweep members (W1-W4, tiny, jobs)."""
    return not workload.get("group", "").startswith("sweep-")


def headline(run: dict) -> tuple[str, str]:
    """The run's headline (precision, layout): the first of each it was asked for."""
    settings = run["settings"]
    return settings["precisions"][0], settings["layouts"][0]


def rows(run: dict, **match) -> list[dict]:
    """Measurements with status 'ok' whose fields equal ``match`` ('pass_' matches 'pass')."""
    if "pass_" in match:
        match["pass"] = match.pop("pass_")
    return [r for r in run["measurements"]
            if r["status"] == "ok" and all(r[key] == value for key, value in match.items())]


def speedup(run: dict, row: dict) -> float | None:
    """Paper median / ``row``'s median in the same run and configuration, or None.

    Only whole layers and whole models are compared: a kernel alone does part of the work.
    """
    if row["status"] != "ok" or row["part"] not in ("layer", "static", "model"):
        return None
    paper = rows(run, workload=row["workload"], provider="paper", precision=row["precision"],
                 layout=row["layout"], pass_=row["pass"])
    return paper[0]["latency_ms"]["median"] / row["latency_ms"]["median"] if paper else None


def speedups(run: dict, precision: str, layout: str, pass_: str) -> dict[str, dict[str, float]]:
    """{workload: {provider: speed-up over paper}} for one configuration, paper left out."""
    table: dict[str, dict[str, float]] = {}
    for row in rows(run, precision=precision, layout=layout, pass_=pass_):
        ratio = speedup(run, row)
        if ratio is not None and row["provider"] != "paper":
            table.setdefault(row["workload"], {})[row["provider"]] = ratio
    return table


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def _errorbar(axis, xs, selected: list[dict], label: str) -> None:
    median = np.array([r["latency_ms"]["median"] for r in selected])
    low = median - np.array([r["latency_ms"]["p20"] for r in selected])
    high = np.array([r["latency_ms"]["p80"] for r in selected]) - median
    axis.errorbar(xs, median, yerr=[low, high], marker="o", capsize=3, label=label)


def latency_vs_flops(run: dict, directory: Path) -> Path | None:
    """Median forward latency (p20-p80 bars) against analytic FLOPs, one series per provider."""
    precision, layout = headline(run)
    selected = rows(run, precision=precision, layout=layout, pass_="forward")
    selected = [r for r in selected if r["flops_analytic"]]
    if not selected:
        return None
    figure, axis = _pyplot().subplots(figsize=(7, 5))
    for provider in sorted({r["provider"] for r in selected}):
        mine = sorted((r for r in selected if r["provider"] == provider),
                      key=lambda r: r["flops_analytic"])
        _errorbar(axis, [r["flops_analytic"] for r in mine], mine, provider)
    axis.set(xscale="log", yscale="log", xlabel="analytic forward FLOPs",
             ylabel="latency (ms), median with p20-p80",
             title=f"Latency vs FLOPs ({precision}, {layout}, forward)")
    axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    return _save(figure, directory / "latency_vs_flops.png")


def speedup_chart(run: dict, directory: Path) -> Path | None:
    """Speed-up over the paper's formulation on W1-W4 and the end-to-end jobs, per pass."""
    precision, layout = headline(run)
    main = {name for name, w in run["workloads"].items() if is_headline_workload(w)}
    panels = []
    for pass_ in ("forward", "forward_backward"):
        table = {w: v for w, v in speedups(run, precision, layout, pass_).items() if w in main}
        if table:
            panels.append((pass_, table))
    if not panels:
        return None
    figure, axes = _pyplot().subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, (pass_, table) in zip(axes[0], panels):
        workloads = [w for w in run["workloads"] if w in table]
        providers = sorted({p for ratios in table.values() for p in ratios})
        width = 0.8 / len(providers)
        for index, provider in enumerate(providers):
            values = [table[w].get(provider, np.nan) for w in workloads]
            axis.bar(np.arange(len(workloads)) + index * width, values, width, label=provider)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks(np.arange(len(workloads)) + 0.4 - width / 2, workloads, rotation=30)
        axis.set(ylabel="speed-up over paper (x)", title=f"{pass_} ({precision}, {layout})")
        axis.legend(fontsize=8)
    return _save(figure, directory / "speedup.png")


def sweep_chart(run: dict, group: str, directory: Path) -> Path | None:
    """Median forward latency against the swept quantity of ``group``, one line per provider."""
    precision, layout = headline(run)
    members = {name: w["sweep_value"] for name, w in run["workloads"].items()
               if w.get("group") == group}
    selected = [r for r in rows(run, precision=precision, layout=layout, pass_="forward")
                if r["workload"] in members]
    if not selected:
        return None
    slug, label = SWEEPS[group]
    figure, axis = _pyplot().subplots(figsize=(7, 5))
    for provider in sorted({r["provider"] for r in selected}):
        mine = sorted((r for r in selected if r["provider"] == provider),
                      key=lambda r: members[r["workload"]])
        _errorbar(axis, [members[r["workload"]] for r in mine], mine, provider)
    axis.set(xscale="log", yscale="log", xlabel=label, ylabel="latency (ms)",
             title=f"Latency vs {slug} ({precision}, {layout}, forward)")
    axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    return _save(figure, directory / f"sweep_{slug}.png")


def roofline_chart(run: dict, directory: Path) -> Path | None:
    """Achieved TFLOP/s against arithmetic intensity, under the roofs measured in the run."""
    precision, layout = headline(run)
    selected = [r for r in rows(run, precision=precision, layout=layout) if r["tflops"]]
    peaks = run["peaks"]
    if not selected or precision not in peaks.get("matmul_tflops", {}):
        return None
    compute, bandwidth = peaks["matmul_tflops"][precision], peaks["copy_gbps"]
    intensity = [r["flops_analytic"] / r["bytes_analytic"] for r in selected]
    span = np.logspace(np.log10(min(intensity) / 2), np.log10(max(intensity) * 2), 200)
    figure, axis = _pyplot().subplots(figsize=(7, 5))
    axis.plot(span, np.minimum(compute, span * bandwidth / 1e3), color="black",
              label=f"roof: {compute:.1f} TFLOP/s, {bandwidth:.0f} GB/s (measured)")
    for provider in sorted({r["provider"] for r in selected}):
        mine = [r for r in selected if r["provider"] == provider]
        axis.scatter([r["flops_analytic"] / r["bytes_analytic"] for r in mine],
                     [r["tflops"] for r in mine], label=provider, s=18)
    axis.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / minimum byte)",
             ylabel="achieved TFLOP/s", title=f"Roofline ({precision}, {layout})")
    axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    return _save(figure, directory / "roofline.png")


def render_all(run: dict, directory: Path) -> dict[str, Path]:
    """Every chart the run has data for: {chart name: path}."""
    charts = {
        "latency_vs_flops": latency_vs_flops(run, directory),
        "speedup": speedup_chart(run, directory),
        "roofline": roofline_chart(run, directory),
    }
    for group, (slug, _) in SWEEPS.items():
        charts[f"sweep_{slug}"] = sweep_chart(run, group, directory)
    return {name: path for name, path in charts.items() if path is not None}


def _ratio_points(axis, labels: list[str], summaries: list[dict], offset: float,
                  label: str) -> None:
    median = np.array([s["median"] for s in summaries])
    low = median - np.array([s["p20"] for s in summaries])
    high = np.array([s["p80"] for s in summaries]) - median
    axis.errorbar(np.arange(len(labels)) + offset, median, yerr=[low, high], fmt="o",
                  capsize=4, label=label)


def cpu_ratio_chart(record: dict, directory: Path,
                    memory_ratios: dict[str, list[float | None]]) -> Path | None:
    """A CPU-suite run's ratios: time to the paper's layer, time to a static conv (medians with
    p20-p80 bars) and, when ``memory_ratios`` ({label: one ratio or None per timing row}) has
    any, peak memory; one point per case and pass. CPU runs only."""
    timings = record["timings"]
    if not timings:
        return None
    labels = [f"{row['case']}\n{row['pass'].replace('_', ' ')}" for row in timings]
    panels = 3 if memory_ratios else 2
    figure, axes = _pyplot().subplots(1, panels, figsize=(5.5 * panels, 4.8), squeeze=False)
    axes = axes[0]
    _ratio_points(axes[0], labels, [r["ratios"]["default/paper"] for r in timings], 0.0,
                  "default / paper")
    axes[0].set(ylabel="time ratio (x)", title="default layer / paper's layer")
    for offset, key in ((-0.1, "default/static"), (0.1, "paper/static")):
        _ratio_points(axes[1], labels, [r["ratios"][key] for r in timings], offset,
                      key.replace("/", " / "))
    axes[1].set(ylabel="time ratio (x)", title="NSR layer / static nn.Conv2d")
    if memory_ratios:
        width = 0.8 / len(memory_ratios)
        for index, (label, values) in enumerate(memory_ratios.items()):
            offset = (index - (len(memory_ratios) - 1) / 2) * width
            axes[2].bar(np.arange(len(labels)) + offset,
                        [np.nan if v is None else v for v in values], width, label=label)
        axes[2].set(ylabel="peak memory ratio (x)", title="extra memory of one call")
    for axis in axes:
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.axhline(1.1, color="grey", linewidth=0.8, linestyle="--", label="goal 1.10")
        axis.set_xticks(np.arange(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        axis.legend(fontsize=7)
        axis.grid(True, axis="y", alpha=0.3)
    figure.suptitle(f"CPU: {record['environment']['cpu_model']}, "
                    f"{record['environment']['torch_threads']} threads")
    return _save(figure, directory / "cpu_ratios.png")
