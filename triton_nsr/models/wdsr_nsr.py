"""WDSR-NSR: the paper's restoration network (supplementary, section 3) on triton_nsr layers.

Structure, module names and state_dict keys follow the authors' ``models/wdsr_nsr.py`` (repository
ychfan/pt_ir), so their checkpoints load with ``strict=True``::

    body.0                  weight-normed 3x3 conv, channels -> R           (head)
    body.1 .. body.N        ResidualBlock: body.0 NSR 3x3 R -> R*width, body.1 ReLU,
                            body.2 NSR 3x3 R*width -> R, plus the identity
    body.N+1                weight-normed 3x3 conv, R -> scale^2 * channels (tail)
    skip.0                  weight-normed 5x5 conv, channels -> scale^2 * channels, only when the
                            two differ (for scale=1 the skip is the identity)
    shuf.0                  PixelShuffle(scale), only when scale > 1

Every convolution is wrapped in the old-style ``torch.nn.utils.weight_norm`` (parameters
``weight_g`` and ``weight_v``), because that is what the authors' checkpoints store.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from triton_nsr.arguments import check_positive_int, refuse_gradient
from triton_nsr.models.patches import evaluate_patches
from triton_nsr.modules import NSRConv2d

# The authors' eval-time patching: 4-px reflect padding and patches 8 px further apart than the
# padded border alone would need, so neighbouring cores overlap and are averaged.
EVAL_PADDING = 4
EVAL_OVERLAP = 8


def weight_normed(module: nn.Module, magnitude: float) -> nn.Module:
    """Old-style weight norm (``weight_g``/``weight_v``) with every magnitude set, bias zeroed.

    The old API is deprecated in favour of parametrizations, whose state_dict keys differ from
    the authors' checkpoints; its FutureWarning is silenced here only.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = nn.utils.weight_norm(module)
    with torch.no_grad():
        module.weight_g.fill_(magnitude)
        if module.bias is not None:
            module.bias.zero_()
    return module


def check_finite(value, name: str) -> float:
    """``value`` as a finite float, or a ValueError naming it (a TypeError for a tensor that
    requires grad: its gradient would be dropped)."""
    refuse_gradient(value, name)
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def check_block_width(num_residual_units: int, width_multiplier, cardinals: int) -> int:
    """The channels inside a residual block, int(R * width_multiplier), checked: at least one,
    and, like R, divisible by the NSR layers' d cardinals (each layer outputs one of them)."""
    multiplier = check_finite(width_multiplier, "width_multiplier")
    wide = int(num_residual_units * multiplier)
    if multiplier <= 0 or wide < 1:
        raise ValueError(
            f"width_multiplier must give a block at least one channel: int(num_residual_units "
            f"({num_residual_units}) * width_multiplier ({width_multiplier!r})) = {wide}")
    for name, channels in (("num_residual_units", num_residual_units),
                           ("int(num_residual_units * width_multiplier)", wide)):
        if channels % cardinals != 0:
            raise ValueError(f"{name} ({channels}) must be divisible by "
                             f"num_sparsity_cardinals ({cardinals})")
    return wide


