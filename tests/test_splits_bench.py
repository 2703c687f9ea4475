"""The GPU split measurement (bench/gpu/splits.py) rehearsed on CPU: kernels in the Triton
interpreter, tiny shapes, float32 (the interpreter has no bfloat16 arithmetic)."""

import json

import pytest
import torch

pytest.importorskip("triton")

from bench.gpu import splits  # noqa: E402
from bench.timing import Timer  # noqa: E402


def test_every_kernel_and_split_count_is_timed_and_checked(tmp_path):
    shapes = {"W1-reduce": (2, 16, 8, 6, 4)}
    record = splits.measure(tmp_path, 300, "cpu", shapes, {"W1-reduce": (1, 3)},
                            Timer("cpu", 0, 1), dtype=torch.float32)
    rows = record["rows"]
    assert [(r["variant"], r["asked_splits"], r["status"]) for r in rows] == [
        ("all_taps", 1, "measured"), ("all_taps", 3, "measured"),
        ("per_tap", 1, "measured"), ("per_tap", 3, "measured")]
    # Three row bands of 2; float32 partial sums, written and read: 2 * 3 * (2*8*16*9) * 4 B.
    assert [r["splits"] for r in rows] == [1, 3, 1, 3]
    assert rows[1]["partial_mb"] == pytest.approx(2 * 3 * 2 * 8 * 16 * 9 * 4 / 1e6)
    assert rows[0]["partial_mb"] == 0.0
    assert all(r["error"] < 1e-5 for r in rows), rows
    assert all(r["time_ms"]["n"] == 1 for r in rows)
    assert json.loads((tmp_path / splits.RESULT_FILE).read_text())["rows"] == rows
    assert "all_taps S=3" in splits.summary(record)


def test_rows_past_the_budget_are_not_reached(tmp_path):
    record = splits.measure(tmp_path, 0.0, "cpu", {"W4": (1, 8, 8, 4, 4)}, {"W4": (1, 2)},
                            Timer("cpu", 0, 1), dtype=torch.float32)
    assert [r["status"] for r in record["rows"]] == ["not reached"] * 4


def test_default_shapes_are_the_workloads():
    assert splits.default_shapes() == {"W1-expand": (16, 32, 128, 48, 48),
                                       "W1-reduce": (16, 128, 32, 48, 48),
                                       "W4": (1, 64, 64, 512, 512)}
