"""The paper's restoration network on triton_nsr layers, and its patch-based evaluation."""

from triton_nsr.models.patches import evaluate_patches
from triton_nsr.models.wdsr_nsr import WDSRNSR, ResidualBlock

__all__ = ["ResidualBlock", "WDSRNSR", "evaluate_patches"]
