"""The GPU lease on CPU: a tiny rehearsal in the interpreter, the hard stop, the plan, the
table of tuned configs, and the packaging that lets the lease run from a bare checkout."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import tomllib
import torch

from bench import cli, hardware, plots, report, results
from bench.gpu import lease, plan, smoke
from triton_nsr import functional
from triton_nsr.kernels import conv, tuned_configs

STEP_STATUSES = {"done", "stopped", "not reached", "failed"}


@pytest.fixture
def stored_snapshots(monkeypatch):
    """Every version of lease.json the lease writes, read back right after the write."""
    snapshots = []
    store = lease.Lease.store

    def store_and_read(self):
        store(self)
        snapshots.append(json.loads((self.output_dir / lease.RUN_FILE).read_text()))

    monkeypatch.setattr(lease.Lease, "store", store_and_read)
    return snapshots


@pytest.mark.slow
def test_tiny_lease_stores_every_measurement_and_stops_before_its_budget(tmp_path,
                                                                         stored_snapshots):
    budget = 20.0
    start = time.perf_counter()
    status = cli.main(["lease", "--tiny", "--budget-s", str(budget), "--output-dir",
                       str(tmp_path)])
    took = time.perf_counter() - start
    assert status == 0
    assert took < budget, "the lease must stop before its budget"
    run = results.load(tmp_path / lease.RUN_FILE)
    # No measurement runs past budget - reserve / 2; the last writes fit in the rest.
    assert run["lease"]["elapsed_s"] < budget - run["lease"]["reserve_s"] / 4

    # Incremental: the file was rewritten as rows arrived, each version valid.
    counts = [len(snapshot["measurements"]) for snapshot in stored_snapshots]
    assert counts == sorted(counts) and len(set(counts)) > 5
    for snapshot in stored_snapshots:
        results.validate(snapshot)

    steps = {step["name"]: step for step in run["lease"]["steps"]}
    assert list(steps) == ["device", "smoke", "comparison", "end_to_end", "extras"]
    assert all(step["status"] in STEP_STATUSES for step in steps.values())
    assert steps["device"]["status"] == "done" and run["peaks"]["matmul_tflops"]
    assert any(row["status"] == "passed" for row in run["smoke"])
    assert not any(row["status"] == "failed" for row in run["smoke"])
    # The tiny plan is larger than the budget: what was cut says so, with the reason.
    # (Skipped for what this CPU lacks, not cut: bfloat16 in the interpreter, CUDA graphs.)
    lacking = ("no bfloat16 arithmetic", "CUDA graphs need CUDA")
    cut = [row for row in run["measurements"] if row["status"] == "skipped"
           and not any(reason in row["message"] for reason in lacking)]
    cut += [row for row in run["smoke"] if row["status"] == "not reached"]
    assert cut and all(row["message"].startswith(("not reached: ", "stopped: "))
                       for row in cut)
    assert any(step["not_reached"] for step in steps.values())
    # Setup time is recorded apart from the kernel time of every measured row.
    measured = [row for row in run["measurements"] if row["status"] == "ok"]
    assert any(row["provider"] == "triton_nsr" for row in measured)
    for row in measured:
        assert {"wall_s", "compiles", "autotuned", "table_hits"} <= set(row["setup"])

    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == sorted([lease.RUN_FILE, lease.LOG_FILE, lease.TABLE_FILE, lease.PAGE_FILE])
    page = (tmp_path / lease.PAGE_FILE).read_text()
    assert "## GPU lease" in page and "paper / triton_nsr" in page
    # The full report, charts included, renders from the stored file alone.
    rendered = report.render(run, Path("lease.json"), tmp_path / "page" / "p.md",
                             tmp_path / "page" / "images")
    assert "## Headline: bf16, channels_last" in rendered.read_text()


def test_the_alarm_stops_a_measurement_that_outlasts_the_budget(tmp_path, monkeypatch):
    def endless(workload, precision, layout, device):
        time.sleep(60)

    monkeypatch.setattr(smoke, "check_case", endless)
    start = time.perf_counter()
    budget = 8.0
    run = lease.Lease(plan.Scale.tiny(), budget, tmp_path, "cpu", echo=lambda line: None).run()
    assert time.perf_counter() - start < budget
    steps = {step["name"]: step for step in run["lease"]["steps"]}
    assert steps["smoke"]["status"] == "stopped"
    assert steps["comparison"]["status"] == "not reached"
    assert run["lease"]["stopped"]
    stored = results.load(tmp_path / lease.RUN_FILE)
    assert stored["lease"]["steps"][2]["status"] == "not reached"
    assert all(row["status"] == "skipped" for row in stored["measurements"])


def test_a_broken_cuda_context_stops_the_lease_after_the_faulting_case(tmp_path, monkeypatch):
    # A kernel fault is sticky: the lease must not go on measuring error rows that blame the
    # wrong cases. Here the first smoke case "faults" and leaves the context broken.
    fault = "CUDA error: an illegal instruction was encountered"
    faulted = []

    def faulting_case(workload, precision, layout, device):
        faulted.append(workload.name)
        return {"workload": workload.name, "precision": precision, "layout": layout,
                "tolerance": 1e-5, "status": "error", "message": f"RuntimeError: {fault}",
                "errors": {}, "deterministic": None, "seconds": 0.1}

    monkeypatch.setattr(smoke, "check_case", faulting_case)
    monkeypatch.setattr(lease, "broken_context", lambda device: fault if faulted else None)
    run = lease.Lease(plan.Scale.tiny(), 20.0, tmp_path, "cpu", echo=lambda line: None).run()
    assert len(faulted) == 1
    steps = {step["name"]: step for step in run["lease"]["steps"]}
    assert steps["device"]["status"] == "done"
    assert steps["smoke"]["status"] == "stopped"
    assert all(steps[name]["status"] == "not reached"
               for name in ("comparison", "end_to_end", "extras"))
    assert "CUDA context is broken" in run["lease"]["stopped"] and fault in run["lease"]["stopped"]
    assert [row["status"] for row in run["smoke"]][0] == "error"
    assert all(row["status"] == "not reached" for row in run["smoke"][1:])
    assert run["measurements"] and all(
        row["status"] == "skipped" and "CUDA context is broken" in row["message"]
        for row in run["measurements"])


def test_dry_run_prints_each_step_with_its_compiles(capsys):
    status = cli.main(["lease", "--tiny", "--dry-run", "--budget-s", "20"])
    text = capsys.readouterr().out
    for step in ("device", "smoke", "comparison", "end_to_end", "extras", "compiles", "total"):
        assert step in text
    assert status in (0, 1)


def test_lease_without_cuda_or_output_dir_says_what_to_do():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(SystemExit, match="--tiny"):
        cli.main(["lease", "--output-dir", "x"])
    with pytest.raises(SystemExit, match="--output-dir is required"):
        cli.main(["lease", "--tiny"])
    with pytest.raises(SystemExit, match="must be positive"):
        cli.main(["lease", "--tiny", "--dry-run", "--budget-s", "0"])


def _recorded_layer_launches(backward: bool) -> list[tuned_configs.Launch]:
    workload = plan.Scale.tiny().smoke_layers[0]
    return plan._record_layer(workload, "fp32", "nchw", "cpu", backward)


def test_recording_counts_every_kernel_of_a_layer_without_running_them(monkeypatch):
    assert functional.interpreter_enabled()
    forward_only = {launch.kernel.name for launch in _recorded_layer_launches(False)}
    assert forward_only == {"router_pool_kernel", "mix_fwd_kernel", "conv_fwd_kernel"}
    both = {launch.kernel.name for launch in _recorded_layer_launches(True)}
    assert both == forward_only | {"conv_bwd_input_kernel", "conv_bwd_weight_kernel",
                                   "mix_bwd_kernel", "router_bwd_kernel"}


def test_table_lookup_is_keyed_by_source_configs_triton_and_device():
    kernel = conv.conv_fwd_kernel
    target = tuned_configs.Target("3.6.0", "NVIDIA H200")
    launch = next(launch for launch in _recorded_layer_launches(False)
                  if launch.kernel is kernel)
    entry = {tuned_configs.entry_key(launch.key): {"config": 2, "label": "x", "ms": 0.1,
                                                   "candidates": 8}}
    table = tuned_configs.merge(tuned_configs.load_table(Path("/nonexistent")),
                                {kernel.section_id(target): entry})
    assert kernel.stored(launch.key, target, table) == 2
    assert kernel.stored(launch.key, tuned_configs.Target("3.7.0", target.device), table) is None
    assert kernel.stored(launch.key, tuned_configs.Target("3.6.0", "other"), table) is None
    reordered = tuned_configs.TunedKernel(kernel.fn, kernel.configs[::-1], kernel.key, True)
    assert reordered.stored(launch.key, target, table) is None
    # A section of new source replaces the stale one of the same kernel, Triton and device.
    stale = dict(table["sections"][0], source_hash="0" * 64)
    merged = tuned_configs.merge({"schema": 1, "sections": [stale]},
                                 {kernel.section_id(target): entry})
    assert [s["source_hash"] for s in merged["sections"]] == [kernel.source_hash]


def test_source_hash_follows_the_jitted_functions_a_kernel_calls(monkeypatch):
    before = tuned_configs.source_hash(conv.conv_fwd_kernel.fn)
    assert before == tuned_configs.source_hash(conv.conv_fwd_kernel.fn)
    # program_blocks lives in tiling.py; a kernel that calls another version hashes differently.
    monkeypatch.setitem(conv.conv_fwd_kernel.fn.fn.__globals__, "program_blocks",
                        conv.conv_fwd_kernel.fn.fn.__globals__["sample_and_group"])
    assert tuned_configs.source_hash(conv.conv_fwd_kernel.fn) != before


def test_committed_table_is_valid():
    table = tuned_configs.load_table(tuned_configs.TABLE_PATH)
    for section in table["sections"]:
        assert set(section) == {"kernel", "source_hash", "configs_hash", "triton", "device",
                                "entries"}


def test_cudnn_benchmark_is_set_inside_and_restored_after():
    saved = torch.backends.cudnn.benchmark
    with hardware.cudnn_benchmark(not saved):
        assert torch.backends.cudnn.benchmark is (not saved)
    assert torch.backends.cudnn.benchmark is saved


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(plots.MissingMatplotlibError, match=r"triton_nsr\[bench\]"):
        plots._pyplot()


def test_bench_is_a_repository_tool_not_an_installed_package():
    config = tomllib.loads((results.REPO_ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["triton_nsr*"]
    assert "scripts" not in config["project"]
    assert "kernels/tuned_configs.json" in config["tool"]["setuptools"]["package-data"][
        "triton_nsr"]
