"""How a flat program id maps onto the tiles of the per-sample GEMMs (shared by conv kernels).

Grids are one flat axis (axis 0 has no 65535 limit, unlike axes 1 and 2, and B * groups can pass
it) ordered, fastest first: N tile, M tile, then whatever the kernel puts outside (sample and
group, and for the kernel gradient the tap). N fastest means the programs that share an M tile
of the input run back to back and find it in L2.

The host side of every launcher's grid and stride arithmetic lives here too (cdiv,
power_of_2_at_least, contiguous_strides, format_strides): plain integers, shared by the conv,
mixing and router launchers.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def program_tile(pid, size_m, size_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 INDEX_DTYPE: tl.constexpr):
    """(outer index, M tile number, N tile number, M offsets (BLOCK_M,), N offsets (BLOCK_N,))
    of program pid.

    The outer index counts the (sample, group[, tap]) block the tile belongs to.
    """
    outer, m_block, n_block = program_blocks(pid, tl.cdiv(size_m, BLOCK_M),
                                             tl.cdiv(size_n, BLOCK_N))
    offs_m = (m_block * BLOCK_M + tl.arange(0, BLOCK_M)).to(INDEX_DTYPE)
    offs_n = (n_block * BLOCK_N + tl.arange(0, BLOCK_N)).to(INDEX_DTYPE)
    return outer, m_block, n_block, offs_m, offs_n


@triton.jit
def sample_and_group(sample_group, groups, INDEX_DTYPE: tl.constexpr):
    """Split sample * groups + group; the sample comes back int64, to multiply batch strides."""
    sample = (sample_group // groups).to(tl.int64)
    group = (sample_group % groups).to(INDEX_DTYPE)
    return sample, group


@triton.jit
def program_blocks(pid, num_m_blocks, num_n_blocks):
    """(outer index, M block, N block) of program pid, N fastest (see the module docstring)."""
    n_block = pid % num_n_blocks
    m_block = (pid // num_n_blocks) % num_m_blocks
    outer = pid // (num_n_blocks * num_m_blocks)
    return outer, m_block, n_block


@triton.jit
def spatial_tile(m_block, width, BLOCK_M: tl.constexpr, TILE_W: tl.constexpr,
                 INDEX_DTYPE: tl.constexpr):
    """(first row, first column, rows (BLOCK_M,), columns (BLOCK_M,)) of a rows x columns tile.

    The M dimension of a conv GEMM is an image's pixels; a tile of BLOCK_M // TILE_W rows of
    TILE_W columns (rather than BLOCK_M consecutive pixels) is one box of a TMA descriptor at
    every tap. Tiles are numbered row-major over the image; lanes past its edges are masked by
    the caller.
    """
    num_col_tiles = tl.cdiv(width, TILE_W)
    row0 = ((m_block // num_col_tiles) * (BLOCK_M // TILE_W)).to(INDEX_DTYPE)
    col0 = ((m_block % num_col_tiles) * TILE_W).to(INDEX_DTYPE)
    local = tl.arange(0, BLOCK_M).to(INDEX_DTYPE)
    return row0, col0, row0 + local // TILE_W, col0 + local % TILE_W


def spatial_tiles(height: int, width: int, block_m: int, tile_w: int) -> int:
    """How many spatial_tile tiles cover a height x width image."""
    return cdiv(height, block_m // tile_w) * cdiv(width, tile_w)


def cdiv(size: int, block: int) -> int:
    """ceil(size / block) on the host. Not triton.cdiv: that is a constexpr function in Triton
    3.x, microseconds per call, and launchers call this per launch."""
    return -(-size // block)


def power_of_2_at_least(size: int) -> int:
    """The next power of two of size (1 for 0), as plain integers (not triton's constexpr
    function, for the same reason as :func:`cdiv`)."""
    return 1 << max(size - 1, 0).bit_length()


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides torch.empty gives a tensor of this shape."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def format_strides(shape, memory_format: torch.memory_format) -> tuple[int, ...]:
    """The strides torch.empty gives a (B, C, H, W) tensor of this memory format."""
    order = (1, 3, 2, 0) if memory_format == torch.channels_last else (3, 2, 1, 0)
    strides, step = [0] * len(shape), 1
    for dim in order:
        strides[dim] = step
        step *= max(shape[dim], 1)
    return tuple(strides)
