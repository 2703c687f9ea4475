"""The CPU suite of `python -m bench`: its providers, one tiny run, its JSON and its report."""

import copy
import json

import pytest
import torch

from bench import cli, cpu_cases, cpu_memory, cpu_report, cpu_suite
from triton_nsr import reference

TINY = cpu_suite.CpuSettings(threads=1, warmup=1, min_rounds=2, max_rounds=2, budget_s=0,
                             train_budget_s=0)


@pytest.fixture(scope="module", autouse=True)
def as_a_cpu_user():
    """backend='auto' as a CPU user gets it (no interpreter), on one thread: on a busy machine
    threads waiting for each other would dominate the tiny cases' milliseconds. The suite
    itself sets its threads (TINY.threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TRITON_INTERPRET", raising=False)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run():
    """One CPU-suite run on the tiny cases."""
    return cpu_suite.run(cpu_cases.tiny_cases(), TINY, progress=lambda _: None)


def test_paper_and_default_layers_share_parameters_static_shares_the_shape():
    workload = cpu_cases.tiny_cases()[0]
    x = torch.randn(3, workload.in_channels, 9, 7)
    paper, default, static = (cpu_cases.layer_module(workload, p) for p in cpu_cases.PROVIDERS)
    assert type(paper) is reference.NSRConv2d
    assert default.backend == "auto"
    with torch.no_grad():
        torch.testing.assert_close(default(x), paper(x), atol=1e-5, rtol=1e-5)
        assert static(x).shape == paper(x).shape


def test_training_models_differ_only_in_their_nsr_layers():
    step = cpu_cases.tiny_cases()[1]
    paper, default, static = (cpu_cases.train_model(step, p) for p in cpu_cases.PROVIDERS)
    layer_types = {type(m) for m in paper.modules() if isinstance(m, torch.nn.Conv2d)}
    assert reference.NSRConv2d in layer_types
    assert not any(isinstance(m, reference.NSRConv2d) for m in static.modules())
    lr = torch.rand(2, 3, step.patch, step.patch)
    with torch.no_grad():
        torch.testing.assert_close(default(lr), paper(lr), atol=1e-5, rtol=1e-5)
        assert static(lr).shape == paper(lr).shape
    # Weight norm survives the swap: the paper's layers keep weight_g and weight_v.
    assert sorted(paper.state_dict()) == sorted(default.state_dict())


def test_the_paper_layer_lands_where_the_parameters_are():
    # Under hook-style weight norm a moved layer's ``weight`` is a plain attribute left on the
    # old device until its next forward: the paper's layers once followed it to the CPU inside
    # an H200 model. The meta device stands in for the GPU.
    import triton_nsr

    layer = triton_nsr.NSRConv2d(8, 16, 3, 4, 4, padding=1)
    with pytest.warns(FutureWarning):
        layer = torch.nn.utils.weight_norm(layer)
    layer = layer.to("meta")
    assert layer.weight.device.type == "cpu"
    paper = cpu_cases.paper_layer(layer)
    assert {p.device.type for p in paper.parameters()} == {"meta"}


@pytest.mark.slow
def test_tiny_run_follows_the_schema(tiny_run):
    env = tiny_run["environment"]
    assert env["torch_threads"] == 1 and env["triton_interpret"] is None
    assert env["cpu_model"] and env["git_commit"]
    rows = {(r["case"], r["pass"]): r for r in tiny_run["timings"]}
    assert set(rows) == {("tiny", "forward"), ("tiny", "forward_backward"),
                         ("tiny-train", "train_step")}
    for row in rows.values():
        assert row["rounds"] == 2
        assert all(row["latency_ms"][p]["n"] == 2 for p in cpu_cases.PROVIDERS)
        samples = row["samples_ms"]
        for label, (top, bottom) in cpu_suite.RATIOS.items():
            per_round = [a / b for a, b in zip(samples[top], samples[bottom])]
            assert row["ratios"][label]["median"] == pytest.approx(sum(per_round) / 2)
            assert row["latency_ms"][top]["median"] == pytest.approx(sum(samples[top]) / 2)
    memory = {(r["case"], r["pass"], r["provider"]): r for r in tiny_run["memory"]}
    assert len(memory) == 9
    # The kernel's RSS counters are approximate by a few pages per CPU: a call that needs
    # nothing may read slightly below zero.
    assert all(r["peak_bytes"] - r["baseline_bytes"] == r["extra_bytes"] > -2**20
               for r in memory.values())
    assert cpu_suite.validate(json.loads(json.dumps(tiny_run))) is not None


@pytest.mark.skipif(cpu_memory.available() is not None, reason="needs Linux's /proc")
def test_peak_memory_sees_a_torch_allocation_freed_within_the_call():
    size = 64 * 2**20
    measured = cpu_memory.peak_of_call(lambda: torch.ones(size // 4).sum())
    assert size * 0.95 < measured["extra_bytes"] < size * 1.5


@pytest.mark.slow
def test_validate_names_what_is_missing(tiny_run):
    broken = copy.deepcopy(tiny_run)
    del broken["timings"][0]["ratios"]["paper/static"]
    with pytest.raises(ValueError, match="paper/static"):
        cpu_suite.validate(broken)
    broken = copy.deepcopy(tiny_run)
    broken["memory"][0]["case"] = "W9"
    with pytest.raises(ValueError, match="W9"):
        cpu_suite.validate(broken)


def test_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        cpu_suite.run(cpu_cases.tiny_cases(), TINY)


def test_settings_out_of_range_are_named():
    with pytest.raises(ValueError, match="max_rounds"):
        cpu_suite.CpuSettings(threads=1, min_rounds=5, max_rounds=2).check()
    with pytest.raises(ValueError, match="threads"):
        cpu_suite.CpuSettings(threads=0).check()


def test_interleaved_rounds_rotate_the_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    settings = cpu_suite.CpuSettings(threads=1, warmup=0, min_rounds=3, max_rounds=3)
    samples = cpu_suite.interleaved(fns, settings, budget_s=0)
    assert calls == list("abcbcacab")
    assert all(len(times) == 3 for times in samples.values())


@pytest.mark.slow
def test_report_renders_the_stored_run_apart_from_gpu_numbers(tiny_run, tmp_path):
    path = cpu_suite.write(tiny_run, cpu_suite.default_path(tiny_run, tmp_path))
    assert "_cpu-suite_" in path.name
    markdown, images = tmp_path / "performance.md", tmp_path / "images"
    assert cli.main(["--results-dir", str(tmp_path), "report", "--markdown", str(markdown),
                     "--images", str(images)]) == 0
    page = markdown.read_text()
    assert "no GPU measurements" in page
    cpu_part = page[page.index("## CPU: "):]
    row = next(r for r in tiny_run["timings"] if r["pass"] == "forward")
    assert cpu_report._ratio(row["ratios"]["default/paper"]) in cpu_part
    assert "](images/cpu_ratios.png)" in cpu_part
    assert (images / "cpu_ratios.png").stat().st_size > 0
    # Nothing GPU-shaped is drawn into the CPU section.
    assert "roofline" not in cpu_part.lower() and "cuda" not in cpu_part.lower()
    assert cpu_suite.newest(tmp_path)[0] == path
    assert cli.main(["--results-dir", str(tmp_path), "report", "--markdown", str(markdown),
                     "--no-charts"]) == 0
    page = markdown.read_text()
    assert "## CPU: " in page and "cpu_ratios.png" not in page
