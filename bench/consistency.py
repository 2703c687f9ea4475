"""What a reader needs to trust a rendered run: where it disagrees with itself, what failed and
why in a few words, which verdict a smoke case failed, and how old its numbers are.

Rendering never measures; everything here reads the stored run (and, for the age, git).
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

# The workload fields that make two workloads the same layer call.
IDENTITY = ("batch", "in_channels", "out_channels", "height", "width", "k", "d", "kernel_size",
            "padding")
# The code whose changes make a run's numbers stale.
KERNEL_PATHS = ("triton_nsr/kernels", "triton_nsr/layer.py", "triton_nsr/ops.py")


def _identity(run: dict, row: dict) -> tuple | None:
    workload = run["workloads"].get(row["workload"], {})
    if "passes" not in workload:  # an end-to-end job
        return None
    return (tuple(workload.get(field) for field in IDENTITY), row["provider"],
            row["precision"], row["layout"], row["pass"])


def measured_twice(run: dict) -> list[dict]:
    """Cases measured more than once in the run (the same layer call under two workload names:
    a headline workload and a sweep point, say), each with its rows' names, medians and
    p20-p80 ranges, and whether they agree: their ranges overlap."""
    groups = defaultdict(list)
    for row in run["measurements"]:
        if row["status"] != "ok":
            continue
        identity = _identity(run, row)
        if identity is not None:
            groups[identity].append(row)
    found = []
    for (_, provider, precision, layout, pass_), rows in groups.items():
        if len(rows) < 2:
            continue
        low = max(r["latency_ms"]["p20"] for r in rows)
        high = min(r["latency_ms"]["p80"] for r in rows)
        found.append({
            "provider": provider, "precision": precision, "layout": layout, "pass": pass_,
            "workloads": [r["workload"] for r in rows],
            "medians": [r["latency_ms"]["median"] for r in rows],
            "agree": low <= high,
        })
    return found


def disagreeing_keys(run: dict) -> set[tuple]:
    """(workload, provider, precision, layout, pass) of every row in a disagreeing case."""
    return {(workload, case["provider"], case["precision"], case["layout"], case["pass"])
            for case in measured_twice(run) if not case["agree"]
            for workload in case["workloads"]}


def timed_from_a_synchronised_start(run: dict) -> bool:
    """Whether the run was timed by bench/timing.py's synchronised start; those runs also
    record each row's GPU-busy time, which is how they are told apart."""
    return any("gpu_busy_ms" in row for row in run["measurements"])


def measured_twice_paragraph(run: dict) -> str | None:
    cases = measured_twice(run)
    if not cases:
        return None
    bad = [case for case in cases if not case["agree"]]
    if not bad:
        why = ""
    elif timed_from_a_synchronised_start(run):
        why = (" This run was timed from a synchronised start, so the disagreement is the "
               "machine's: another load on the GPU or its host while it ran.")
    else:
        why = (" This run was timed before the synchronised start (bench/timing.py): the clock "
               "started behind the L2 flush, so a varying part of the host time was hidden, "
               "and host-bound cases moved with the host's load.")
    lines = [f"{len(cases)} cases were measured twice in this run, under two workload names (a "
             "headline workload and a sweep point); "
             + (f"**{len(bad)} disagree beyond their spread** (p20-p80 ranges that do not "
                f"overlap), marked `(!)` in the tables.{why}" if bad
                else "all agree within their spread.")]
    for case in bad:
        values = ", ".join(f"{w} {m:.3f} ms" for w, m in zip(case["workloads"],
                                                               case["medians"]))
        lines.append(f"- {case['provider']} {case['precision']} {case['layout']} "
                     f"{case['pass']}: {values}")
    return "\n".join(lines)


def short_reason(row: dict, limit: int = 70) -> str:
    """A failed or skipped row as a few words: its status and the first clause of its
    message without the exception's type (the JSON keeps the whole message)."""
    message = re.sub(r"^[A-Za-z_.]+(Error|Exception): ", "", row.get("message") or "")
    message = message.split("\n")[0].split(". ")[0].split(", but ")[0].strip()
    if len(message) > limit:
        message = message[: limit - 3].rstrip() + "..."
    status = "failed" if row["status"] == "error" else row["status"]
    return f"{status}: {message[:1].lower()}{message[1:]}" if message else status


def smoke_verdicts(row: dict) -> tuple[str, str]:
    """(accuracy against float64, bitwise repeat) of a smoke row: two verdicts, so that a case
    within tolerance that did not repeat is not read as a wrong result."""
    errors, tolerance = row.get("errors") or {}, row.get("tolerance")
    if not errors or tolerance is None:
        accuracy = "-"
    else:
        worst = max(errors.values())
        accuracy = (f"within ({worst:.1e} <= {tolerance:.0e})" if worst <= tolerance
                    else f"**over** ({worst:.1e} > {tolerance:.0e})")
    repeat = {True: "yes", False: "**no**"}.get(row.get("deterministic"), "-")
    return accuracy, repeat


def freshness(run: dict, root: Path) -> str:
    """The run's commit beside this checkout's, with the commits since that changed the
    kernels or the layer's path (git log), or why that is not known."""
    commit = run["environment"].get("git_commit") or ""
    try:
        head = _git(root, "rev-parse", "HEAD").strip()
        log = _git(root, "log", "--oneline", "--no-decorate", f"{commit}..HEAD", "--",
                   *KERNEL_PATHS)
    except (OSError, subprocess.CalledProcessError):
        return f"numbers from `{commit[:12]}`; the history since is not readable here"
    if head.startswith(commit) or commit.startswith(head):
        return f"numbers from `{commit[:12]}`, the commit this page was rendered at"
    changes = [line.split(" ", 1) for line in log.splitlines() if line.strip()]
    if not changes:
        return (f"numbers from `{commit[:12]}`; rendered at `{head[:12]}`, with no change to "
                "the kernels or the layer's path between them")
    listed = "; ".join(f"`{sha}` {title.split(':')[0][:60]}" for sha, title in changes[:8])
    more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
    return (f"numbers from `{commit[:12]}`; rendered at `{head[:12]}`: {len(changes)} "
            f"commits between them changed the kernels or the layer's path ({listed}{more})")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          check=True).stdout
