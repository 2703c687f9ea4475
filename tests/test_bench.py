"""The benchmark harness: workloads, FLOP accounting, run JSON, report rendering and the CLI.

Everything here runs on CPU in seconds: torch providers on tiny shapes, synthetic runs for the
report. Kernel timings themselves belong to `python -m bench` on a GPU.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import checks, cli, harness, plots, providers, report, results
from bench.workloads import (
    EVAL_IMAGE_HEIGHT,
    EVAL_IMAGE_WIDTH,
    EVAL_PADDING,
    EVAL_PATCH,
    EVAL_STRIDE,
    EndToEnd,
    Workload,
    end_to_end_jobs,
    main_workloads,
    select,
    sweep_workloads,
    tiny_workloads,
)
from triton_nsr import NSRConv2d, reference
from triton_nsr.models import evaluate_patches


def _by_name() -> dict[str, Workload]:
    return {w.name: w for w in main_workloads()}


def test_main_workloads_follow_the_issue():
    w = _by_name()
    shapes = {name: (x.batch, x.in_channels, x.out_channels, x.height, x.width, x.k, x.d)
              for name, x in w.items()}
    assert shapes["W1-expand"] == (16, 32, 128, 48, 48, 4, 16)
    assert shapes["W1-reduce"] == (16, 128, 32, 48, 48, 4, 16)
    assert shapes["W2"] == (16, 64, 64, 48, 48, 4, 16)
    assert shapes["W4"] == (1, 64, 64, 512, 512, 4, 16)
    assert w["W3"].in_channels == 32 and w["W3"].out_channels == 128
    assert w["W3"].passes == ("forward",), "W3 is inference"
    assert all((x.kernel_size, x.padding) == (3, 1) for x in w.values())


def test_w3_batch_is_the_number_of_patches_the_evaluation_runs():
    """W3's batch is what evaluate_patches feeds the model for the 1020x678 eval image."""
    seen = []

    def upscale_by_one(patches):
        seen.append(patches.shape)
        return patches

    image = torch.rand(1, 1, EVAL_IMAGE_HEIGHT, EVAL_IMAGE_WIDTH)
    out = evaluate_patches(upscale_by_one, image, EVAL_PATCH, EVAL_PADDING, EVAL_STRIDE)
    assert torch.allclose(out, image, atol=1e-6)
    assert all(shape[-2:] == (EVAL_PATCH, EVAL_PATCH) for shape in seen)
    assert _by_name()["W3"].batch == sum(shape[0] for shape in seen) == 722


def test_sweeps_span_the_requested_ranges():
    values = {}
    for w in sweep_workloads():
        values.setdefault(w.group, []).append(w.sweep_value)
    assert (min(values["sweep-batch"]), max(values["sweep-batch"])) == (1, 64)
    assert (min(values["sweep-resolution"]), max(values["sweep-resolution"])) == (32, 512)
    assert (min(values["sweep-k"]), max(values["sweep-k"])) == (1, 16)
    assert (min(values["sweep-channels"]), max(values["sweep-channels"])) == (16, 256)
    for w in sweep_workloads():
        assert w.out_channels % w.d == 0, w.name


def test_select_resolves_groups_and_rejects_unknown_names():
    layers, jobs = select(["W1", "e2e"])
    assert [w.name for w in layers] == ["W1-expand", "W1-reduce"]
    assert [j.name for j in jobs] == [j.name for j in end_to_end_jobs()]
    with pytest.raises(ValueError, match="W9"):
        select(["W9"])


@pytest.mark.parametrize("workload", [
    Workload("a", "t", 2, 8, 16, 6, 6, k=4, d=2),
    Workload("b", "t", 3, 6, 4, 7, 5, k=2, d=4),
])
def test_analytic_flops_agree_with_flop_counter(workload):
    cost = workload.cost()
    # The convolution, alone or per sample, is exactly 2 * conv_macs.
    assert providers.count_flops("conv", workload, backward=False) == 2 * cost.conv_macs
    assert providers.count_flops("static", workload, backward=False) == 2 * cost.conv_macs
    # The whole layer: the counter sees conv, MLP and mixing matmuls, not pool/softmax/bias.
    counted = providers.count_flops("layer", workload, backward=False)
    assert counted == 2 * (cost.conv_macs + cost.mlp_macs + cost.mix_macs)
    # The 3x convention for forward+backward holds exactly for a convolution.
    backward = providers.count_flops("static", workload, backward=True)
    assert backward == harness.BACKWARD_FACTOR * 2 * cost.conv_macs


