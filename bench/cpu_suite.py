"""The CPU suite: the paper's layer, the default layer and a static conv timed side by side.

For each case (W1-expand, W1-reduce and W2 at batch 16, forward and forward+backward, and one
WDSR-NSR training step) the three providers of :mod:`bench.cpu_cases` are built on the same
parameters and inputs, warmed up, then timed in interleaved rounds: one call of each per round,
the order rotated from round to round, with torch's thread count fixed for the whole run. Every
ratio (default/paper, default/static, paper/static) is taken within a round, so a slow spell on
a shared machine slows both sides of it; we quote the median ratio with its 20th-80th
percentiles. Peak memory is measured in a child process (:mod:`bench.cpu_memory`).

One JSON file per run, ``bench/results/<UTC date>_cpu-suite_<commit>.json``::

    {
      "schema": 1, "kind": "cpu_suite", "created_utc": "2026-01-01T12:00:00+00:00",
      "environment": {"device_type": "cpu", "cpu_model", "logical_cpus", "usable_cpus",
                      "torch_threads", "torch", "triton", "numpy", "python", "platform",
                      "git_commit", "git_dirty", "triton_interpret", "load_average"},
      "settings": {CpuSettings fields},
      "load_average_end": [1, 5, 15 minute load averages when the run ended] or null,
      "cases": {name: case dict (kind 'layer' or 'train')},
      "timings": [{"case", "pass", "rounds", "latency_ms": {provider: summary},
                   "ratios": {"default/paper" | "default/static" | "paper/static": summary},
                   "samples_ms": {provider: [ms of each round's call]}}],
      "memory": [{"case", "provider", "pass", "baseline_bytes", "peak_bytes", "extra_bytes"}],
      "memory_note": null or why memory was not measured
    }

where a summary is {"median", "p20", "p80", "min", "n"} (bench.timing.summarize).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
import torch

from bench import cpu_cases, cpu_memory
from bench.results import RESULTS_DIR, git_commit
from bench.timing import summarize

SCHEMA_VERSION = 1
KIND = "cpu_suite"
RATIOS = {"default/paper": ("default", "paper"), "default/static": ("default", "static"),
          "paper/static": ("paper", "static")}
RUN_KEYS = ("schema", "kind", "created_utc", "environment", "settings", "cases", "timings",
            "memory", "memory_note", "load_average_end")
ENVIRONMENT_KEYS = ("device_type", "cpu_model", "usable_cpus", "torch_threads", "torch",
                    "triton", "numpy", "python", "git_commit", "git_dirty")
SUMMARY_KEYS = ("median", "p20", "p80", "min", "n")
MEMORY_KEYS = ("case", "provider", "pass", "baseline_bytes", "peak_bytes", "extra_bytes")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), or os.cpu_count() where that is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CpuSettings:
    """How the suite times: ``warmup`` untimed calls of each provider, then interleaved rounds
    until ``budget_s`` seconds have passed (``train_budget_s`` for training steps), at least
    ``min_rounds`` and at most ``max_rounds`` of them, on ``threads`` torch threads.

    The CLI's default ``threads`` is torch's own default (what a user gets)."""

    threads: int
    warmup: int = 1
    min_rounds: int = 5
    max_rounds: int = 200
    budget_s: float = 4.0
    train_budget_s: float = 16.0
    measure_memory: bool = True

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        for name in ("threads", "min_rounds", "max_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be at least 0, got {self.warmup}")
        if self.max_rounds < self.min_rounds:
            raise ValueError(f"max_rounds ({self.max_rounds}) is below min_rounds "
                             f"({self.min_rounds})")
        for name in ("budget_s", "train_budget_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    # Read from the installed metadata: importing triton here would fix TRITON_INTERPRET.
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Where the run happens: CPU, threads, versions, commit."""
    commit, dirty = git_commit()
    return {
        "device_type": "cpu",
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        # Other work on a shared machine shows here; the ratios are taken within rounds.
        "load_average": _load_average(),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def interleaved(fns: dict[str, Callable[[], object]], settings: CpuSettings,
                budget_s: float) -> dict[str, list[float]]:
    """Milliseconds of each call of each function, timed in rounds of one call each.

    Each round starts one function later than the previous one, so no provider always runs
    first (after the others have warmed caches) or last.
    """
    names = list(fns)
    for _ in range(settings.warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = perf_counter()
    rounds = 0
    while rounds < settings.max_rounds and (rounds < settings.min_rounds
                                            or perf_counter() - start < budget_s):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            began = perf_counter()
            fns[name]()
            samples[name].append(1e3 * (perf_counter() - began))
        rounds += 1
    return samples


def timing_row(case: cpu_cases.Case, pass_: str, samples: dict[str, list[float]]) -> dict:
    """Latency summaries per provider and the summaries of the per-round ratios."""
    ratios = {}
    for label, (top, bottom) in RATIOS.items():
        per_round = np.asarray(samples[top]) / np.asarray(samples[bottom])
        ratios[label] = summarize(per_round.tolist())
    return {"case": case.name, "pass": pass_, "rounds": len(samples["paper"]),
            "latency_ms": {name: summarize(times) for name, times in samples.items()},
            "ratios": ratios, "samples_ms": samples}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(cases: list[cpu_cases.Case], settings: CpuSettings,
        progress: Callable[[str], None] = _progress) -> dict:
    """Measure ``cases`` (memory first, in a child; then timing here); return the run dict.

    Raises RuntimeError when TRITON_INTERPRET=1: 'auto' would then mean the interpreter, not
    what a user of this CPU gets.
    """
    settings.check()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 makes backend='auto' run the Triton interpreter; "
                           "unset it to measure what a CPU user gets")
    torch.set_num_threads(settings.threads)
    record = {
        "schema": SCHEMA_VERSION,
        "kind": KIND,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "environment": environment(),
        "settings": asdict(settings),
        "cases": {case.name: cpu_cases.case_dict(case) for case in cases},
        "timings": [],
        "memory": [],
        "memory_note": None,
        "load_average_end": None,
    }
    jobs = [(cpu_cases.case_dict(case), provider, pass_) for case in cases
            for pass_ in cpu_cases.case_passes(case) for provider in cpu_cases.PROVIDERS]
    unavailable = cpu_memory.available()
    if not settings.measure_memory:
        record["memory_note"] = "not measured (asked not to)"
    elif unavailable:
        record["memory_note"] = f"not measured: {unavailable}"
    else:
        progress(f"peak memory of {len(jobs)} calls in a child process")
        record["memory"] = cpu_memory.measure(jobs, settings.threads)
    for case in cases:
        is_train = isinstance(case, cpu_cases.TrainStep)
        for pass_ in cpu_cases.case_passes(case):
            progress(f"timing {case.name} {pass_} ({settings.threads} threads)")
            fns = {provider: cpu_cases.build(case, provider, pass_)
                   for provider in cpu_cases.PROVIDERS}
            budget = settings.train_budget_s if is_train else settings.budget_s
            record["timings"].append(timing_row(case, pass_, interleaved(fns, settings,
                                                                         budget)))
            del fns
    record["load_average_end"] = _load_average()
    return validate(record)


def _missing(keys, mapping: dict, where: str) -> None:
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ValueError(f"{where} is missing {missing}")


def validate(record: dict) -> dict:
    """Return ``record`` if it follows the schema above, else raise ValueError saying what is
    wrong."""
    _missing(RUN_KEYS, record, "run")
    if record["kind"] != KIND or record["schema"] != SCHEMA_VERSION:
        raise ValueError(f"not a {KIND} run of schema {SCHEMA_VERSION}: kind "
                         f"{record['kind']!r}, schema {record['schema']!r}")
    _missing(ENVIRONMENT_KEYS, record["environment"], "environment")
    for index, row in enumerate(record["timings"]):
        where = f"timing {index}"
        _missing(("case", "pass", "rounds", "latency_ms", "ratios", "samples_ms"), row, where)
        if row["case"] not in record["cases"]:
            raise ValueError(f"{where} names unknown case {row['case']!r}")
        _missing(cpu_cases.PROVIDERS, row["latency_ms"], f"{where} latency_ms")
        _missing(RATIOS, row["ratios"], f"{where} ratios")
        for label, summary in [*row["latency_ms"].items(), *row["ratios"].items()]:
            _missing(SUMMARY_KEYS, summary, f"{where} {label}")
    for index, row in enumerate(record["memory"]):
        _missing(MEMORY_KEYS, row, f"memory {index}")
        if row["case"] not in record["cases"]:
            raise ValueError(f"memory {index} names unknown case {row['case']!r}")
    return record


def default_path(record: dict, directory: Path = RESULTS_DIR) -> Path:
    """<directory>/<date>_cpu-suite_<commit>.json, e.g. 20260101T120000_cpu-suite_1a2b3c4.json."""
    stamp = record["created_utc"].replace("-", "").replace(":", "")[:15]
    return directory / f"{stamp}_cpu-suite_{record['environment']['git_commit'][:7]}.json"


def write(record: dict, path: Path) -> Path:
    validate(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load(path: Path) -> dict:
    return validate(json.loads(Path(path).read_text()))


def newest(directory: Path = RESULTS_DIR) -> tuple[Path, dict] | None:
    """The most recent valid CPU-suite run under ``directory``, or None."""
    found = []
    for path in Path(directory).glob("*_cpu-suite_*.json"):
        try:
            record = load(path)
        except (ValueError, OSError, KeyError, TypeError):
            continue
        found.append((record["created_utc"], path, record))
    if not found:
        return None
    _, path, record = max(found, key=lambda item: item[0])
    return path, record
