"""One JSON file per run: what ran, where, on which commit, and every measurement.

Schema (version 1)::

    {
      "schema": 1,
      "created_utc": "2026-01-01T12:00:00+00:00",
      "environment": {"device_type", "device_name", "torch", "triton", "cuda", "cudnn",
                      "python", "platform", "git_commit", "git_dirty"},
      "settings": {"repeats", "warmup", "precisions", "layouts", "providers", ...},
      "peaks": {"matmul_tflops": {precision: float}, "copy_gbps": float, ...},
      "workloads": {name: Workload.as_dict() | EndToEnd.as_dict()},
      "measurements": [ {MEASUREMENT_KEYS...}, ... ],
      "kernel_check": [ {"name", "status", "max_abs_error", "message"}, ... ]   (optional)
    }
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

SCHEMA_VERSION = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Where a user's runs go, with the page rendered from them: ignored by git, so measuring
# leaves the checkout clean (the committed report changes only through `make report`).
LOCAL_DIR = RESULTS_DIR / "local"
REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_KEYS = ("schema", "created_utc", "environment", "settings", "peaks", "workloads",
            "measurements")
ENVIRONMENT_KEYS = ("device_type", "device_name", "torch", "triton", "cuda", "git_commit")
MEASUREMENT_KEYS = (
    "workload", "provider", "part", "precision", "layout", "pass", "status", "message",
    "latency_ms", "peak_memory_bytes", "flops_analytic", "flops_counted", "bytes_analytic",
    "tflops", "gbps", "roofline_fraction",
)
STATUSES = ("ok", "skipped", "error")


def git_commit() -> tuple[str, bool]:
    """(HEAD commit, whether the work tree has uncommitted changes); 'unknown' outside git.

    ``BENCH_GIT_COMMIT`` names the commit instead, for a copied work tree whose git metadata is
    not the tree's (a GPU machine sent the checkout with an older .git): the caller vouches for
    a clean tree at that commit.
    """
    named = os.environ.get("BENCH_GIT_COMMIT")
    if named:
        return named, False
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO_ROOT, check=True, capture_output=True,
                                text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(status.strip())


def step_parser(doc: str, budget_s: float, output_required: bool = True
                ) -> argparse.ArgumentParser:
    """The command line the make gpu steps after the lease share (bench.gpu.diagnose,
    bench.gpu.candidates, bench.gpu.splits, bench.gpu.layer_probe): --output-dir, --budget-s
    (default ``budget_s``) and --device (cuda where there is one)."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=output_required)
    parser.add_argument("--budget-s", type=float, default=budget_s)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def row_lines(rows: list[dict], head, measured) -> str:
    """A step's summary: per row ``head(row)``, then ``measured(row)`` for a measured row, else
    its status and reason (its message or error)."""
    lines = []
    for row in rows:
        if row["status"] == "measured":
            lines.append(f"{head(row)} {measured(row)}")
        else:
            reason = row.get("message") or row.get("error") or ""
            lines.append(f"{head(row)} {row['status']} {reason}".rstrip())
    return "\n".join(lines)


def run_step(argv, doc: str, budget_s: float, name: str, measure, summary) -> int:
    """main() of a make gpu step that measures rows (bench.gpu.splits, bench.gpu.candidates):
    parse the step's command line, log the JIT's compiles under ``name``, run
    ``measure(output_dir, budget_s, device)``, print ``summary(record)``; 1 when a row failed."""
    from bench.gpu import jit_log

    args = step_parser(doc, budget_s).parse_args(argv)
    jit_log.install(name)
    record = measure(args.output_dir, args.budget_s, args.device)
    print(summary(record))
    return int(any(row["status"] == "error" for row in record["rows"]))


def environment(device: str) -> dict:
    """Device, library versions and commit of this process."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit, dirty = git_commit()
    on_cuda = device == "cuda"
    return {
        "device_type": device,
        "device_name": torch.cuda.get_device_name() if on_cuda else platform.processor()
        or platform.machine(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda if on_cuda else None,
        "cudnn": torch.backends.cudnn.version() if on_cuda else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def new_run(device: str, settings: dict, peaks: dict, workloads: dict) -> dict:
    """An empty run record; the harness appends to its 'measurements'."""
    return {
        "schema": SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(device),
        "settings": settings,
        "peaks": peaks,
        "workloads": workloads,
        "measurements": [],
    }


def validate(run: dict) -> dict:
    """Return ``run`` if it follows the schema, else raise ValueError saying what is wrong."""
    missing = [key for key in RUN_KEYS if key not in run]
    if missing:
        raise ValueError(f"run is missing {missing}")
    if run["schema"] != SCHEMA_VERSION:
        raise ValueError(f"schema {run['schema']} is not {SCHEMA_VERSION}")
    missing = [key for key in ENVIRONMENT_KEYS if key not in run["environment"]]
    if missing:
        raise ValueError(f"environment is missing {missing}")
    for index, row in enumerate(run["measurements"]):
        missing = [key for key in MEASUREMENT_KEYS if key not in row]
        if missing:
            raise ValueError(f"measurement {index} is missing {missing}")
        if row["status"] not in STATUSES:
            raise ValueError(f"measurement {index} has status {row['status']!r}")
        if row["workload"] not in run["workloads"]:
            raise ValueError(f"measurement {index} names unknown workload {row['workload']!r}")
        if row["status"] == "ok" and not {"median", "p20", "p80"} <= set(row["latency_ms"]):
            raise ValueError(f"measurement {index} is ok but has no latency quantiles")
    return run


def default_path(run: dict, directory: Path = RESULTS_DIR) -> Path:
    """bench/results/<date>_<device>_<commit>.json, e.g. 20260101T120000_cuda_1a2b3c4.json."""
    stamp = run["created_utc"].replace("-", "").replace(":", "")[:15]
    env = run["environment"]
    return directory / f"{stamp}_{env['device_type']}_{env['git_commit'][:7]}.json"


def write(run: dict, path: Path) -> Path:
    validate(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=1) + "\n")
    return path


def load(path: Path) -> dict:
    return validate(json.loads(Path(path).read_text()))


def newest(directory: Path = RESULTS_DIR, device_type: str = "cuda") -> tuple[Path, dict] | None:
    """The most recent valid run on ``device_type`` under ``directory``, or None.

    Files that do not parse or validate are passed over: they are not results to render.
    """
    runs = []
    for path in Path(directory).glob("*.json"):
        try:
            run = load(path)
        except (ValueError, OSError):
            continue
        if run["environment"]["device_type"] == device_type:
            runs.append((run["created_utc"], path, run))
    if not runs:
        return None
    _, path, run = max(runs, key=lambda item: item[0])
    return path, run
