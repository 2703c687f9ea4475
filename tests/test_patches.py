"""Patch-based evaluation: layout, stitching against a per-patch loop, and exactness for local
models."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.utils import assert_close
from triton_nsr.models import evaluate_patches
from triton_nsr.models.patches import patch_layout


def test_layout_of_a_100_pixel_image():
    # Padded to 108: two 48-px patches at stride 32 span 80, leaving 28 (14 on each side).
    grids = patch_layout(100, 100, 48, 4, 32, 0.3)
    assert [(g.top, g.left, g.rows, g.cols, g.weight) for g in grids] == [
        (14, 14, 2, 2, 1.0),  # centre grid
        (0, 0, 1, 2, 0.3),  # top strip, aligned left
        (0, 60, 2, 1, 0.3),  # right strip, aligned top
        (60, 28, 1, 2, 0.3),  # bottom strip, aligned right
        (28, 0, 2, 1, 0.3),  # left strip, aligned bottom
    ]


@pytest.mark.parametrize("size", [(100, 70), (41, 97), (48, 48), (131, 59)])
def test_patch_cores_cover_every_pixel(size):
    core = 48 - 2 * 4
    covered = torch.zeros(size, dtype=torch.bool)
    for g in patch_layout(*size, 48, 4, 32, 0.3):
        for r in range(g.rows):
            for c in range(g.cols):
                top, left = g.top + 32 * r, g.left + 32 * c
                covered[top:top + core, left:left + core] = True
    assert covered.all()


def loop_oracle(model, image, patch_size, padding, stride, border_weight):
    """Run the model patch by patch at the layout's positions and average the cores in a loop."""
    padded = F.pad(image, (padding,) * 4, mode="reflect")
    total = weight = None
    for g in patch_layout(*image.shape[-2:], patch_size, padding, stride, border_weight):
        for r in range(g.rows):
            for c in range(g.cols):
                top, left = g.top + stride * r, g.left + stride * c
                out = model(padded[..., top:top + patch_size, left:left + patch_size])
                s = out.shape[-1] // patch_size
                if total is None:
                    total = out.new_zeros(*out.shape[:2], s * image.shape[-2], s * image.shape[-1])
                    weight = torch.zeros_like(total)
                q = s * (patch_size - 2 * padding)
                core = out[..., s * padding:s * padding + q, s * padding:s * padding + q]
                region = (..., slice(s * top, s * top + q), slice(s * left, s * left + q))
                total[region] += g.weight * core
                weight[region] += g.weight
    return total / weight


class Global(nn.Module):
    """Not local at all: every output depends on its whole input patch, like an NSR layer."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        y = x * x.mean((-2, -1), keepdim=True) + x.amax((-2, -1), keepdim=True)
        return F.interpolate(y, scale_factor=self.scale, mode="nearest")


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("size,patch,padding,stride", [
    ((61, 53), 24, 4, 8), ((50, 37), 20, 3, 13), ((33, 33), 16, 0, 16),
])
def test_stitching_matches_a_per_patch_loop(scale, size, patch, padding, stride):
    image = torch.randn(2, 3, *size, dtype=torch.float64)
    model = Global(scale)
    expected = loop_oracle(model, image, patch, padding, stride, 0.3)
    actual = evaluate_patches(model, image, patch, padding, stride, border_weight=0.3)
    assert actual.shape == (2, 3, scale * size[0], scale * size[1])
    assert_close(actual, expected)


@pytest.mark.parametrize("scale", [1, 3])
def test_equals_the_whole_image_for_a_model_that_fits_in_the_padding(scale):
    # One reflect-padded 3x3 conv reads one pixel around each output: patches padded by 4 with
    # reflection give exactly the whole-image result, border included, whatever the weights.
    model = nn.Sequential(
        nn.Conv2d(3, 3 * scale * scale, 3, padding=1, padding_mode="reflect",
                  dtype=torch.float64),
        nn.PixelShuffle(scale),
    )
    image = torch.randn(2, 3, 101, 67, dtype=torch.float64)
    with torch.no_grad():
        assert_close(evaluate_patches(model, image, 48, 4, 32), model(image))


def test_chunks_give_the_same_result():
    model = Global(1)
    image = torch.randn(1, 2, 70, 90, dtype=torch.float64)
    whole = evaluate_patches(model, image, 24, 4, 16)
    assert torch.equal(evaluate_patches(model, image, 24, 4, 16, max_patches=5), whole)


def test_gradients_flow_to_the_image():
    image = torch.randn(1, 2, 40, 40, dtype=torch.float64, requires_grad=True)
    evaluate_patches(Global(1), image, 24, 4, 16).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(patch_size=48, padding=4, stride=41), "stride"),
    (dict(patch_size=8, padding=4, stride=1), "padding"),
    (dict(patch_size=64, padding=4, stride=32), "smaller than one 64-px patch"),
])
def test_bad_geometry_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate_patches(nn.Identity(), torch.randn(1, 1, 50, 50), **kwargs)


def test_model_output_must_scale_the_patch():
    with pytest.raises(ValueError, match="integer multiple"):
        evaluate_patches(lambda p: p[..., :-1, :-1], torch.randn(1, 1, 50, 50))


@pytest.mark.parametrize("border_weight,dtype", [
    (0, torch.float64), (0.0, torch.float32), (-0.3, torch.float64), (float("inf"), torch.float64),
    (float("nan"), torch.float64), (1e-50, torch.float32), (1e50, torch.float32),
])
def test_border_weights_without_a_finite_average_are_rejected(border_weight, dtype):
    # 61 x 53 with 24-px patches at stride 8 leaves a margin that only the strips cover.
    image = torch.randn(1, 2, 61, 53, dtype=dtype)
    with pytest.raises(ValueError, match=f"border_weight .* got {re.escape(repr(border_weight))}"):
        evaluate_patches(Global(1), image, 24, 4, 8, border_weight=border_weight)


def test_huge_border_weight_stays_finite_in_float32():
    image = 100 * torch.randn(1, 2, 61, 53, dtype=torch.float64)
    expected = loop_oracle(Global(1), image, 24, 4, 8, 1e37)
    actual = evaluate_patches(Global(1), image.float(), 24, 4, 8, border_weight=1e37)
    assert_close(actual, expected.float())
