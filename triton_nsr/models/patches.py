"""Patch-based evaluation: run a model on overlapping patches and stitch the outputs back.

This is the evaluation protocol of the authors' restoration toolkit, written anew. NSR layers pool
over their whole input, so a model trained on small patches routes best when it also sees patches
of that size at test time (supplementary, section 4.1). The image is reflect-padded by
``padding``; ``patch_size`` windows are cut from it in five regular grids:

- the centre grid: as many patches as fit at ``stride``, centred (the left-over split in two);
- four border strips, one patch thick, pushed against each side of the padded image: top (aligned
  left), right (aligned top), bottom (aligned right) and left (aligned bottom).

Each output patch loses ``padding`` pixels (times the model's scale) on every side; the remaining
cores are averaged where they overlap, centre-grid cores with weight 1 and strip cores with
``border_weight``. The strips make sure the image border is covered even when the centre grid
leaves a margin, while the low weight keeps the better-centred patches dominant elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from triton_nsr.arguments import refuse_gradient


@dataclass(frozen=True)
class PatchGrid:
    """A regular grid of ``rows`` x ``cols`` patches, ``stride`` apart.

    ``top`` and ``left`` locate the first patch in the reflect-padded image; the same numbers
    locate its core in the unpadded image, because the core starts ``padding`` pixels in.
    """

    top: int
    left: int
    rows: int
    cols: int
    weight: float


def patch_layout(
    height: int, width: int, patch_size: int, padding: int, stride: int, border_weight: float
) -> list[PatchGrid]:
    """The five patch grids covering a ``height`` x ``width`` image (see the module docstring).

    Example:
        >>> [(g.top, g.left, g.rows, g.cols) for g in patch_layout(100, 100, 48, 4, 32, 0.3)]
        [(14, 14, 2, 2), (0, 0, 1, 2), (0, 60, 2, 1), (60, 28, 1, 2), (28, 0, 2, 1)]
    """
    core = patch_size - 2 * padding
    if padding < 0 or core < 1:
        raise ValueError(
            f"need 0 <= padding < patch_size / 2, got padding={padding}, patch_size={patch_size}"
        )
    if not 1 <= stride <= core:
        # A larger stride would leave pixels that no patch core covers.
        raise ValueError(f"stride must be in [1, patch_size - 2 * padding = {core}], got {stride}")
    if padding >= min(height, width):
        raise ValueError(f"reflect padding {padding} needs an image larger than {height}x{width}")
    padded = (height + 2 * padding, width + 2 * padding)
    if min(padded) < patch_size:
        raise ValueError(
            f"image {height}x{width} padded by {padding} is smaller than one {patch_size}-px patch"
        )
    rows, cols = ((size - patch_size) // stride + 1 for size in padded)
    spare_h, spare_w = (
        size - ((n - 1) * stride + patch_size) for size, n in zip(padded, (rows, cols))
    )
    return [
        PatchGrid(spare_h // 2, spare_w // 2, rows, cols, 1.0),
        PatchGrid(0, 0, 1, cols, border_weight),
        PatchGrid(0, padded[1] - patch_size, rows, 1, border_weight),
        PatchGrid(padded[0] - patch_size, spare_w, 1, cols, border_weight),
        PatchGrid(spare_h, 0, rows, 1, border_weight),
    ]


def check_border_weight(border_weight, dtype: torch.dtype) -> float:
    """Return ``border_weight`` as a float if the stitching can use it for ``dtype`` outputs.

    It must be positive and finite: where the centre grid leaves a margin only the strips cover
    the pixels, so 0 (or negative weights summing to 0) would divide 0 by 0 there and inf would
    divide inf by inf. The weights are rescaled so the larger of 1 and ``border_weight`` is 1;
    the smaller must then stay a normal number of ``dtype``.
    """
    refuse_gradient(border_weight, "border_weight")
    try:
        value = float(border_weight)
    except (TypeError, ValueError):
        raise TypeError(f"border_weight must be a number, got {border_weight!r}") from None
    tiny = torch.finfo(dtype).tiny
    if not (math.isfinite(value) and value > 0 and min(value, 1 / value) >= tiny):
        raise ValueError(
            f"border_weight must be a positive finite number within [{tiny:.3g}, {1 / tiny:.3g}] "
            f"for {dtype} images, got {border_weight!r}: pixels that only the border strips "
            "cover would be averaged with a total weight of 0 (or inf)"
        )
    return value


def _grid_extent(grid: PatchGrid, size: int, stride: int) -> tuple[int, int]:
    """Height and width spanned by a grid of ``size``-pixel squares ``stride`` apart."""
    return (grid.rows - 1) * stride + size, (grid.cols - 1) * stride + size


def image_to_patches(
    padded: torch.Tensor, layout: list[PatchGrid], patch_size: int, stride: int
) -> torch.Tensor:
    """Cut the patches of every grid from a padded image.

    Args:
        padded: (B, C, H + 2p, W + 2p), already reflect-padded.

    Returns:
        (B * N, C, patch_size, patch_size), N patches per image, grid after grid, row-major.
    """
    batch, channels = padded.shape[:2]
    pieces = []
    for grid in layout:
        extent_h, extent_w = _grid_extent(grid, patch_size, stride)
        window = padded[..., grid.top:grid.top + extent_h, grid.left:grid.left + extent_w]
        columns = F.unfold(window, patch_size, stride=stride)  # (B, C * P * P, n)
        pieces.append(columns.transpose(1, 2).reshape(batch, -1, channels, patch_size, patch_size))
    return torch.cat(pieces, dim=1).flatten(0, 1)


def patches_to_image(
    cores: torch.Tensor, layout: list[PatchGrid], image_size: tuple[int, int], scale: int,
    stride: int,
) -> torch.Tensor:
    """Weighted average of overlapping patch cores.

    Args:
        cores: (B * N, C, Q, Q), the outputs with their padded border already cropped.
        image_size: (scale * H, scale * W) of the result.
        scale: output pixels per input pixel; grid positions and stride are multiplied by it.

    Returns:
        (B, C, scale * H, scale * W).
    """
    num_patches = sum(grid.rows * grid.cols for grid in layout)
    channels, core = cores.shape[1], cores.shape[-1]
    cores = cores.reshape(-1, num_patches, channels * core * core)
    total = cores.new_zeros(cores.shape[0], channels, *image_size)
    weight = cores.new_zeros(1, 1, *image_size)
    # Only the ratio of the weights matters: the largest becomes 1, so none overflows.
    largest = max(grid.weight for grid in layout)
    start = 0
    for grid in layout:
        count = grid.rows * grid.cols
        extent = _grid_extent(grid, core, scale * stride)
        top, left = scale * grid.top, scale * grid.left
        region = (..., slice(top, top + extent[0]), slice(left, left + extent[1]))
        # F.fold sums the cores of one grid into place; overlaps inside a grid add up too.
        columns = cores[:, start:start + count].transpose(1, 2)
        grid_weight = grid.weight / largest
        total[region] += grid_weight * F.fold(columns, extent, core, stride=scale * stride)
        ones = cores.new_ones(1, core * core, count)
        weight[region] += grid_weight * F.fold(ones, extent, core, stride=scale * stride)
        start += count
    return total / weight


def evaluate_patches(
    model: nn.Module,
    image: torch.Tensor,
    patch_size: int = 48,
    padding: int = 4,
    stride: int = 32,
    border_weight: float = 0.3,
    max_patches: int | None = None,
) -> torch.Tensor:
    """Run ``model`` on overlapping reflect-padded patches of ``image`` and stitch the outputs.

    The model must map a (n, C, P, P) batch to (n, C', s*P, s*P) for an integer scale s (1 for
    restoration, the upscaling factor for super-resolution). The result equals
    ``model(image)`` wherever the model only looks ``padding`` pixels around each output pixel;
    for NSR models it is the authors' evaluation protocol (see the module docstring).

    Args:
        model: any module or callable as above; its train/eval mode is left alone.
        image: (B, C, H, W), H + 2 * padding >= patch_size and likewise W.
        patch_size, padding, stride: patch side, reflect padding and step, in input pixels.
        border_weight: weight of the four border strips' outputs against the centre grid's 1;
            positive and finite (0 would leave the pixels only strips cover without a value),
            within [tiny, 1 / tiny] of the image's dtype (see :func:`check_border_weight`).
        max_patches: run at most this many patches per model call (bounds memory); None: all.

    Returns:
        (B, C', s*H, s*W).

    Example:
        >>> conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")
        >>> image = torch.rand(1, 3, 100, 70)
        >>> torch.allclose(evaluate_patches(conv, image), conv(image), atol=1e-6)
        True
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    dtype = image.dtype if image.is_floating_point() else torch.get_default_dtype()
    border_weight = check_border_weight(border_weight, dtype)
    layout = patch_layout(height, width, patch_size, padding, stride, border_weight)
    padded = F.pad(image, (padding,) * 4, mode="reflect") if padding else image
    patches = image_to_patches(padded, layout, patch_size, stride)
    chunk = max_patches or patches.shape[0]
    outputs = torch.cat([model(part) for part in patches.split(chunk)])
    scale = outputs.shape[-1] // patch_size
    if scale < 1 or outputs.shape[-2:] != (scale * patch_size,) * 2:
        raise ValueError(
            f"model maps {patch_size}x{patch_size} patches to {tuple(outputs.shape[-2:])}; "
            "expected an integer multiple of the patch size"
        )
    crop = scale * padding
    cores = outputs[..., crop:outputs.shape[-2] - crop, crop:outputs.shape[-1] - crop]
    return patches_to_image(cores, layout, (scale * height, scale * width), scale, stride)
