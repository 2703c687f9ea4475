"""The main job: the paper's default NSR layer, its cost against a static conv, and one run."""

from __future__ import annotations

import argparse
import time

import torch

from triton_nsr import NSRConv2d
from triton_nsr.flops import nsr_layer_cost, paper_overhead_bound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.parse_args(argv)
    batch, cin, cout, size, k, d = 16, 32, 128, 48, 4, 16
    cost = nsr_layer_cost(batch, cin, cout, size, size, 3, k, d)
    print(f"NSR layer {cin}->{cout}, 3x3, k={k}, d={d}, {size}x{size}, batch {batch}")
    print(f"  params: static {cost.static_params:,}  NSR {cost.nsr_params:,}")
    print(f"  FLOPs:  static {cost.static_flops:,}  NSR {cost.nsr_flops:,}  "
          f"(+{100 * cost.extra_flops_ratio:.3f}%; supplementary bound for c={cin}: "
          f"{100 * paper_overhead_bound(size, cin, 3, k, d):.3f}%)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = NSRConv2d(cin, cout, 3, k, d, padding=1, device=device)
    x = torch.randn(batch, cin, size, size, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        y = layer(x)
    print(f"  ran once on {device} (backend {layer.backend}): output {tuple(y.shape)} "
          f"in {time.perf_counter() - start:.3f} s")
    return 0
