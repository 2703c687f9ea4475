"""Bytes each kernel's tiling moves from L2 to the SMs, from a recorded launch and a config.

A GEMM program that owns a (BLOCK_M, BLOCK_N) output tile reads its whole A row panel and B
column panel, so over all programs A is read cdiv(N, BLOCK_N) times and B cdiv(M, BLOCK_M)
times. Masked-off lanes are not counted (the tiles of a dimension cover it exactly once), halo
rows of the implicit GEMM are (each tap reads its own shifted A panel). The unique bytes are
what the operands hold in memory; the ratio shows what the tiling re-reads.
"""

from __future__ import annotations

from triton import cdiv


def _itemsize(named: dict, pointer: str) -> int:
    return named[pointer].dtype.itemsize


def gemm_reads(m: int, n: int, k: int, block_m: int, block_n: int) -> int:
    """Elements a tiled (M, K) x (K, N) GEMM reads: A once per N tile, B once per M tile."""
    return k * (m * cdiv(n, block_n) + n * cdiv(m, block_m))


def l2_to_sm_bytes(kernel: str, named: dict, tiles: dict, batch: int) -> tuple[int, int] | None:
    """(bytes read by the tiling, unique bytes of the operands) of one conv launch, else None.

    ``named`` holds the launch's arguments by name, ``tiles`` the config's block sizes.
    """
    if kernel not in ("conv_fwd_kernel", "conv_bwd_input_kernel", "conv_bwd_weight_kernel"):
        return None
    batch_groups = batch * named["groups"]
    taps = named["kernel_h"] * named["kernel_w"]
    cg, og = named["in_group_channels"], named["out_group_channels"]
    in_pixels = named["in_h"] * named["in_w"]
    out_pixels = named["out_h"] * named["out_w"]
    bm, bn = tiles["BLOCK_M"], tiles["BLOCK_N"]
    if kernel == "conv_fwd_kernel":
        size = _itemsize(named, "input_pointer")
        reads = gemm_reads(out_pixels, og, taps * cg, bm, bn)
        unique = cg * in_pixels + og * cg * taps
    elif kernel == "conv_bwd_input_kernel":
        size = _itemsize(named, "grad_output_pointer")
        reads = gemm_reads(in_pixels, cg, taps * og, bm, bn)
        unique = og * out_pixels + og * cg * taps
    else:
        # One (OG, Cg) GEMM over the pixels per tap: dy and x are read again for every tap.
        size = _itemsize(named, "input_pointer")
        reads = taps * gemm_reads(og, cg, out_pixels, bm, bn)
        unique = og * out_pixels + cg * in_pixels
    return batch_groups * reads * size, batch_groups * unique * size

