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


def _band_shifted_rows(named: dict) -> int:
    """Rows of the shifted tensor the all-taps kernel's row bands read, summed over the bands:
    each band of rows [first, last) reads shifted rows [first - pad, last + 2 - pad), those
    inside the image (the others are masked or TMA's zero fill, no bytes). The rows and the
    shifted tensor are dy and x, or x and dy (TRANSPOSED: the launch's out_* then describe x)."""
    out_h, in_h, pad = named["out_h"], named["in_h"], named["pad_h"]
    band = named["rows_per_split"]
    return sum(min(first + band, out_h) + 2 - pad - max(first - pad, 0)
               - max(min(first + band, out_h) + 2 - pad - in_h, 0)
               for first in range(0, out_h, band))


def l2_to_sm_bytes(kernel: str, named: dict, tiles: dict, batch: int) -> tuple[int, int] | None:
    """(bytes read by the tiling, unique bytes of the operands) of one conv launch, else None.

    ``named`` holds the launch's arguments by name, ``tiles`` the config's block sizes.
    """
    if kernel not in ("conv_fwd_kernel", "conv_bwd_input_kernel", "conv_bwd_weight_kernel",
                      "conv_bwd_weight_3x3_kernel"):
        return None
    batch_groups = batch * named["groups"]
    taps = named.get("kernel_h", 3) * named.get("kernel_w", 3)  # the all-taps kernel: 3x3
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
    elif kernel == "conv_bwd_weight_3x3_kernel":
        # All taps per program: the rows (dy, or x when TRANSPOSED, whose launch passes x as
        # grad_output and its channels as out_group_channels) twice per N tile (each row
        # loaded as kernel row 0's and again as row 2's; row 1's is carried); the shifted
        # tensor three times (column taps) per M tile, over the rows its split's band meets.
        size = _itemsize(named, "input_pointer")
        reads = (2 * og * out_pixels * cdiv(cg, bn)
                 + 3 * cg * _band_shifted_rows(named) * named["out_w"] * cdiv(og, bm))
        unique = og * out_pixels + cg * in_pixels
    else:
        # One (OG, Cg) GEMM over the pixels per tap: dy and x are read again for every tap.
        size = _itemsize(named, "input_pointer")
        reads = taps * gemm_reads(og, cg, out_pixels, bm, bn)
        unique = og * out_pixels + cg * in_pixels
    return batch_groups * reads * size, batch_groups * unique * size



# Hopper rates for the time model (H100/H200 SXM data sheets, dense): bf16 tensor cores against
# float32 FMA, and HBM bandwidth of an H200.
TENSOR_TO_FMA_RATE = 989 / 67
HBM_BYTES_PER_SECOND = 4.8e12


def weight_layout_costs(batch: int, in_channels: int, out_channels: int, height: int,
                        width: int, k: int, block_m: int = 128, itemsize: int = 2,
                        taps: int = 9) -> dict:
    """Two ways to give the conv GEMMs per-sample weights contiguous along K, for one layer.

    packed: the mixing kernel writes the mixed weights in the layout the GEMMs read (once), the
        forward and the input gradient read them: three passes over B*out*Cg*taps elements in
        HBM (TF32's second layout for its input gradient adds a fourth).
    in_conv: every program mixes its weight tile from the k banks: k FMAs per weight element
        per program against BLOCK_M MACs on the tensor cores, i.e. k / BLOCK_M of the main
        loop's MMA time scaled by the tensor-core to FMA rate (no per-sample weights in HBM).
    Returns bytes and microseconds of both, and the two conv GEMMs' MMA time at tensor peak.
    """
    weights = batch * out_channels * in_channels * taps * itemsize
    packed_bytes = 3 * weights
    macs = batch * out_channels * in_channels * taps * height * width
    mma_us = 2 * 2 * macs / (989e12) * 1e6
    in_conv_fraction = k / block_m * TENSOR_TO_FMA_RATE
    return {"packed_bytes": packed_bytes,
            "packed_us": packed_bytes / HBM_BYTES_PER_SECOND * 1e6,
            "mma_us": mma_us,
            "in_conv_fraction": in_conv_fraction,
            "in_conv_us": in_conv_fraction * mma_us}