class ResidualBlock(nn.Module):
    """x + conv(ReLU(conv(x))) with two weight-normed NSR 3x3 convolutions.

    Input and output (B, R, H, W); the activation inside has int(R * width_multiplier) channels.
    ``res_scale`` is the initial magnitude of the second convolution (the authors use
    1/sqrt(num_blocks), so the residual sum starts near the identity).
    """

    def __init__(
        self,
        num_residual_units: int,
        width_multiplier: float,
        num_sparsity_groups: int,
        num_sparsity_cardinals: int,
        res_scale: float,
        **layer_options,
    ) -> None:
        super().__init__()
        wide = check_block_width(num_residual_units, width_multiplier, num_sparsity_cardinals)
        nsr = {
            "kernel_size": 3,
            "num_sparsity_groups": num_sparsity_groups,
            "num_sparsity_cardinals": num_sparsity_cardinals,
            "padding": 1,
            **layer_options,
        }
        self.body = nn.Sequential(
            weight_normed(NSRConv2d(num_residual_units, wide, **nsr), 2.0),
            nn.ReLU(inplace=True),
            weight_normed(NSRConv2d(wide, num_residual_units, **nsr), res_scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class WDSRNSR(nn.Module):
    """The WDSR network with NSR residual blocks, for super-resolution and restoration.

    Args:
        scale: upscaling factor; 1 gives the denoising / JPEG-artifact-removal variant.
        num_blocks: N residual blocks. num_residual_units: R, the channels between blocks.
        width_multiplier: channels inside a block are int(R * width_multiplier).
        num_sparsity_groups, num_sparsity_cardinals: k and d of every NSR layer.
        num_channels: image channels. image_mean: subtracted from the input, added back.
        lr_patch_size: the training patch side. In eval mode, inputs with both sides at least
            4 * lr_patch_size run the body on lr_patch_size patches (4-px reflect padding, stride
            lr_patch_size - 16) stitched by :func:`evaluate_patches`, as the authors do; the skip
            conv still sees the whole image. None always runs the whole image.
        temperature, backend: set on every NSR layer. device, dtype: of every parameter.

    Input (B, num_channels, H, W), not modified; output (B, num_channels, scale*H, scale*W).

    Example:
        >>> model = WDSRNSR(scale=2, num_blocks=2, num_residual_units=8, num_sparsity_cardinals=4,
        ...                 backend="torch")
        >>> model(torch.rand(1, 3, 24, 24)).shape
        torch.Size([1, 3, 48, 48])
    """

    def __init__(
        self,
        scale: int = 2,
        num_blocks: int = 16,
        num_residual_units: int = 32,
        width_multiplier: float = 4,
        num_sparsity_groups: int = 4,
        num_sparsity_cardinals: int = 16,
        num_channels: int = 3,
        image_mean: float = 0.5,
        lr_patch_size: int | None = 48,
        *,
        temperature: float = 1.0,
        backend: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        scale = check_positive_int(scale, "scale")
        num_blocks = check_positive_int(num_blocks, "num_blocks")
        num_residual_units = check_positive_int(num_residual_units, "num_residual_units")
        num_channels = check_positive_int(num_channels, "num_channels")
        check_block_width(num_residual_units, width_multiplier,
                          check_positive_int(num_sparsity_cardinals, "num_sparsity_cardinals"))
        image_mean = check_finite(image_mean, "image_mean")
        if lr_patch_size is not None:
            lr_patch_size = check_positive_int(lr_patch_size, "lr_patch_size")
            if lr_patch_size <= 2 * EVAL_PADDING + EVAL_OVERLAP:
                raise ValueError(
                    f"lr_patch_size must exceed {2 * EVAL_PADDING + EVAL_OVERLAP} (or be None), "
                    f"got {lr_patch_size}"
                )
        self.scale = scale
        self.image_mean = image_mean
        self.lr_patch_size = lr_patch_size
        factory = {"device": device, "dtype": dtype}
        outputs = scale * scale * num_channels

        def conv(cin: int, cout: int, kernel: int) -> nn.Module:
            return weight_normed(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, **factory), 1.0)

        blocks = [
            ResidualBlock(
                num_residual_units, width_multiplier, num_sparsity_groups, num_sparsity_cardinals,
                1 / math.sqrt(num_blocks), temperature=temperature, backend=backend, **factory,
            )
            for _ in range(num_blocks)
        ]
        self.body = nn.Sequential(
            conv(num_channels, num_residual_units, 3),
            *blocks,
            conv(num_residual_units, outputs, 3),
        )
        self.skip = nn.Sequential(*([conv(num_channels, outputs, 5)] if outputs != num_channels
                                    else []))
        self.shuf = nn.Sequential(*([nn.PixelShuffle(scale)] if scale > 1 else []))

    @classmethod
    def small(cls, scale: int = 2, **kwargs) -> WDSRNSR:
        """The authors' released 'small' models (EDSR+NSR): 16 blocks, R=64, width 1, k=4, d=16.

        Example:
            >>> sum(p.numel() for p in WDSRNSR.small(scale=2).parameters())
            4877812
        """
        options = {"num_blocks": 16, "num_residual_units": 64, "width_multiplier": 1,
                   "num_sparsity_groups": 4, "num_sparsity_cardinals": 16, **kwargs}
        return cls(scale=scale, **options)

    def _uses_patches(self, x: torch.Tensor) -> bool:
        if self.training or self.lr_patch_size is None:
            return False
        return min(x.shape[-2:]) >= 4 * self.lr_patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, scale*H, scale*W); ``x`` itself is left unchanged."""
        x = x - self.image_mean
        if self._uses_patches(x):
            stride = self.lr_patch_size - 2 * EVAL_PADDING - EVAL_OVERLAP
            body = evaluate_patches(self.body, x, self.lr_patch_size, EVAL_PADDING, stride)
        else:
            body = self.body(x)
        return self.shuf(body + self.skip(x)) + self.image_mean

