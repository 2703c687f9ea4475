"""docs/performance.md rendered from one stored run: tables, charts and the cost paragraph.

Every number on the page is read from the run's JSON; rendering never measures. Without a
stored GPU run the page says so and shows only the analytic costs.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import comparison, consistency, plots
from bench.costs import cost_legend, cost_table, markdown_table
from bench.results import REPO_ROOT
from bench.workloads import Workload, main_workloads

# The criterion the cost paragraph applies to the word 'negligible': the NSR layer's latency
# within this fraction above the static convolution's, measured in the same run.
NEGLIGIBLE_FRACTION = 0.05
DEFAULT_MARKDOWN = REPO_ROOT / "docs" / "performance.md"
DEFAULT_IMAGES = REPO_ROOT / "docs" / "images"


def _layer_workloads(run: dict, headline_only: bool = False) -> dict[str, Workload]:
    """The run's layer workloads (not the end-to-end jobs); without sweeps if headline_only."""
    return {name: Workload(**{**w, "passes": tuple(w["passes"])})
            for name, w in run["workloads"].items()
            if "passes" in w and (plots.is_headline_workload(w) or not headline_only)}


def _latency(row: dict | None, run: dict | None = None) -> str:
    """Median [p20-p80] ms, marked (!) where the run measured the same case twice and the two
    disagree beyond their spread (consistency.measured_twice), or a short reason."""
    if row is None:
        return "-"
    if row["status"] != "ok":
        return consistency.short_reason(row)
    lat = row["latency_ms"]
    mark = ""
    if run is not None and (row["workload"], row["provider"], row["precision"], row["layout"],
                            row["pass"]) in consistency.disagreeing_keys(run):
        mark = " (!)"
    return f"{lat['median']:.3f} [{lat['p20']:.3f}-{lat['p80']:.3f}]{mark}"


def _find(run: dict, **match) -> dict | None:
    found = [r for r in run["measurements"]
             if all(r["pass" if key == "pass_" else key] == value for key, value in match.items())]
    return found[0] if found else None


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _span(low: str, high: str) -> str:
    return low if low == high else f"{low} to {high}"


def _median(run: dict, **match) -> float | None:
    found = plots.rows(run, **match)
    return found[0]["latency_ms"]["median"] if found else None


def provenance(run: dict, source: Path) -> str:
    env, settings = run["environment"], run["settings"]
    dirty = " (uncommitted changes)" if env.get("git_dirty") else ""
    lines = [
        f"- device: **{env['device_name']}** ({env['device_type']})",
        f"- date (UTC): {run['created_utc']}",
        f"- commit: `{env['git_commit']}`{dirty}",
        f"- torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
        f"cuDNN {env.get('cudnn')}, Python {env.get('python')}",
        f"- timing: {settings['warmup']} warm-up calls, then {settings['repeats']} timed "
        "repeats each; medians with the 20th-80th percentile range",
        f"- source: `{source}`",
        f"- kernel check before measuring: {_kernel_check(run)}",
    ]
    if env.get("git_commit_note"):
        lines.append(f"- commit note: {env['git_commit_note']}")
    lines.append(f"- age: {consistency.freshness(run, REPO_ROOT)}")
    failed = [r for r in run.get("smoke", []) if r["status"] == "failed"]
    for precision, layout in sorted({(r["precision"], r["layout"]) for r in failed}):
        cases = [r for r in failed if (r["precision"], r["layout"]) == (precision, layout)]
        inaccurate = [r for r in cases if "over" in consistency.smoke_verdicts(r)[0]]
        unrepeated = [r for r in cases if consistency.smoke_verdicts(r)[1] == "**no**"]
        what = []
        if inaccurate:
            what.append(f"{len(inaccurate)} over the float64 tolerance")
        if unrepeated:
            what.append(f"{len(unrepeated)} wrote different bits on a repeat"
                        + (" (within the tolerance)" if not inaccurate else ""))
        lines.append(f"- **the correctness smoke failed for {precision} {layout}** "
                     f"({'; '.join(what) or 'see the GPU lease section'}): the `triton_nsr` "
                     "timings in that setting are of kernels that did not pass it")
    return "\n".join(lines)


def _kernel_check(run: dict) -> str:
    outcome = run.get("kernel_check")
    if not outcome:
        return "not run"
    return "; ".join(
        f"{r['name']} {r['status']}"
        + ("" if r["max_abs_error"] is None else f" (max abs error {r['max_abs_error']:.1e})")
        for r in outcome
    )


