"""One command that turns a short GPU lease into stored evidence: ``python -m bench lease``.

GPU time comes in short leases (minutes, one command at most 10 of them). The lease runs the
steps of bench/gpu/plan.py in priority order (device and peaks; a correctness smoke; the headline
table; the end-to-end jobs; torch.compile and the sweeps if time remains), each capped at its
share of the budget, and stops cleanly before the budget: no measurement starts after
``budget - reserve``, and a measurement still running at ``budget - reserve / 2`` is stopped by
an alarm. The run file is rewritten after every measurement, so whatever the lease reached is
stored even if the machine goes away; what it did not reach is recorded with the reason.

Files under ``--output-dir`` (a remote run brings back at most 8; this writes 4):

- ``lease.json``: the run, in bench/results' schema, plus 'lease' (steps, reasons, totals) and
  'smoke'; each measurement row has 'setup': Triton compiles and their seconds, autotuning,
  table hits, apart from the kernel times in 'latency_ms'.
- ``lease.log``: the progress lines.
- ``tuned_configs.json``: the committed table of tuned configs with the shape classes autotuned
  in this lease added; commit it as triton_nsr/kernels/tuned_configs.json.
- ``performance.md``: the report rendered from lease.json at the end, tables only (render the
  charts later with ``python -m bench report --input lease.json``).

It needs only the machine's python with torch and triton, and the checkout on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench import hardware, harness, providers, report, results
from bench.gpu import jit_log, plan, smoke
from bench.gpu.setup_time import SetupClock
from bench.workloads import FORWARD, FORWARD_BACKWARD
from triton_nsr.kernels import tuned_configs

RUN_FILE = "lease.json"
LOG_FILE = "lease.log"
TABLE_FILE = "tuned_configs.json"
PAGE_FILE = "performance.md"


class LeaseTimeout(BaseException):
    """Raised by the alarm at the hard deadline; a BaseException so that the harness's
    per-measurement ``except Exception`` records cannot swallow it."""


class _LeaseHarness(harness.Harness):
    """The harness with the lease's checks: stop before the deadline, store every row."""

    def __init__(self, lease: Lease, settings: harness.Settings) -> None:
        super().__init__(settings, lease.log)
        self.lease = lease

    def _report(self, row: dict) -> dict:
        self.lease.add_row(row)
        return super()._report(row)

    def _measure_layer(self, row: dict, provider, inputs, pass_: str) -> None:
        reason = self.lease.stop_reason()
        if reason is not None:
            row.update(status="skipped", message=f"not reached: {reason}")
            return
        with self.lease.timed(row):
            super()._measure_layer(row, provider, inputs, pass_)

    def _job_case(self, job, provider: str) -> dict:
        reason = self.lease.stop_reason()
        pass_ = FORWARD_BACKWARD if job.kind == "train" else FORWARD
        layout = "channels_last" if job.kind == "train" else "nchw"
        if reason is not None:
            return self._report(harness._row(job.name, provider, "model",
                                             self.settings.precisions[0], layout, pass_,
                                             "skipped", f"not reached: {reason}"))
        row = harness._row(job.name, provider, "model", self.settings.precisions[0], layout,
                           pass_)
        with self.lease.timed(row):
            measured = super()._job_case(job, provider)
        measured["setup"] = row["setup"]  # the harness built its own row for the job
        self.lease.store()
        return measured


