"""The real Triton compiler accepts every kernel for Hopper (sm_90), in every dtype.

The interpreter tests check what the kernels compute; this checks that Triton's own compiler,
down to ptxas, builds them and that they fit the chip's shared memory. No GPU is needed.
"""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")


@pytest.mark.parametrize("index_bits", ["32", "64"])
def test_every_kernel_compiles_for_hopper(index_bits):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run(
        [sys.executable, "-m", "triton_nsr.kernels.compile_check", "--first", "1",
         "--index-bits", index_bits],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "30 compiled" in result.stdout


def test_index_dtype_widens_only_when_needed():
    import triton.language as tl

    from triton_nsr.kernels.autotune import index_dtype

    small = torch.empty(4, 8, 16, 16)
    assert index_dtype([small, None]) == tl.int32
    # A per-sample extent past 2**31 (strides only; no memory is touched).
    huge = torch.empty_strided((2, 3, 2**15, 2**15), (3 * 2**30, 2**30, 2**15, 1),
                               device="meta")
    assert index_dtype([small, huge]) == tl.int64