def peaks_table(run: dict) -> str:
    peaks = run["peaks"]
    if not peaks:
        return "Not measured in this run."
    rows = [[f"matmul {p} ({peaks['matmul_size']}^3)", f"{v:.1f} TFLOP/s"]
            for p, v in peaks["matmul_tflops"].items()]
    rows.append([f"device-to-device copy ({peaks['copy_bytes'] / 2**20:.0f} MiB)",
                 f"{peaks['copy_gbps']:.0f} GB/s"])
    return markdown_table(["measured peak", "rate"], rows)


def headline_table(run: dict) -> str:
    """Workload x provider in the headline configuration, forward and forward+backward."""
    precision, layout = plots.headline(run)
    providers = run["settings"]["providers"]
    table = []
    for name in _layer_workloads(run, headline_only=True):
        for provider in providers:
            cells = [name, provider]
            for pass_ in ("forward", "forward_backward"):
                row = _find(run, workload=name, provider=provider, precision=precision,
                            layout=layout, pass_=pass_)
                ok = row is not None and row["status"] == "ok"
                speedup = plots.speedup(run, row) if ok else None
                cells += [_latency(row, run), _number(speedup, ".2f"),
                          _number(row["roofline_fraction"] * 100 if ok else None, ".1f")]
            table.append(cells)
    headers = ["workload", "provider", "forward ms", "x paper", "% roofline",
               "fwd+bwd ms", "x paper", "% roofline"]
    return markdown_table(headers, table)


def full_table(run: dict, workload: str) -> str:
    """Every configuration of one workload: latency, rates, roofline, memory."""
    table = []
    for row in run["measurements"]:
        if row["workload"] != workload:
            continue
        memory = row["peak_memory_bytes"]
        table.append([
            row["provider"], row["precision"], row["layout"], row["pass"],
            _latency(row, run),
            _number(plots.speedup(run, row), ".2f"),
            _number(row["tflops"], ".2f"), _number(row["gbps"], ".0f"),
            _number(row["roofline_fraction"] * 100 if row["roofline_fraction"] else None,
                    ".1f"),
            _number(memory["peak"] / 2**20 if memory else None, ".0f"),
        ])
    headers = ["provider", "precision", "layout", "pass", "ms [p20-p80]", "x paper",
               "TFLOP/s", "GB/s", "% roofline", "peak MiB"]
    return markdown_table(headers, table)


def flop_check_table(run: dict) -> str:
    """Analytic FLOPs next to those torch's FlopCounterMode counts on the reference, counted
    here (on the meta device: shapes only) one sample at a time (providers.count_flops), and
    the count the run stored where it differs (runs before the per-sample count)."""
    from bench import providers
    from bench.workloads import Workload

    precision, layout = plots.headline(run)
    table = []
    seen = set()
    for row in plots.rows(run, precision=precision, layout=layout):
        key = (row["workload"], row["part"], row["pass"])
        if key in seen or row["flops_counted"] is None:
            continue
        seen.add(key)
        fields = {k: v for k, v in run["workloads"][row["workload"]].items()
                  if k in Workload.__dataclass_fields__}
        counted = providers.count_flops(row["part"], Workload(**fields),
                                        row["pass"] == "forward_backward")
        stored = row["flops_counted"]
        table.append([row["workload"], row["part"], row["pass"],
                      f"{row['flops_analytic']:,}", f"{counted:,}",
                      "" if stored == counted else f"{stored:,}"])
    return markdown_table(["workload", "part", "pass", "analytic FLOPs", "counted FLOPs",
                           "stored by the run (grouped count)"], table)