class Lease:
    """One lease: ``Lease(scale, budget_s, output_dir, device).run()`` returns the run dict."""

    def __init__(self, scale: plan.Scale, budget_s: float, output_dir: Path, device: str,
                 echo=None) -> None:
        if budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {budget_s}")
        self.scale = scale
        self.budget_s = budget_s
        self.reserve_s = plan.reserve_seconds(budget_s)
        self.output_dir = Path(output_dir)
        self.device = device
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.steps = plan.lease_steps(scale)
        self.clock = SetupClock()
        self._start = time.perf_counter()
        self._step_deadline = budget_s
        self._step_name = ""
        self._log = None
        self._cut_rows = 0
        self._broken = None
        self.run_record: dict = {}

    # -- time --------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def stop_reason(self) -> str | None:
        """Why no new measurement may start now, or None."""
        if self._broken is not None:
            return self._broken
        now = self.elapsed()
        if now >= self.budget_s - self.reserve_s:
            return (f"lease budget of {self.budget_s:.0f} s reached ({self.reserve_s:.0f} s "
                    "kept for the last write)")
        if now >= self._step_deadline:
            return f"step '{self._step_name}' reached its cap"
        return None

    @contextlib.contextmanager
    def _alarm(self):
        """Raise LeaseTimeout in the main thread at budget - reserve / 2 (where signals work)."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(
                signal, "setitimer"):
            yield
            return

        def fire(signum, frame):
            raise LeaseTimeout

        previous = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.budget_s - self.reserve_s / 2
                                                 - self.elapsed()))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    @contextlib.contextmanager
    def timed(self, row: dict):
        """Record the setup split of the block in ``row['setup']``; a LeaseTimeout inside
        stores ``row`` as stopped before it propagates."""
        before = self.clock.snapshot()
        try:
            yield
        except LeaseTimeout:
            row.update(status="skipped", message="stopped: the lease budget ran out during "
                                                 "this measurement")
            row["setup"] = self.clock.since(before)
            self.add_row(row)
            raise
        row["setup"] = self.clock.since(before)

    # -- storage -----------------------------------------------------------------------------

    def log(self, line: str) -> None:
        stamped = f"[{self.elapsed():6.1f}s] {line}"
        self.echo(stamped)
        if self._log is not None:
            self._log.write(stamped + "\n")
            self._log.flush()

    def add_row(self, row: dict) -> None:
        if row["status"] == "skipped" and row["message"].startswith(("not reached", "stopped")):
            self._cut_rows += 1
        self.run_record["measurements"].append(row)
        self.store()

    def store(self) -> None:
        """Rewrite lease.json (through a temporary file: a kill never leaves half a file)."""
        record = self.run_record
        record["lease"]["elapsed_s"] = round(self.elapsed(), 2)
        record["lease"]["tuning"] = {**tuned_configs.telemetry.counters(),
                                     "triton_compiles": self.clock.compiles if
                                     self.clock.available else None,
                                     "triton_compile_s": round(self.clock.compile_s, 3) if
                                     self.clock.available else None}
        results.validate(record)
        path = self.output_dir / RUN_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(temporary, path)

    def store_table(self) -> Path:
        table = tuned_configs.merge(tuned_configs.load_table(),
                                    tuned_configs.telemetry.new_entries)
        return tuned_configs.write_table(self.output_dir / TABLE_FILE, table)

    # -- the run -----------------------------------------------------------------------------

    def _settings(self) -> harness.Settings:
        used = []
        for step in self.steps:
            for case in step.cases:
                if case.kind == "layer":
                    used += [p for p in case.providers if p not in used]
        return harness.Settings(
            device=self.device, precisions=[p for p, _ in plan.HEADLINE_CONFIGS],
            layouts=[layout for _, layout in plan.HEADLINE_CONFIGS], providers=used,
            repeats=self.scale.repeats, warmup=self.scale.warmup)

    def _new_record(self, settings: harness.Settings) -> dict:
        catalogue = {}
        for step in self.steps:
            for case in step.cases:
                if case.kind in ("layer", "job"):
                    catalogue[case.target.name] = case.target.as_dict()
        record = results.new_run(self.device, asdict(settings), {}, catalogue)
        record["settings"]["cudnn_benchmark"] = self.device == "cuda"
        record["lease"] = {
            "scale": self.scale.name, "budget_s": self.budget_s, "reserve_s": self.reserve_s,
            "elapsed_s": 0.0, "stopped": None, "device": _device_properties(self.device),
            "steps": [{"name": s.name, "title": s.title, "status": "pending",
                       "cap_s": round(s.cap_fraction * self.budget_s, 1), "cases": len(s.cases),
                       "cases_done": 0, "seconds": None, "reason": "", "not_reached": [],
                       "setup": None} for s in self.steps],
            "tuning": {},
        }
        record["smoke"] = []
        return record

    def run(self) -> dict:
        """Run every step that fits; always leave lease.json, the table and the page."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._start = time.perf_counter()
        settings = self._settings()
        self.run_record = self._new_record(settings)
        with open(self.output_dir / LOG_FILE, "w") as self._log:
            self.log(f"lease: {self.scale.name} shapes on {self.device}, budget "
                     f"{self.budget_s:.0f} s, writing {self.output_dir}")
            self.store()
            jit_log.install("lease")
            self.clock.install()
            try:
                with self._alarm(), hardware.cudnn_benchmark(self.device == "cuda"):
                    bench = _LeaseHarness(self, settings)
                    self._run_steps(bench)
            finally:
                self.clock.uninstall()
                self._finish()
            self._log = None
        return self.run_record

    def _run_steps(self, bench: _LeaseHarness) -> None:
        timed_out = False
        for step, entry in zip(self.steps, self.run_record["lease"]["steps"]):
            self._step_deadline = self.budget_s
            if timed_out or self.stop_reason() is not None:
                reason = self.run_record["lease"]["stopped"] or self.stop_reason()
                entry.update(status="not reached", reason=reason)
                self._not_reached(step.cases, entry, reason)
                continue
            self._step_name = step.name
            self._step_deadline = self.elapsed() + step.cap_fraction * self.budget_s
            entry["status"] = "running"
            self.log(f"step {step.name}: {step.title} (cap {entry['cap_s']:.0f} s)")
            started, before = self.elapsed(), self.clock.snapshot()
            policy = tuned_configs.Policy(
                autotune=step.autotune, max_autotunes=self.scale.max_autotunes,
                warmup_ms=plan.LEASE_AUTOTUNE_WARMUP_MS, rep_ms=plan.LEASE_AUTOTUNE_REP_MS)
            done, partial = 0, False
            try:
                with tuned_configs.use(policy):
                    for case in step.cases:
                        if self.stop_reason() is not None:
                            break
                        cut = self._cut_rows
                        partial = True
                        try:
                            self._run_case(bench, case)
                        finally:
                            self._check_device()
                        # A case whose later rows were cut by the cap is not done.
                        if self._cut_rows > cut:
                            break
                        partial = False
                        done += 1
                entry["status"] = "done" if done == len(step.cases) else "stopped"
                entry["reason"] = "" if done == len(step.cases) else self.stop_reason() or ""
            except LeaseTimeout:
                timed_out = True
                entry.update(status="stopped", reason="the lease budget ran out during a "
                                                      "measurement")
                self.run_record["lease"]["stopped"] = "budget ran out during a measurement"
            # A broken step must not cost the later ones: record it and go on.
            except Exception as error:
                entry.update(status="failed", reason=harness._describe(error))
                self.log(f"step {step.name} failed: {entry['reason']}")
            entry.update(cases_done=done, seconds=round(self.elapsed() - started, 2),
                         setup=self.clock.since(before))
            if done < len(step.cases):
                # An interrupted case stored its own rows; only later cases get rows here.
                self._not_reached(step.cases[done:], entry, entry["reason"],
                                  rows_from=1 if partial else 0)
            why = f"; {entry['reason']}" if entry["reason"] else ""
            self.log(f"step {step.name}: {entry['status']} after {entry['seconds']:.1f} s, "
                     f"{done}/{len(step.cases)} cases{why}")
            self.store()
            self.store_table()
        self._step_deadline = self.budget_s

    def _check_device(self) -> None:
        """After a case: if the CUDA context is broken, stop the lease (:func:`broken_context`)."""
        if self._broken is not None:
            return
        error = broken_context(self.device)
        if error is not None:
            self._broken = (f"the CUDA context is broken ({error}): every later launch in this "
                            "process would fail, so the lease stops here")
            self.run_record["lease"]["stopped"] = self._broken
            self.log(self._broken)

    def _not_reached(self, cases, entry: dict, reason: str, rows_from: int = 0) -> None:
        """Record ``cases`` as not reached: the step lists them, and from ``rows_from`` on
        each gets its rows (or smoke row) saying so."""
        entry["not_reached"] += [case.label() for case in cases]
        for case in cases[rows_from:]:
            if case.kind == "smoke":
                self.run_record["smoke"].append({
                    "workload": case.target.name, "precision": case.precision,
                    "layout": case.layout, "status": "not reached",
                    "message": f"not reached: {reason}"})
            elif case.kind in ("layer", "job"):
                for name in case.providers:
                    for pass_ in case.passes:
                        part = "model" if case.kind == "job" else providers.get(name).part
                        self.run_record["measurements"].append(harness._row(
                            case.target.name, name, part, case.precision, case.layout, pass_,
                            "skipped", f"not reached: {reason}"))
        self.store()

    def _run_case(self, bench: _LeaseHarness, case: plan.Case) -> None:
        if case.kind == "peaks":
            self._peaks(bench)
        elif case.kind == "smoke":
            before = self.clock.snapshot()
            row = smoke.check_case(case.target, case.precision, case.layout, self.device)
            row["setup"] = self.clock.since(before)
            self.run_record["smoke"].append(row)
            self.store()
            worst = max(row["errors"].values(), default=None)
            self.log(f"smoke {case.target.name} {case.precision} {case.layout}: {row['status']}"
                     + (f" (worst relative error {worst:.1e})" if worst is not None else "")
                     + (f" - {row['message']}" if row["message"] else ""))
        elif case.kind == "layer":
            bench.settings.providers = list(case.providers)
            bench.settings.passes = list(case.passes)
            bench._total += case.measurements
            bench._layer_case(case.target, case.precision, case.layout)
        elif case.kind == "job":
            bench.settings.providers = list(case.providers)
            bench._total += case.measurements
            for name in case.providers:
                bench._job_case(case.target, name)

    def _peaks(self, bench: _LeaseHarness) -> None:
        precisions = [p for p, _ in plan.HEADLINE_CONFIGS]
        peaks = hardware.measure_peaks(self.device, precisions, bench.timer)
        bench.peaks = self.run_record["peaks"] = peaks
        self.store()
        self.log("peaks: " + ", ".join(f"{p} matmul {v:.1f} TFLOP/s"
                                       for p, v in peaks["matmul_tflops"].items())
                 + f", copy {peaks['copy_gbps']:.0f} GB/s")

    def _finish(self) -> None:
        """The last writes: run file, table, page. Each failure is logged, none raised."""
        self.run_record["lease"]["elapsed_s"] = round(self.elapsed(), 2)
        for what, write in (("run", self.store), ("table", self.store_table),
                            ("page", self._render)):
            try:
                write()
            except Exception as error:  # the other files still get written
                self.log(f"writing the {what} failed: {harness._describe(error)}")
        self.log(f"lease finished after {self.elapsed():.1f} s of {self.budget_s:.0f} s")

    def _render(self) -> None:
        page = report.render(self.run_record, Path(RUN_FILE), self.output_dir / PAGE_FILE,
                             images=None)
        self.log(f"wrote {page}")


def _device_properties(device: str) -> dict:
    if device != "cuda":
        return {"type": device}
    props = torch.cuda.get_device_properties(0)
    return {"type": device, "name": props.name, "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_bytes": props.total_memory}


def broken_context(device: str) -> str | None:
    """The first line of the error a trivial CUDA op raises, or None when the context works
    (or the device is not CUDA).

    A kernel fault (illegal instruction, illegal memory access, misaligned address) is sticky:
    every later CUDA call in the process raises the same error, so rows measured after it would
    all be error rows that name the wrong culprit.
    """
    if device != "cuda":
        return None
    try:
        torch.cuda.synchronize()
        (torch.ones(1, device="cuda") + 1).cpu()
    except RuntimeError as error:
        return str(error).splitlines()[0][:200]
    return None


def failed(run: dict) -> bool:
    """Whether a smoke case or a step failed (the exit status of ``python -m bench lease``)."""
    return (any(r["status"] == "failed" for r in run.get("smoke", []))
            or any(s["status"] == "failed" for s in run["lease"]["steps"]))
