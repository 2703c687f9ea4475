"""The smallest kernel that shows the shared-buffer ring Triton gives a tile with a second use.

A pipelined loop multiplies A (BLOCK x K) by B (K x BLOCK) with tl.dot (wgmma on sm_90, one group
left in flight) and, by SUM_A, also sums A's rows:

- SUM_A = 0: A feeds only the dot. Its ring has STAGES buffers, as deep as the loop's stages.
- SUM_A = 1: the loaded A tile also feeds the sum. Triton 3.6 and 3.9 give it STAGES - 1
  buffers while still loading STAGES - 1 steps ahead, so the copy of step i + 2's tile goes
  into the buffer step i's in-flight wgmma reads: a race (triton_nsr's TF32 kernel gradient
  wrote different bits launch after launch on an H200 this way).
- SUM_A = 2: the sum reads A from a second load of the same addresses under its own mask
  (the first ``sum_rows`` rows; an identical load would be merged with the dot's), the dot's load
  feeds only the dot, and its ring is full depth again: triton_nsr's workaround
  (kernels/conv_bwd_weight.py, whose second load is masked to the programs that sum).
"""

import triton
import triton.language as tl


@triton.jit
def ring_repro_kernel(a_pointer, b_pointer, out_pointer, sums_pointer, k_size, sum_rows,
                      SUM_A: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    """out = A @ B (BLOCK x BLOCK, float32); sums = A's row sums (SUM_A 1; 2: of the first
    sum_rows rows, zeros below), else zeros."""
    rows = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    sums = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in tl.range(0, k_size, BLOCK, num_stages=STAGES):
        a_tile = a_pointer + rows[:, None] * k_size + (k + rows)[None, :]
        a = tl.load(a_tile)
        b = tl.load(b_pointer + (k + rows)[:, None] * BLOCK + rows[None, :])
        acc = tl.dot(a, b, acc)
        if SUM_A == 1:
            sums += tl.sum(a.to(tl.float32), axis=1)
        elif SUM_A == 2:
            again = tl.load(a_tile, mask=(rows < sum_rows)[:, None], other=0.0)
            sums += tl.sum(again.to(tl.float32), axis=1)
    tl.store(out_pointer + rows[:, None] * BLOCK + rows[None, :], acc)
    tl.store(sums_pointer + rows, sums)


def compile_for_sm90(sum_a: int, stages: int = 3, block: int = 64, k_size: int = 4096):
    """The kernel compiled for sm_90 as a launch on bf16 A and B would compile it (no GPU)."""
    import torch

    from triton_nsr.kernels.inspection.capture import PointerArg
    from triton_nsr.kernels.inspection.compiled import compile_bound

    pointers = (PointerArg(1 << 20, torch.bfloat16), PointerArg(2 << 20, torch.bfloat16),
                PointerArg(3 << 20, torch.float32), PointerArg(4 << 20, torch.float32))
    return compile_bound(ring_repro_kernel, (*pointers, k_size, block),
                         {"SUM_A": sum_a, "BLOCK": block, "STAGES": stages, "num_warps": 4,
                          "num_stages": stages})


if __name__ == "__main__":
    import json

    from triton_nsr.kernels.inspection.compiled import shared_buffer_races

    print(json.dumps({"triton": triton.__version__, **{
        str(mode): shared_buffer_races(compile_for_sm90(mode).asm["ttgir"])
        for mode in (0, 1, 2)}}))