def cost_paragraph(run: dict) -> str:
    """What the run says about the supplementary's 'negligible extra cost' claim."""
    precision, layout = plots.headline(run)
    workloads = _layer_workloads(run, headline_only=True)
    if not workloads:
        return "This run has no layer workloads outside the sweeps to compare."
    analytic = [100 * w.cost().extra_flops_ratio for w in workloads.values()]
    sentences = [
        "The supplementary (section 2) argues that an NSR layer costs a negligible amount "
        "more than a static convolution, counting FLOPs. Analytically, the NSR layers here add "
        f"{_span(f'{min(analytic):.2f}%', f'{max(analytic):.2f}%')} FLOPs over the static "
        "convolution."
    ]
    for provider in ("paper", "paper_compiled", "triton_nsr"):
        overheads = []
        for name in workloads:
            for pass_ in ("forward", "forward_backward"):
                mine = _median(run, workload=name, provider=provider, precision=precision,
                               layout=layout, pass_=pass_)
                floor = _median(run, workload=name, provider="static_conv",
                                precision=precision, layout=layout, pass_=pass_)
                if mine and floor:
                    overheads.append((mine / floor - 1, name, pass_))
        if not overheads:
            continue
        low, high = min(overheads), max(overheads)
        within = sum(o <= NEGLIGIBLE_FRACTION for o, _, _ in overheads)
        span = _span(f"{100 * low[0]:+.1f}% ({low[1]}, {low[2]})",
                     f"{100 * high[0]:+.1f}% ({high[1]}, {high[2]})")
        sentences.append(
            f"Measured in the same run ({precision}, {layout}), the latency of `{provider}` "
            f"relative to the static convolution is {span}; it is within "
            f"{100 * NEGLIGIBLE_FRACTION:.0f}% of the static convolution in {within} of "
            f"{len(overheads)} cases."
        )
    if len(sentences) == 1:
        sentences.append("This run has no pair of NSR and static_conv measurements to compare "
                         "in time.")
    sentences.append(
        f"Here 'negligible' means at most {100 * NEGLIGIBLE_FRACTION:.0f}% extra latency; the "
        "FLOP count alone does not decide it, since latency also depends on how well each "
        "formulation uses the device."
    )
    return " ".join(sentences)


def end_to_end_table(run: dict) -> str | None:
    jobs = [name for name, w in run["workloads"].items() if "kind" in w]
    table = []
    for name in jobs:
        for row in (r for r in run["measurements"] if r["workload"] == name):
            memory = row["peak_memory_bytes"]
            table.append([
                name, row["provider"], row["precision"], _latency(row, run),
                _number(plots.speedup(run, row), ".2f"),
                _number(memory["peak"] / 2**20 if memory else None, ".0f"),
            ])
    if not table:
        return None
    headers = ["job", "provider", "precision", "ms [p20-p80]", "x paper", "peak MiB"]
    return markdown_table(headers, table)


def render(run: dict, source: Path, markdown: Path = DEFAULT_MARKDOWN,
           images: Path | None = DEFAULT_IMAGES, cpu_section: str | None = None) -> Path:
    """Write the charts under ``images`` (none when it is None) and the page at ``markdown``;
    return its path. ``cpu_section`` (bench.cpu_report.section), when given, ends the page."""
    charts = plots.render_all(run, images) if images is not None else {}
    precision, layout = plots.headline(run)
    parts = [
        "# Performance",
        "Rendered by `python -m bench report` from one stored run; every number below comes "
        "from its JSON.",
        provenance(run, source),
        "## Measured peaks (same run)",
        peaks_table(run),
        "## Analytic cost (float32, forward)",
        cost_table(list(_layer_workloads(run, headline_only=True).values())),
        cost_legend(list(_layer_workloads(run, headline_only=True).values())),
        "## Is the extra cost negligible?",
        cost_paragraph(run),
        f"## Headline: {precision}, {layout}",
        "Median latency in ms with the p20-p80 range; `x paper` is the speed-up over the "
        "paper's formulation measured in the same run; `% roofline` is the achieved TFLOP/s as "
        "a share of the roofline at the layer's arithmetic intensity (analytic FLOPs over "
        "minimum bytes), from the peaks measured above.",
        headline_table(run),
        *([consistency.measured_twice_paragraph(run)]
          if consistency.measured_twice_paragraph(run) else []),
        *comparison.section(run),
    ]
    e2e = end_to_end_table(run)
    if e2e:
        parts += ["## End to end (WDSR-NSR x2)", e2e]
    if "lease" in run:
        parts += lease_section(run)
    parts.append("## Charts" if charts else "## Charts\n\nNot rendered with this page.")
    for name, path in charts.items():
        relative = Path(os.path.relpath(path, markdown.parent)).as_posix()
        parts.append(f"![{name}]({relative})")
    parts += ["## FLOPs: analytic vs counted",
              "Counted by `torch.utils.flop_counter.FlopCounterMode` on the plain-PyTorch "
              "version of each part, its per-sample convolution one sample at a time; it "
              "counts matmuls and convolutions only (not pooling, softmax or bias adds), and "
              "forward+backward as three passes. Runs before this count stored the batch-"
              "grouped convolution's: the counter takes a grouped convolution's weight "
              "gradient as ungrouped, `batch` times too many.",
              flop_check_table(run)]
    parts.append("## Every configuration")
    for name, workload in _layer_workloads(run).items():
        parts += [f"### {name}: {workload.description}", full_table(run, name)]
    if cpu_section:
        parts.append(cpu_section)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n\n".join(parts) + "\n")
    return markdown


