"""The GPU diagnosis (bench/gpu/diagnose.py) rehearsed on CPU: kernels in the Triton interpreter,
each case in a child process, a crashing child replaced by a fresh one."""

import json

import pytest

pytest.importorskip("triton")

from bench.gpu import diagnose  # noqa: E402

TINY = (2, 16, 24, 6, 8)


def test_cases_put_the_faulty_kernels_first():
    listed = diagnose.cases()
    assert listed[0] == diagnose.Case("weight_grad", "all_taps", "bf16", "nchw", 0)
    variants = [case.variant for case in listed]
    assert variants.index("default") > max(i for i, v in enumerate(variants)
                                           if v.startswith("all_taps"))
    assert {case.kernel for case in listed if case.variant == "tma_nchw"} == {
        "forward", "input_grad"}
    assert len(set(listed)) == len(listed)


def test_each_case_is_checked_and_a_dying_child_is_replaced(tmp_path):
    Case = diagnose.Case
    listed = [
        Case("weight_grad", "all_taps", "fp32", "channels_last", 0),
        # In and out channels swapped: x's rows carried (TRANSPOSED).
        Case("weight_grad", "all_taps_transposed", "fp32", "channels_last", 0),
        # No config 99: the child dies with a traceback inside this case.
        Case("forward", "default", "fp32", "nchw", 99),
        Case("input_grad", "default", "fp16", "nchw", 1),
        # The interpreter refuses a TMA box at a tap-shifted column: an error, not a fault.
        Case("forward", "tma_nchw", "fp32", "nchw", 0),
        # The interpreter has no bfloat16 arithmetic: a wrong result the check must catch.
        Case("weight_grad", "default", "bf16", "channels_last", 0),
    ]
    record = diagnose.diagnose(tmp_path, 300, "cpu", listed, shape=TINY)
    statuses = [row["status"] for row in record["cases"]]
    assert statuses == ["passed", "passed", "fault", "passed", "error", "failed"]
    assert "IndexError" in record["cases"][2]["message"]
    assert "16-byte aligned" in record["cases"][4]["message"]
    assert record["cases"][5]["error"] > record["cases"][5]["tolerance"]
    stored = json.loads((tmp_path / diagnose.RESULT_FILE).read_text())
    assert stored["shape"] == list(TINY) and len(stored["cases"]) == len(listed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [diagnose.RESULT_FILE]
    assert "weight_grad/all_taps fp32 channels_last config 0" in diagnose.summary(record)


def test_cases_past_the_budget_are_not_reached(tmp_path):
    listed = [diagnose.Case("forward", "default", "fp32", "nchw", 0)] * 3
    record = diagnose.diagnose(tmp_path, 0.0, "cpu", listed, shape=TINY)
    assert [row["status"] for row in record["cases"]] == ["not reached"] * 3
