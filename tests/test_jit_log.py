"""bench.gpu.jit_log and jit_compare: a JIT compile is recorded, read back and compiled again.

On a GPU the log records what Triton's JIT compiled; here the report's own compile stands in for
the JIT (the same triton.compile, so the same compilation listener). Runs in a subprocess: the
test session runs Triton in interpreter mode, which compiles nothing.
"""

import json

import pytest

from tests.test_hopper_compile import run_compiled_mode

pytest.importorskip("triton")
pytestmark = pytest.mark.slow

LOG_AND_COMPARE = r"""
import json, os, sys
from pathlib import Path
root = Path(sys.argv[1])
os.environ["BENCH_JIT_LOG"] = str(root / "jit")
os.environ["TRITON_CACHE_DIR"] = str(root / "cache")
from bench.gpu import jit_compare, jit_log
from triton_nsr.kernels.inspection.capture import LayerShape, capture, kernels
from triton_nsr.kernels.inspection.compiled import compile_launch
assert jit_log.install("test") is not None
launch = next(l for l in capture(LayerShape("T", 2, 16, 32, 8, 8), "bf16", "channels_last")
              if l.kernel == "router_pool_kernel")
tuner = kernels()[launch.kernel]
compile_launch(tuner, launch, tuner.configs[0])
entries, files = jit_compare.open_log(root / "jit")
faithful = jit_compare.compare(entries, files)
# A log whose warps are not those of the files: the compile made here must disagree.
entries[0]["options"]["num_warps"] = entries[0]["num_warps"] = 2 * entries[0]["num_warps"]
tampered = jit_compare.compare(entries, files)
print(json.dumps({"entries": entries, "faithful": faithful, "tampered": tampered}))
"""


def test_a_logged_compile_is_compiled_again_with_the_same_hash_and_findings(tmp_path):
    out = json.loads(run_compiled_mode("-c", LOG_AND_COMPARE, str(tmp_path)).splitlines()[-1])
    (entry,) = out["entries"]
    assert entry["kernel"] == "router_pool_kernel" and entry["process"] == "test"
    assert not entry["cache_hit"] and entry["source_key"]
    assert set(entry["constexprs"]) >= {"BLOCK_C", "BLOCK_P"}
    assert sorted(p.name for p in (tmp_path / "jit" / "files" / entry["hash"]).iterdir()) == [
        "router_pool_kernel.cubin", "router_pool_kernel.ptx", "router_pool_kernel.ttgir"]
    (row,) = out["faithful"]["rows"]
    assert row["same_hash"] and row["differences"] == {}, row
    assert row["gpu"]["registers"] > 0 and row["gpu"]["error"] is None
    (row,) = out["tampered"]["rows"]
    assert not row["same_hash"], row