def lease_section(run: dict) -> list[str]:
    """A GPU lease's account: steps with what they did not reach and why, setup time apart
    from kernel time, the correctness smoke, and every headline ratio."""
    lease = run["lease"]
    steps = []
    for step in lease["steps"]:
        setup = step.get("setup") or {}
        steps.append([step["name"], step["status"], _number(step["seconds"], ".1f"),
                      f"{step['cap_s']:.0f}", f"{step['cases_done']}/{step['cases']}",
                      _number(setup.get("compiles"), "d"), _number(setup.get("compile_s"), ".1f"),
                      _number(setup.get("autotuned"), "d"),
                      _number(setup.get("autotune_bench_s"), ".1f"),
                      step["reason"] + (f" (not reached: {', '.join(step['not_reached'])})"
                                        if step["not_reached"] else "")])
    tuning = lease.get("tuning", {})
    compiles, compile_s = tuning.get("triton_compiles"), tuning.get("triton_compile_s")
    if compiles is None:  # runs that kept only the steps' counts
        counted = [step.get("setup") or {} for step in lease["steps"]]
        compiles = sum(setup.get("compiles") or 0 for setup in counted)
        compile_s = sum(setup.get("compile_s") or 0.0 for setup in counted)
    parts = [
        "## GPU lease",
        f"Budget {lease['budget_s']:.0f} s, used {lease['elapsed_s']:.0f} s "
        f"({lease['scale']} shapes). Triton compiles: {compiles} "
        f"({_number(compile_s, '.1f')} s); shape classes autotuned: "
        f"{tuning.get('autotuned')}; launches from the stored table: "
        f"{tuning.get('table_hits')}.",
        markdown_table(["step", "status", "s", "cap s", "cases", "compiles", "compile s",
                        "autotuned", "autotune bench s", "reason"], steps),
    ]
    smoke_rows = [[r["workload"], r["precision"], r["layout"], r["status"],
                   *consistency.smoke_verdicts(r),
                   consistency.short_reason({**r, "status": ""})[2:] if r["message"] else ""]
                  for r in run.get("smoke", [])]
    if smoke_rows:
        parts += ["### Correctness smoke (fixed configs, float64 reference)",
                  "Two verdicts per case: the worst relative error against float64 within "
                  "the precision's tolerance, and three launches on the same inputs writing the "
                  "same bits.",
                  markdown_table(["workload", "precision", "layout", "status",
                                  "accuracy vs float64", "bitwise repeat", "reason"],
                                 smoke_rows)]
    parts += ["### Ratios in the same run",
              "`paper / triton_nsr` above 1 means triton_nsr is faster; `triton_nsr / static` "
              "is the cost over one static convolution.",
              ratio_table(run)]
    return parts


def ratio_table(run: dict) -> str:
    """triton_nsr against the paper and the static conv, per measured configuration."""
    table = []
    for row in run["measurements"]:
        if row["provider"] != "triton_nsr" or row["status"] != "ok" or row["part"] != "layer":
            continue
        match = {key: row[key] for key in ("workload", "precision", "layout")}
        mine = row["latency_ms"]["median"]
        paper = _median(run, provider="paper", pass_=row["pass"], **match)
        static = _median(run, provider="static_conv", pass_=row["pass"], **match)
        memory = row["peak_memory_bytes"]
        table.append([row["workload"], row["precision"], row["layout"], row["pass"],
                      f"{mine:.3f}", _number(paper / mine if paper else None, ".2f"),
                      _number(mine / static if static else None, ".2f"),
                      _number(memory["peak"] / 2**20 if memory else None, ".0f")])
    return markdown_table(["workload", "precision", "layout", "pass", "triton_nsr ms",
                           "paper / triton_nsr", "triton_nsr / static", "peak MiB"], table)


def render_without_results(directory: Path, markdown: Path = DEFAULT_MARKDOWN,
                           cpu_section: str | None = None) -> Path:
    """The page when no GPU run is stored: it says so and shows the analytic costs, then
    ``cpu_section`` (bench.cpu_report.section) when given."""
    parts = [
        "# Performance",
        f"**No GPU results are stored** in `{directory}`: this page has no GPU measurements. "
        "Run `python -m bench` (or `make bench`) on a machine with a CUDA GPU to measure and "
        "render them here.",
        "## Analytic cost (float32, forward)",
        cost_table(main_workloads()),
        cost_legend(main_workloads()),
    ]
    if cpu_section:
        parts.append(cpu_section)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n\n".join(parts) + "\n")
    return markdown