def _cpu_settings(**overrides) -> harness.Settings:
    options = {"device": "cpu", "precisions": ["fp32"], "layouts": ["nchw", "channels_last"],
               "providers": ["paper", "static_conv"], "repeats": 2, "warmup": 1}
    return harness.Settings(**{**options, **overrides})


def test_harness_writes_a_valid_run_with_torch_providers_on_cpu(tmp_path):
    run = harness.Harness(_cpu_settings(), lambda message: None).run(tiny_workloads(), [])
    path = results.write(run, tmp_path / "run.json")
    loaded = results.load(path)
    assert loaded["environment"]["device_type"] == "cpu"
    assert loaded["peaks"]["matmul_tflops"]["fp32"] > 0
    rows = loaded["measurements"]
    assert len(rows) == 2 * 2 * 2  # providers x layouts x passes
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        latency = row["latency_ms"]
        assert latency["n"] == 2 and latency["p20"] <= latency["median"] <= latency["p80"]
        assert row["flops_counted"] > 0 and row["flops_analytic"] > 0
        assert row["tflops"] > 0 and row["roofline_fraction"] > 0
    forward = [r for r in rows if r["pass"] == "forward" and r["provider"] == "static_conv"]
    backward = [r for r in rows if r["pass"] == "forward_backward"
                and r["provider"] == "static_conv"]
    assert backward[0]["flops_analytic"] == 3 * forward[0]["flops_analytic"]


