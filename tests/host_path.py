"""The layer's host path under the host-only driver, counted: run as a child process of
tests/test_host_path.py, without TRITON_INTERPRET (Triton compiles for sm_90):

    python -m tests.host_path OUT.json

Each case runs NSRConv2d(backend='triton') on CPU tensors with Triton's real JIT, autotuner
and our known launches, only the kernel launcher stood in for (kernels/inspection/host_only.py),
and records per call after warm-up: launches, Triton JIT runs (its binder), compiles,
autotunes, allocations and every other aten op, host reads of a tensor value, the known
launches' checks of their tensors (a layer plan's signature skips them); the tools' modes
(in which every launch takes the JIT); whether a launch hook gets the launch metadata; and the
arguments each launch handed the launcher, through known launches and through the JIT.
"""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"
os.environ["TRITON_NSR_TUNED_CONFIGS"] = "none"

import torch  # noqa: E402
from triton import knobs  # noqa: E402

from triton_nsr import NSRConv2d  # noqa: E402
from triton_nsr.kernels import autotune, known_launches, tuned_configs  # noqa: E402
from triton_nsr.kernels.inspection.host_only import AtenOps, host_only  # noqa: E402

_tensor_checks = [0]
_tensors_match = known_launches.KnownLaunch.tensors_match


def _counted_tensors_match(entry, tensors):
    _tensor_checks[0] += 1
    return _tensors_match(entry, tensors)


known_launches.KnownLaunch.tensors_match = _counted_tensors_match


def snapshot(counters) -> dict:
    return {**counters.snapshot(), "tensor_checks": _tensor_checks[0]}


def per_call(after: dict, before: dict, calls: int) -> dict:
    return {name: (after[name] - before[name]) / calls for name in after}


def layer_steps(layout: str, autocast: bool):
    """(forward, forward_backward) of W1-expand's channels on a small image."""
    layer = NSRConv2d(32, 128, 3, 4, 16, padding=1, backend="triton")
    x = torch.randn(2, 32, 9, 8)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    inputs = [x, *layer.parameters()]
    grad_output = {}

    def forward():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return layer(x)

    def forward_backward():
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            y = layer(x)
        if "dy" not in grad_output:  # made once: the gradient is the step's input
            grad_output["dy"] = torch.ones_like(y)
        return torch.autograd.grad(y, inputs, grad_output["dy"])

    return forward, forward_backward


def steady_state(counters, step, repeats: int = 3, warmup: int = 2) -> dict:
    """What one call of ``step`` costs after ``warmup`` calls, averaged over ``repeats``."""
    for _ in range(warmup):
        step()
    before = snapshot(counters)
    with AtenOps() as ops:
        for _ in range(repeats):
            step()
    counted = per_call(snapshot(counters), before, repeats)
    counted["allocations"] = ops.allocations / repeats
    counted["host_reads"] = ops.host_reads / repeats
    counted["aten"] = {name: n / repeats for name, n in sorted(ops.names.items())}
    return counted


def launch_arguments(counters, step) -> list:
    """The launcher's arguments of one call of ``step``, each tensor as (its order of first
    use in the call, 16-byte aligned, dtype): fresh buffers get new addresses every call."""
    counters.arguments.clear()
    counters.keep_arguments = True
    try:
        step()
    finally:
        counters.keep_arguments = False
    order: dict = {}
    out = []
    for name, arguments in counters.arguments:
        plain = []
        for value in arguments:
            if isinstance(value, torch.Tensor):
                address = value.data_ptr()
                value = ["tensor", order.setdefault(address, len(order)), address % 16 == 0,
                         str(value.dtype)]
            elif not isinstance(value, (int, float, bool, str, type(None))):
                value = repr(value)
            plain.append(value)
        out.append([name, plain])
    return out


def misaligned_weight(counters) -> dict:
    """A weight 4 bytes off 16-byte alignment, after the aligned weight's calls are known:
    the launches that read it take the JIT once (Triton specialises on alignment), then are
    known, and so is the aligned weight again; a new temperature (a float argument, which
    Triton does not specialise on) takes no JIT."""
    from triton_nsr import nsr_conv2d

    layer = NSRConv2d(32, 128, 3, 4, 16, padding=1, backend="triton")
    x = torch.randn(2, 32, 9, 8, requires_grad=True)
    storage = torch.empty(layer.weight.numel() + 1)
    shifted = storage[1:].view(layer.weight.shape)
    shifted.copy_(layer.weight.detach())
    shifted.requires_grad_()
    temperature = {"value": 1.0}

    def step(weight):
        y = nsr_conv2d(x, weight, layer.bias, layer.mlp[0].weight, layer.mlp[0].bias, 4, 16,
                       padding=1, temperature=temperature["value"], backend="triton")
        return torch.autograd.grad(y, [x, weight], torch.ones_like(y))

    def aligned():
        return step(layer.weight)

    def misaligned():
        return step(shifted)

    steady_state(counters, aligned)
    calls = {}
    for name, call in (("first", misaligned), ("second", misaligned),
                       ("aligned again", aligned)):
        before = snapshot(counters)
        call()
        calls[name] = per_call(snapshot(counters), before, 1)
    temperature["value"] = 0.5
    before = snapshot(counters)
    aligned()
    calls["new temperature"] = per_call(snapshot(counters), before, 1)
    known = launch_arguments(counters, misaligned)
    with tuned_configs.known_launches_suspended():
        jit = launch_arguments(counters, misaligned)
    return {"calls": calls, "arguments": {"known": known, "jit": jit},
            "address": shifted.data_ptr() % 16}


def main(out: str) -> None:
    results = {"cases": {}}
    with host_only() as counters:
        for layout in ("nchw", "channels_last"):
            for precision, autocast in (("fp32", False), ("bf16-autocast", True)):
                forward, forward_backward = layer_steps(layout, autocast)
                results["cases"][f"{layout}-{precision}"] = {
                    "forward": steady_state(counters, forward),
                    "forward_backward": steady_state(counters, forward_backward)}
        forward, forward_backward = layer_steps("nchw", False)
        steady_state(counters, forward_backward)
        modes = {}
        for mode, context in (
                ("fixed config",
                 lambda: tuned_configs.use(tuned_configs.Policy(autotune=False))),
                ("recording", lambda: tuned_configs.use(tuned_configs.Policy(record=[]))),
                ("suspended", tuned_configs.known_launches_suspended)):
            with context():
                modes[mode] = steady_state(counters, forward_backward, repeats=1, warmup=0)
        before = snapshot(counters)
        autotune.clear_launch_plans()
        forward_backward()
        modes["after clear_launch_plans"] = per_call(snapshot(counters), before, 1)
        results["modes"] = modes
        # With a launch hook set, known launches hand it the launch metadata.
        hooked = []
        knobs.runtime.launch_enter_hook.add(hooked.append)
        try:
            forward()
        finally:
            knobs.runtime.launch_enter_hook.remove(hooked.append)
        results["hook"] = [meta.get()["name"] for meta in hooked]
        known = launch_arguments(counters, forward_backward)
        with tuned_configs.known_launches_suspended():
            jit = launch_arguments(counters, forward_backward)
        results["arguments"] = {"known": known, "jit": jit}
        results["misaligned"] = misaligned_weight(counters)
    with open(out, "w") as file:
        json.dump(results, file, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
