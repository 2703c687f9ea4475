"""Host time of one NSR layer call on the triton path: everything down to the kernel launcher.

What the Python side costs per call when the GPU work takes no time: our dispatch and
checks, autograd, the allocations, the known-launch lookup or, for a new signature, Triton's
binder, specialisation, cache lookup and compile. Only the launcher that ``CompiledKernel.run``
calls is stood in for, under a driver that answers for an sm_90 device
(kernels/inspection/host_only.py): the kernels are really compiled for sm_90, here, on the first
call. On the training shapes the kernels need a few microseconds of GPU time each, so this is
the floor of the layer's latency.

Timed beside it, in interleaved rounds in the same process, is the floor of any layer: an
autograd.Function that allocates its output (and its inputs' gradients) and calls the same
stand-in launcher as often (3 launches forward, 4 backward), nothing else. Machines differ by
several times in host speed (and one machine from run to run), so the layer's time is quoted
beside the floor's. Counted in one more pass: launches, allocations, Triton JIT runs, compiles,
autotunes and host reads of a tensor value per call.

    python -m bench host-time        # W1-expand's channels, both layouts, 2000 calls each
"""

from __future__ import annotations

import gc
import statistics
import time

import torch

# Host time does not depend on the image or batch size; the channel counts are W1-expand's.
HOST_SHAPE = dict(batch=2, in_channels=32, out_channels=128, size=8, k=4, d=16)
LAYOUTS = ("nchw", "channels_last")
FORWARD_LAUNCHES, BACKWARD_LAUNCHES = 3, 4
# The targets (forward, forward+backward) in microseconds on an idle 2-core machine
# where the floor measured 8 and 62 us: the ratios to the floor are what carries over.
TARGET_US = {"forward": 40.0, "forward_backward": 120.0}
TARGET_FLOOR_US = {"forward": 8.0, "forward_backward": 62.0}


def _floor_function(launcher, arguments: tuple):
    """A no-op layer: allocations and stand-in launches only (see the module doc)."""

    class Floor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, *params):
            ctx.save_for_backward(input, *params)
            output = input.new_empty((input.shape[0], HOST_SHAPE["out_channels"],
                                      *input.shape[2:]))
            for _ in range(FORWARD_LAUNCHES):
                launcher(1, 1, 1, 0, 1, None, None, None, None, input, output, *arguments)
            return output

        @staticmethod
        def backward(ctx, grad_output):
            saved = ctx.saved_tensors
            grads = [torch.empty_like(t) for t in saved]
            for _ in range(BACKWARD_LAUNCHES):
                launcher(1, 1, 1, 0, 1, None, None, None, None, grad_output, grads[0],
                         *arguments)
            return tuple(grads)

    return Floor


def _steps(layout: str, launcher):
    """{name: (layer step, floor step)} for one layout, on CPU tensors."""
    from triton_nsr import NSRConv2d

    s = HOST_SHAPE
    layer = NSRConv2d(s["in_channels"], s["out_channels"], 3, s["k"], s["d"], padding=1,
                      backend="triton")
    x = torch.randn(s["batch"], s["in_channels"], s["size"], s["size"])
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    inputs = [x, *layer.parameters()]
    # A real launch hands the launcher about 40 integers and constexprs besides its tensors.
    floor = _floor_function(launcher, tuple(range(40)))
    dy = {}

    def gradient(y):
        if "dy" not in dy:  # made once: the output gradient is the step's input
            dy["dy"] = torch.ones_like(y)
        return dy["dy"]

    def layer_forward():
        with torch.no_grad():
            layer(x)

    def floor_forward():
        with torch.no_grad():
            floor.apply(*inputs)

    def layer_training():
        y = layer(x)
        torch.autograd.grad(y, inputs, gradient(y))

    def floor_training():
        y = floor.apply(*inputs)
        torch.autograd.grad(y, inputs, gradient(y))

    return {"forward": (layer_forward, floor_forward),
            "forward_backward": (layer_training, floor_training)}


def _median_us(samples_ns: list[int]) -> dict:
    deciles = statistics.quantiles(samples_ns, n=10)
    return {"median_us": statistics.median(samples_ns) / 1e3, "p20_us": deciles[1] / 1e3,
            "p80_us": deciles[7] / 1e3}


def host_time(repeats: int = 2000, warmup: int = 50, layouts=LAYOUTS) -> dict:
    """Per layout and pass: the layer's and the floor's host microseconds per call (median,
    20th and 80th percentiles, interleaved rounds), and the layer's counts per call."""
    import triton

    from triton_nsr.kernels.inspection.host_only import AtenOps, _Launcher, host_only

    rows = []
    with host_only() as counters:
        launcher = _Launcher(counters, "floor")
        for layout in layouts:
            for name, (ours, floor) in _steps(layout, launcher).items():
                for _ in range(warmup):
                    ours()
                    floor()
                before = counters.snapshot()
                with AtenOps() as ops:
                    ours()
                after = counters.snapshot()
                counts = {key: after[key] - before[key] for key in after}
                counts["allocations"] = ops.allocations
                counts["host_reads"] = ops.host_reads
                samples = {"ours": [], "floor": []}
                # As timeit does: a garbage collection inside a timed call is not its cost.
                gc.disable()
                try:
                    for _ in range(repeats):
                        for key, step in (("ours", ours), ("floor", floor)):
                            start = time.perf_counter_ns()
                            step()
                            samples[key].append(time.perf_counter_ns() - start)
                finally:
                    gc.enable()
                rows.append({"layout": layout, "pass": name, "repeats": repeats,
                             "triton_nsr": _median_us(samples["ours"]),
                             "floor": _median_us(samples["floor"]), "per_call": counts})
    return {"triton": triton.__version__, "torch": torch.__version__, "shape": HOST_SHAPE,
            "rows": rows}


def target_verdict(row: dict) -> str:
    """The issue's target for this pass, scaled by this machine's floor against the floor the
    target was set beside, met or missed."""
    name = row["pass"]
    ratio = TARGET_US[name] / TARGET_FLOOR_US[name]
    allowed = ratio * row["floor"]["median_us"]
    ours = row["triton_nsr"]["median_us"]
    return f"{'met' if ours <= allowed else 'MISSED'} ({ours:.0f} vs {allowed:.0f})"


def host_time_table(result: dict) -> str:
    lines = ["| layout | pass | triton_nsr us (p20-p80) | floor us | over the floor | "
             "launches | allocations | JIT runs | compiles | host reads | target |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        ours, floor, counts = row["triton_nsr"], row["floor"], row["per_call"]
        lines.append(
            f"| {row['layout']} | {row['pass']} | {ours['median_us']:.1f} "
            f"({ours['p20_us']:.1f}-{ours['p80_us']:.1f}) | {floor['median_us']:.1f} | "
            f"{ours['median_us'] / floor['median_us']:.1f}x | {counts['launches']} | "
            f"{counts['allocations']} | {counts['jit_runs']} | {counts['compiles']} | "
            f"{counts['host_reads']} | {target_verdict(row)} |")
    return "\n".join(lines)
