"""The GPU timing of the kernel gradient's candidates (bench/gpu/candidates.py) rehearsed on CPU:
kernels in the Triton interpreter, tiny shapes, float32 (the interpreter has no bfloat16
arithmetic); and the stored candidates are the ones the ranking names now."""

import json

import pytest

pytest.importorskip("triton")

from bench.gpu import candidates  # noqa: E402
from bench.timing import Timer  # noqa: E402

TINY = {"tiny": (2, 8, 16, 6, 7)}


def _entry(role, variant, tile, warps, stages, splits):
    return {"shape": "tiny", "role": role, "family": "", "variant": variant,
            "tile": dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), tile)), "num_warps": warps,
            "num_stages": stages, "splits": splits, "modelled_us": 1.0}


def test_every_candidate_is_forced_repeated_checked_and_timed(tmp_path):
    from triton_nsr.kernels import conv_bwd_weight

    rule = conv_bwd_weight.weight_grad_splits
    entries = [_entry("today", "per_tap", (64, 32, 64), 4, 3, 1),
               _entry("candidate", "per_tap", (64, 32, 128), 4, 3, 2),
               _entry("candidate", "all_taps", (64, 32, 32), 8, 4, 3),
               _entry("candidate", "row_of_3", (64, 32, 64), 4, 3, 2)]
    record = candidates.measure(tmp_path, 600, "cpu", entries, TINY, precision="tf32",
                                timer=Timer("cpu", 0, 1))
    rows = record["rows"]
    assert [r["status"] for r in rows] == ["measured"] * 4, rows
    # The forced tile and split count are the ones launched: S pieces of partial sums.
    assert [r["config"] for r in rows] == ["BLOCK_M=64 BLOCK_N=32 BLOCK_K=64 w4 s3",
                                           "BLOCK_M=64 BLOCK_N=32 BLOCK_K=128 w4 s3",
                                           "BLOCK_M=64 BLOCK_N=32 BLOCK_K=32 w8 s4",
                                           "BLOCK_M=64 BLOCK_N=32 BLOCK_K=64 w4 s3"]
    assert [r["splits"] for r in rows] == [1, 2, 3, 2]
    assert all(r["differing_launches"] == 0 and r["error"] < 1e-5 for r in rows), rows
    assert json.loads((tmp_path / candidates.RESULT_FILE).read_text())["rows"] == rows
    assert "model 1.0" in candidates.summary(record)
    # The layer's own split rule is back afterwards.
    assert conv_bwd_weight.weight_grad_splits is rule


def test_rows_past_the_budget_are_not_reached(tmp_path):
    entries = [_entry("today", "per_tap", (64, 32, 64), 4, 3, 1)]
    record = candidates.measure(tmp_path, 0.0, "cpu", entries, TINY, precision="tf32",
                                timer=Timer("cpu", 0, 1))
    assert [r["status"] for r in record["rows"]] == ["not reached"]


def test_the_stored_candidates_are_what_the_ranking_names():
    from triton_nsr.kernels.inspection import weight_grad_candidates as wgc

    entries, shapes = candidates.lease_entries()
    model, _, _ = wgc.models()
    assert entries == wgc.lease_candidates(wgc.rank(model, wgc.newest_compiles(
        wgc.load_stored())))
    # Today's launch and three candidates for every training shape, W1-expand first.
    assert [e["shape"] for e in entries] == [name for name in shapes for _ in range(4)]
    assert [e["role"] for e in entries[:4]] == ["today", "candidate", "candidate", "candidate"]
    assert all(e["variant"] in ("per_tap", "all_taps", "row_of_3") for e in entries)


def test_every_shapes_today_and_best_come_before_the_rest():
    entries = [{"shape": shape, "role": role} for shape in ("A", "B")
               for role in ("today", "1", "2", "3")]
    assert [(e["shape"], e["role"]) for e in candidates.in_priority(entries)] == [
        ("A", "today"), ("A", "1"), ("B", "today"), ("B", "1"), ("A", "2"), ("B", "2"),
        ("A", "3"), ("B", "3")]
