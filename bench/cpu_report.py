"""The CPU section of docs/performance.md, rendered from one stored CPU-suite run.

Every number comes from the run's JSON (bench.cpu_suite); rendering never measures. The CPU
section has its own tables and chart: CPU and GPU numbers never share one.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import plots
from bench.costs import markdown_table
from bench.cpu_cases import PROVIDERS

# The goal for the default layer on CPU: within 10% of the paper's formulation, in time
# (forward and forward+backward) and in a training step's peak memory.
GOAL_RATIO = 1.10
PASS_NAMES = {"forward": "forward", "forward_backward": "fwd+bwd", "train_step": "train step"}
MIB = 2**20
MEMORY_RATIOS = (("default", "paper"), ("default", "static"))


def _ratio(summary: dict) -> str:
    return f"{summary['median']:.2f} [{summary['p20']:.2f}-{summary['p80']:.2f}]"


def _latency(summary: dict) -> str:
    return f"{summary['median']:.1f} [{summary['p20']:.1f}-{summary['p80']:.1f}]"


def memory_by_key(record: dict) -> dict[tuple[str, str, str], int]:
    """{(case, pass, provider): extra bytes} of the run's memory rows."""
    return {(r["case"], r["pass"], r["provider"]): r["extra_bytes"] for r in record["memory"]}


def memory_ratio(memory: dict, case: str, pass_: str, top: str, bottom: str) -> float | None:
    """Extra bytes of ``top`` over those of ``bottom``, or None when either is missing or 0."""
    high, low = memory.get((case, pass_, top)), memory.get((case, pass_, bottom))
    return high / low if high is not None and low else None


def provenance(record: dict, source: Path) -> str:
    env, settings = record["environment"], record["settings"]
    dirty = " (uncommitted changes)" if env["git_dirty"] else ""
    load = env.get("load_average")
    end = record.get("load_average_end")
    lines = [
        f"- CPU: **{env['cpu_model']}**, {env['usable_cpus']} usable of "
        f"{env.get('logical_cpus')} logical CPUs, **{env['torch_threads']} torch threads**",
        f"- date (UTC): {record['created_utc']}",
        f"- commit: `{env['git_commit']}`{dirty}",
        f"- torch {env['torch']}, triton {env['triton']}, numpy {env['numpy']}, "
        f"Python {env['python']}, {env.get('platform')}",
        f"- timing: {settings['warmup']} warm-up call(s) of each provider, then interleaved "
        f"rounds (one call of each, order rotated) for {settings['budget_s']:g} s per layer "
        f"measurement and {settings['train_budget_s']:g} s for the training step, "
        f"{settings['min_rounds']} to {settings['max_rounds']} rounds",
        f"- load average (1, 5, 15 min) at start {load}, at end {end}: other work on the "
        "machine slows both sides of a round's ratio, less so the ratio itself",
        f"- source: `{source}`",
    ]
    return "\n".join(lines)


def timing_table(record: dict) -> str:
    rows = []
    for row in record["timings"]:
        latency, ratios = row["latency_ms"], row["ratios"]
        goal = "yes" if ratios["default/paper"]["median"] <= GOAL_RATIO else "no"
        rows.append([row["case"], PASS_NAMES[row["pass"]], str(row["rounds"]),
                     *(_latency(latency[p]) for p in PROVIDERS),
                     _ratio(ratios["default/paper"]), goal, _ratio(ratios["default/static"]),
                     _ratio(ratios["paper/static"])])
    headers = ["case", "pass", "rounds", "paper ms", "default ms", "static ms", "default/paper",
               f"<= {GOAL_RATIO:.2f}", "default/static", "paper/static"]
    return markdown_table(headers, rows)