def test_harness_records_failing_and_unavailable_providers(monkeypatch):
    def broken(inputs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(providers.PROVIDERS, "broken",
                        providers.Provider("broken", "layer", "always fails", broken))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    settings = _cpu_settings(layouts=["nchw"], providers=["broken", "triton_nsr"],
                             passes=["forward"])
    run = harness.Harness(settings, lambda message: None).run(tiny_workloads(), [])
    status = {r["provider"]: (r["status"], r["message"]) for r in run["measurements"]}
    assert status["broken"] == ("error", "RuntimeError: kernel exploded")
    assert status["triton_nsr"][0] == "skipped"
    assert "TRITON_INTERPRET" in status["triton_nsr"][1]
    results.validate(run)


def test_validate_rejects_incomplete_runs():
    run = harness.Harness(_cpu_settings(layouts=["nchw"], passes=["forward"]),
                          lambda message: None).run(tiny_workloads(), [])
    broken = json.loads(json.dumps(run))
    del broken["measurements"][0]["latency_ms"]
    with pytest.raises(ValueError, match="latency_ms"):
        results.validate(broken)
    broken = json.loads(json.dumps(run))
    broken["measurements"][0]["workload"] = "nowhere"
    with pytest.raises(ValueError, match="nowhere"):
        results.validate(broken)


def _synthetic_gpu_run() -> dict:
    """A run as a GPU would store it; the timings are made up so the tests know the ratios."""
    settings = _cpu_settings(device="cuda", precisions=["tf32"], layouts=["nchw"],
                             providers=["paper", "triton_nsr", "static_conv"])
    w1 = _by_name()["W1-expand"]
    sweep = [w for w in sweep_workloads() if w.group == "sweep-batch"][:3]
    job = end_to_end_jobs()[0]
    catalogue = {w.name: w.as_dict() for w in [w1, *sweep]} | {job.name: job.as_dict()}
    peaks = {"matmul_tflops": {"tf32": 400.0}, "copy_gbps": 2800.0, "matmul_size": 8192,
             "copy_bytes": 2**30}
    run = results.new_run("cpu", harness.asdict(settings), peaks, catalogue)
    run["environment"].update(device_type="cuda", device_name="NVIDIA H100 80GB HBM3",
                              git_commit="0123456789abcdef0123456789abcdef01234567",
                              cuda="12.8")
    latency = {"paper": 4.0, "triton_nsr": 1.0, "static_conv": 0.8}
    for workload in [w1, *sweep]:
        cost = workload.cost()
        for name, ms in latency.items():
            for pass_ in ("forward", "forward_backward"):
                part = providers.get(name).part
                flops, nbytes = providers.part_flops_and_bytes(part, workload, cost, 4)
                row = harness._row(workload.name, name, part, "tf32", "nchw", pass_)
                scale = workload.batch * (3 if pass_ == "forward_backward" else 1)
                row.update(latency_ms={"median": ms * scale, "p20": 0.9 * ms * scale,
                                       "p80": 1.1 * ms * scale, "min": 0.8 * ms, "n": 30},
                           peak_memory_bytes={"peak": 2**30, "extra": 2**28},
                           flops_analytic=flops, flops_counted=flops, bytes_analytic=nbytes,
                           tflops=flops / (ms * 1e-3) / 1e12, gbps=nbytes / (ms * 1e-3) / 1e9,
                           roofline_fraction=0.5)
                run["measurements"].append(row)
    for name, ms in (("paper", 300.0), ("triton_nsr", 100.0)):
        row = harness._row(job.name, name, "model", "tf32", "nchw", "forward_backward")
        row.update(latency_ms={"median": ms, "p20": ms, "p80": ms, "min": ms, "n": 30})
        run["measurements"].append(row)
    return results.validate(run)


def test_report_renders_charts_and_page_from_stored_json(tmp_path, capsys):
    directory = tmp_path / "results"
    run = _synthetic_gpu_run()
    results.write(run, results.default_path(run, directory))
    page, images = tmp_path / "performance.md", tmp_path / "images"
    status = cli.main(["--results-dir", str(directory), "report", "--markdown", str(page),
                       "--images", str(images)])
    assert status == 0
    assert "NVIDIA H100 80GB HBM3" in capsys.readouterr().out
    for chart in ("latency_vs_flops", "speedup", "roofline", "sweep_batch"):
        assert (images / f"{chart}.png").stat().st_size > 1000, chart
    text = page.read_text()
    assert "NVIDIA H100 80GB HBM3" in text and "0123456789abcdef" in text
    assert "images/speedup.png" in text
    # W1-expand: paper 4.0 vs triton_nsr 1.0 -> 4.00x; the end-to-end step 300 vs 100 -> 3.00x.
    assert "| W1-expand | triton_nsr | 16.000 [14.400-17.600] | 4.00 |" in text
    assert "| E2E-train | triton_nsr | tf32 | 100.000 [100.000-100.000] | 3.00 |" in text
    # The cost paragraph quotes the measured overheads: paper 4.0 / 0.8 - 1 = +400%.
    assert "`paper` relative to the static convolution is +400.0%" in text
    assert "`triton_nsr` relative to the static convolution is +25.0%" in text


def test_speedups_come_from_the_same_configuration():
    run = _synthetic_gpu_run()
    table = plots.speedups(run, "tf32", "nchw", "forward")
    assert table["W1-expand"] == pytest.approx({"triton_nsr": 4.0, "static_conv": 5.0})
    assert plots.speedups(run, "bf16", "nchw", "forward") == {}


def test_report_without_gpu_results_says_so(tmp_path):
    directory = tmp_path / "results"
    # A CPU run is not a GPU result: the report must not pick it up.
    cpu_run = harness.Harness(_cpu_settings(layouts=["nchw"], passes=["forward"]),
                              lambda message: None).run(tiny_workloads(), [])
    results.write(cpu_run, results.default_path(cpu_run, directory))
    assert results.newest(directory, "cuda") is None
    page = tmp_path / "performance.md"
    assert cli.command_report(None, directory, page, tmp_path / "images") == 0
    text = page.read_text()
    assert "No GPU results are stored" in text
    assert "W3" in text and not (tmp_path / "images").exists()


def test_the_cost_table_defines_its_workloads_and_every_column(tmp_path):
    from bench.costs import BYTES_COLUMNS, BYTES_HEADERS, COST_COLUMNS, COST_HEADERS

    assert list(COST_COLUMNS) == list(COST_HEADERS)
    # The bytes table's first three columns name the case; every other one is explained.
    assert list(BYTES_COLUMNS) == list(BYTES_HEADERS[3:])
    page = report.render_without_results(tmp_path, tmp_path / "performance.md")
    text = page.read_text()
    for header in COST_HEADERS:
        assert f"- `{header}`: " in text
    for workload in main_workloads():
        assert f"- **{workload.name}**: {workload.description}" in text


def test_help_and_readme_agree_on_how_long_a_run_without_a_gpu_takes():
    pattern = re.compile(r"about (\d+) minutes on a 2-core CPU")
    readme = " ".join((results.REPO_ROOT / "README.md").read_text().split())
    in_help = pattern.findall(" ".join(cli.__doc__.split()))
    assert in_help and set(pattern.findall(readme)) == set(in_help)


def test_cli_help_documents_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("run", "report", "check", "costs", "--results-dir"):
        assert word in text
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    for flag in ("--device", "--workloads", "--providers", "--precisions", "--layouts",
                 "--repeats", "--output"):
        assert flag in text


def test_cli_run_on_cpu_writes_json(tmp_path, capsys):
    output = tmp_path / "cpu.json"
    status = cli.main(["run", "--device", "cpu", "--no-check", "--repeats", "1",
                       "--passes", "forward", "--output", str(output)])
    assert status == 0
    run = results.load(output)
    assert {r["provider"] for r in run["measurements"]} == set(cli.CPU_PROVIDERS)
    assert "[2/2]" in capsys.readouterr().err


def test_report_module_paths_point_into_the_repository():
    assert report.DEFAULT_MARKDOWN.parent.parent == results.REPO_ROOT


def test_end_to_end_jobs_put_every_nsr_layer_on_the_provider(monkeypatch):
    built = []

    def wdsr_stand_in(scale, lr_patch_size):
        model = nn.Sequential(NSRConv2d(3, 12, 3, 2, 2, padding=1, backend="auto"),
                              nn.PixelShuffle(scale))
        built.append(model)
        return model

    def evaluate_stand_in(model, image, patch_size, padding, stride):
        return model(image)

    fake = types.ModuleType("triton_nsr.models")
    fake.WDSRNSR, fake.evaluate_patches = wdsr_stand_in, evaluate_stand_in
    monkeypatch.setitem(sys.modules, "triton_nsr.models", fake)
    jobs = [EndToEnd("E2E-train", "train", batch=2, patch_size=8),
            EndToEnd("E2E-eval", "eval", patch_size=8, image_height=12, image_width=10)]
    settings = _cpu_settings(layouts=["nchw"], providers=["paper", "static_conv"])
    run = harness.Harness(settings, lambda message: None).run([], jobs)
    rows = run["measurements"]
    # static_conv is no whole-model provider: only paper runs, once per job.
    assert [(r["workload"], r["provider"], r["pass"], r["status"]) for r in rows] == [
        ("E2E-train", "paper", "forward_backward", "ok"),
        ("E2E-eval", "paper", "forward", "ok"),
    ]
    # 'paper' means the paper's layer itself, not a backend of ours.
    assert {type(model[0]) for model in built} == {reference.NSRConv2d}
    results.validate(run)


@pytest.mark.parametrize("conv_error,expected", [
    (0.0, ["passed", "passed", "passed"]),
    (1e-2, ["passed", "failed", "failed"]),
])
def test_kernel_check_catches_a_wrong_kernel(monkeypatch, conv_error, expected):
    import triton_nsr
    from triton_nsr import reference

    def conv_stand_in(input, weight_b, bias_b, stride, pad, dilation, groups, allow_tf32):
        top, bottom, left, right = pad
        padded = F.pad(input, (left, right, top, bottom))
        output = torch.cat([F.conv2d(padded[b:b + 1], weight_b[b], bias_b[b], stride, 0,
                                     dilation, groups) for b in range(input.shape[0])])
        return output * (1 + conv_error)

    def layer_stand_in(input, padded, weight, bias, mlp_weight, mlp_bias, geometry,
                       temperature, pad, allow_tf32, plan=None):
        routing = reference.routing_weights(input, mlp_weight, mlp_bias,
                                            geometry.num_sparsity_groups,
                                            geometry.num_sparsity_cardinals, temperature)
        weight_b, bias_b = reference.mix_kernels(routing.to(weight.dtype), weight, bias)
        return conv_stand_in(input if padded is None else padded, weight_b, bias_b,
                             geometry.stride, pad, geometry.dilation, geometry.groups, False)

    # Stand-in kernels, so the check itself is tested whether or not triton_nsr.ops exists.
    fake = types.ModuleType("triton_nsr.ops")
    fake.mix_kernels, fake.per_sample_conv2d = reference.mix_kernels, conv_stand_in
    fake.nsr_layer = layer_stand_in
    fake.layer_plan_for = lambda *args: None  # nsr_layer then finds no plan given: none needed
    monkeypatch.setitem(sys.modules, "triton_nsr.ops", fake)
    monkeypatch.setattr(triton_nsr, "ops", fake, raising=False)
    outcome = checks.check_kernels("cpu")
    assert [r.name for r in outcome] == ["triton_mix", "triton_conv", "triton_nsr"]
    assert [r.status for r in outcome] == expected


def test_bound_note_names_the_workloads_over_the_papers_bound():
    from bench.costs import bound_note

    w = _by_name()
    # 128 -> 32: pooling costs 1/(9 * C_out) of the conv, more than the bound's 1/(9 * C_in).
    assert "W1-reduce" in bound_note([w["W1-reduce"], w["W2"]])
    assert "W2" not in bound_note([w["W1-reduce"], w["W2"]])
    assert "stays under" in bound_note([w["W2"], w["W4"]])


def test_cli_run_rejects_unknown_workloads_before_measuring(tmp_path):
    with pytest.raises(SystemExit, match="W9"):
        cli.main(["run", "--device", "cpu", "--workloads", "W9",
                  "--output", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(("flag", "value"), [("--repeats", "0"), ("--repeats", "-2"),
                                           ("--repeats", "three"), ("--warmup", "-1")])
def test_cli_run_refuses_a_count_it_cannot_honour(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--device", "cpu", "--no-check", flag, value,
                  "--output", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2  # argparse's usage error, before anything is measured
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and value in error
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter child is for CPU machines")
def test_bench_check_sets_up_the_interpreter_itself():
    # As a user runs it: TRITON_INTERPRET unset, so the command must rerun itself with it set
    # before triton is imported (importing triton_nsr imports triton).
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "bench", "check"], cwd=results.REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 3 and "failed" not in result.stdout


def test_report_renders_a_run_without_the_main_workloads(tmp_path):
    run = harness.Harness(_cpu_settings(layouts=["nchw"]), lambda message: None).run(
        tiny_workloads(), [])
    page = report.render(run, tmp_path / "run.json", tmp_path / "p.md", tmp_path / "images")
    text = page.read_text()
    assert "| tiny | paper |" in text and "kernel check before measuring: not run" in text
    assert "`paper` relative to the static convolution" in text


def test_missing_or_broken_kernels_are_reported_not_raised(monkeypatch):
    import triton_nsr

    monkeypatch.delattr(triton_nsr, "ops", raising=False)
    monkeypatch.setitem(sys.modules, "triton_nsr.ops", None)  # import raises ImportError
    assert [r.status for r in checks.check_kernels("cpu")] == ["skipped"]
    reason = providers.unavailable_reason(providers.get("triton_mix"), "cpu")
    assert "not importable" in reason
    real_import = importlib.import_module

    def broken_import(name, *args):
        if name == "triton_nsr.ops":
            raise SyntaxError("half-written kernel")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken_import)
    outcome = checks.check_kernels("cpu")
    assert [(r.status, "half-written" in r.message) for r in outcome] == [("failed", True)]
    reason = providers.unavailable_reason(providers.get("triton_mix"), "cpu")
    assert "SyntaxError" in reason


def test_gpu_busy_leaves_out_the_l2_flush_and_host_time_is_the_rest():
    from bench.timing import busy_ms_per_call, wall_busy_host

    flush = "void at::native::vectorized_elementwise_kernel<4, at::native::bitwise_not_kernel_cuda"
    kernels = [(flush, 900.0), ("conv_fwd_kernel", 30.0), ("mix_fwd_kernel", 10.0)] * 2
    assert busy_ms_per_call(kernels, calls=2) == pytest.approx(0.040)
    wall = {"median": 0.100, "p20": 0.09, "p80": 0.12}
    assert wall_busy_host(wall, 0.040) == {"latency_ms": wall, "gpu_busy_ms": 0.040,
                                           "host_ms": pytest.approx(0.060)}
    assert wall_busy_host(wall, None)["host_ms"] is None


def test_comparison_and_targets_render_from_a_stored_run():
    from bench import comparison

    run = _synthetic_gpu_run()
    # W1-expand in bf16 channels_last, eager and graphed, with the profiler's GPU time.
    timings = {"static_conv": (0.10, 0.05), "paper": (0.60, 0.30), "triton_nsr": (0.19, 0.05),
               "static_conv_graphed": (0.06, 0.05), "paper_graphed": (0.35, 0.30),
               "triton_nsr_graphed": (0.07, 0.05)}
    for name, (wall, busy) in timings.items():
        part = providers.get(name).part
        row = harness._row("W1-expand", name, part, "bf16", "channels_last",
                           "forward_backward")
        row.update(latency_ms={"median": wall, "p20": wall, "p80": wall, "min": wall, "n": 20},
                   gpu_busy_ms=busy, host_ms=wall - busy)
        run["measurements"].append(row)
    for name, ms in (("paper_graphed", 30.0), ("triton_nsr_graphed", 15.0)):
        row = harness._row("E2E-train", name, "model", "bf16", "channels_last",
                           "forward_backward")
        row.update(latency_ms={"median": ms, "p20": ms, "p80": ms, "min": ms, "n": 20})
        run["measurements"].append(row)
    table = comparison.comparison_table(run)
    assert "| W1-expand | bf16 channels_last | forward_backward | triton_nsr | 0.190 | 0.050 | " \
           "0.140 | 0.070 | 0.050 | 0.020 |" in table
    verdicts = {target: (measured, verdict) for target, measured, verdict in
                comparison.targets(run)}
    host = verdicts["W1-expand forward_backward: host time <= 3x the static conv's"]
    assert host == ("2.80x (0.140 vs 0.050 ms)", "met")
    wall = verdicts["W1-expand forward_backward: eager wall <= 1.5x the static conv's"]
    assert wall[1] == "MISSED" and "the host" in wall[0]
    assert verdicts["W1-expand forward_backward: GPU time <= 2.5x the static conv's"][1] == "met"
    graphed = verdicts["graphed WDSR-NSR training step >= 1.5x faster than the paper's "
                       "graphed step"]
    assert graphed == ("2.00x", "met")
    page = "\n\n".join(comparison.section(run))
    assert "## Targets of this run" in page and "## Eager and CUDA-graphed" in page


def test_measuring_writes_where_git_ignores_and_the_report_reads_committed_runs(tmp_path):
    import subprocess

    # A user's run (python -m bench, run, cpu) writes its JSON and its page to an ignored
    # folder; the committed docs/performance.md is rendered from committed runs only.
    parser = cli.build_parser()
    for command in ([], ["run"], ["cpu"]):
        args = parser.parse_args(command)
        assert args.output_dir == results.LOCAL_DIR
    probe = results.LOCAL_DIR / "20260101T000000_cpu-suite_0000000.json"
    for path in (probe, results.LOCAL_DIR / "performance.md",
                 results.LOCAL_DIR / "images" / "cpu_ratios.png"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=results.REPO_ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by git"
    assert parser.parse_args(["report"]).markdown == report.DEFAULT_MARKDOWN
    # newest() looks at the committed folder itself, not into local/.
    local = tmp_path / "local"
    local.mkdir()
    run = _synthetic_gpu_run()
    results.write(run, results.default_path(run, local))
    assert results.newest(tmp_path, "cuda") is None
    assert results.newest(local, "cuda") is not None


def test_the_renderer_flags_cases_measured_twice_that_disagree():
    from bench import consistency

    # The stored H200 run of 865104e measured W1-expand's batch-16, k=4 point three times
    # (the headline workload, the batch sweep, the k sweep), with the old timer.
    stored = results.load(results.RESULTS_DIR / "20261130T211648_cuda_865104e.json")
    cases = consistency.measured_twice(stored)
    paper = next(c for c in cases if (c["provider"], c["pass"]) == ("paper", "forward"))
    assert paper["workloads"] == ["W1-expand", "batch-16", "k-4"] and not paper["agree"]
    flagged = consistency.disagreeing_keys(stored)
    assert ("W1-expand", "paper", "bf16", "channels_last", "forward") in flagged
    page = consistency.measured_twice_paragraph(stored)
    assert "disagree beyond their spread" in page and "W1-expand 0.591 ms" in page
    # The same case twice with overlapping spreads agrees; one far off is flagged.
    run = _synthetic_gpu_run()
    run["workloads"]["batch-16"] = {**run["workloads"]["W1-expand"], "name": "batch-16",
                                    "group": "sweep-batch"}
    twice = [{**row, "workload": "batch-16", "latency_ms": dict(row["latency_ms"])}
             for row in run["measurements"] if row["workload"] == "W1-expand"]
    run["measurements"] += twice
    assert consistency.measured_twice(run)
    assert all(c["agree"] for c in consistency.measured_twice(run))
    twice[0]["latency_ms"] = {k: v * 3 if k != "n" else v
                              for k, v in twice[0]["latency_ms"].items()}
    assert sum(not c["agree"] for c in consistency.measured_twice(run)) == 1


@pytest.mark.parametrize("path", sorted(results.RESULTS_DIR.glob("*_cuda_*.json")),
                         ids=lambda path: path.name)
def test_stored_runs_timed_from_a_synchronised_start_agree_with_themselves(path):
    from bench import consistency

    run = results.load(path)
    if not consistency.timed_from_a_synchronised_start(run):
        pytest.skip("timed before bench/timing.py; its disagreements are flagged instead")
    bad = [case for case in consistency.measured_twice(run) if not case["agree"]]
    assert not bad, bad


def test_a_failed_provider_shows_a_short_reason_and_the_smoke_two_verdicts():
    from bench import consistency

    row = {"status": "error", "message": "RuntimeError: Expected all tensors to be on the same "
                                         "device, but got mat1 is on cpu, different from cuda:0"}
    assert consistency.short_reason(row) == "failed: expected all tensors to be on the same device"
    smoke = {"errors": {"output": 3e-4, "grad_weight": 8e-4}, "tolerance": 1e-3,
             "deterministic": False}
    assert consistency.smoke_verdicts(smoke) == ("within (8.0e-04 <= 1e-03)", "**no**")
    smoke.update(errors={"output": 4.7e-2}, deterministic=True)
    assert consistency.smoke_verdicts(smoke) == ("**over** (4.7e-02 > 1e-03)", "yes")


def test_the_readme_speed_table_is_the_stored_runs():
    from bench import readme

    # make report writes it from the newest committed GPU run; it must not drift from it.
    path, run = results.newest(results.RESULTS_DIR, "cuda")
    text = readme.README.read_text()
    source = str(path.relative_to(results.REPO_ROOT))
    assert readme.render_into(text, run, source) == text
    table = readme.speed_table(run, source)
    assert run["environment"]["device_name"] in table and run["created_utc"][:10] in table
    for column in ("triton_nsr ms", "paper's layer ms", "paper's layer, torch.compile ms",
                   "nn.Conv2d ms"):
        assert column in table