def memory_table(record: dict) -> str:
    memory = memory_by_key(record)
    rows = []
    for case, pass_ in dict.fromkeys((r["case"], r["pass"]) for r in record["memory"]):
        cells = [case, PASS_NAMES[pass_]]
        for provider in PROVIDERS:
            extra = memory.get((case, pass_, provider))
            cells.append("-" if extra is None else f"{extra / MIB:.1f}")
        for top, bottom in MEMORY_RATIOS:
            ratio = memory_ratio(memory, case, pass_, top, bottom)
            cells.append("-" if ratio is None else f"{ratio:.2f}")
        rows.append(cells)
    headers = ["case", "pass", "paper MiB", "default MiB", "static MiB", "default/paper",
               "default/static"]
    return markdown_table(headers, rows)


def summary(record: dict) -> str:
    """One paragraph: the default layer against the goal, in time and in memory."""
    sentences = []
    for pass_ in ("forward", "forward_backward", "train_step"):
        medians = [r["ratios"]["default/paper"]["median"] for r in record["timings"]
                   if r["pass"] == pass_]
        if medians:
            span = f"{min(medians):.2f}" if len(medians) == 1 else \
                f"{min(medians):.2f} to {max(medians):.2f}"
            sentences.append(f"{PASS_NAMES[pass_]}: default/paper {span}")
    statics = [r["ratios"]["paper/static"]["median"] for r in record["timings"]]
    if statics:
        sentences.append(f"the paper's layer costs {min(statics):.2f} to {max(statics):.2f} "
                         "times a static nn.Conv2d")
    memory = memory_by_key(record)
    for case, kind in ((name, c["kind"]) for name, c in record["cases"].items()):
        ratio = memory_ratio(memory, case, "train_step", "default", "paper")
        if kind == "train" and ratio is not None:
            sentences.append(f"{case} peak memory default/paper {ratio:.2f}")
    return (f"Median per-round ratios (goal: default/paper <= {GOAL_RATIO:.2f}) - "
            + "; ".join(sentences) + ".")


def section(record: dict, source: Path, markdown: Path, images: Path | None) -> str:
    """The CPU section's markdown; writes its chart under ``images`` (none when it is None)."""
    env = record["environment"]
    parts = [
        f"## CPU: {env['cpu_model']}, {env['torch_threads']} threads",
        "Measured by `python -m bench` without a GPU (bench/cpu_suite.py), a separate run from "
        "any GPU numbers above. `paper` is the paper's formulation "
        "(`triton_nsr.reference.NSRConv2d`: one grouped `F.conv2d` over the batch), `default` "
        "is `triton_nsr.NSRConv2d` with `backend='auto'` (what a user of this CPU gets), "
        "`static` is an `nn.Conv2d` of the same channels and kernel. Layers: batch 16, 48x48, "
        "k=4, d=16, 3x3, float32; forward under `no_grad`, forward+backward with every "
        "gradient. Times are medians in ms with the 20th-80th percentiles; each ratio is taken "
        "between calls of the same round, then summarised the same way.",
        provenance(record, source),
        summary(record),
        "### Time",
        "`rounds`: interleaved rounds timed; `paper ms`, `default ms`, `static ms`: median "
        "milliseconds per call [20th-80th percentile]; `default/paper`, `default/static`, "
        "`paper/static`: median per-round time ratios [20th-80th percentile]; "
        f"`<= {GOAL_RATIO:.2f}`: whether the median default/paper ratio meets the goal of "
        f"{GOAL_RATIO:.2f}.",
        timing_table(record),
    ]
    if record["memory"]:
        parts += ["### Peak memory",
                  "Resident memory a call needs above the idle process holding its model and "
                  "inputs (VmHWM minus VmRSS, in a child process; see docs/design.md).",
                  memory_table(record)]
    else:
        parts += ["### Peak memory", f"Peak memory: {record['memory_note']}."]
    memory = memory_by_key(record)
    memory_ratios = {
        f"{top} / {bottom}": [memory_ratio(memory, r["case"], r["pass"], top, bottom)
                              for r in record["timings"]]
        for top, bottom in MEMORY_RATIOS
    } if memory else {}
    chart = (plots.cpu_ratio_chart(record, images, memory_ratios) if images is not None
             else None)
    if chart is not None:
        relative = Path(os.path.relpath(chart, markdown.parent)).as_posix()
        parts.append(f"![CPU ratios]({relative})")
    return "\n\n".join(parts)
