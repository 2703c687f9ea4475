"""Where one layer call goes wrong or slow on a GPU: launcher by launcher, host and device.

The lease times and checks whole layer calls; this command says which part is at fault:

- **repeat**: the layer (forward and every gradient) run twice on the same inputs, each
  launcher call (router pooling, mixing, convolution forward and backward, the mixing and
  router backward) recorded: what it read, what it wrote. A launcher whose inputs are equal in
  both runs but whose outputs differ is the source of a non-deterministic result; its outputs
  are the arguments it wrote and the tensors it returned.
- **host**: cProfile over repeated forward+backward calls: the Python functions where a layer
  call spends its host time, per call.
- **device**: torch.profiler over the same calls: each GPU kernel's time per call, against the
  call's wall time.
- **kernel repeats**: the kernel gradient alone, per config (the per-tap kernel in TF32 also
  with 1 and 2 stages, its pixel loop at the config's depth where the layer runs it at
  conv_bwd_weight.TF32_LOOP_STAGES, and transposed and pipelined: TF32_X_IN_REGISTERS),
  launched four times on the same inputs: which configs write different bits, their error
  against float64 and their time.
- **pool chunks**: W1-expand's forward profiled with the pooling cut into 1 (the layer's
  own), 4 and 9 chunks per sample: whether the pooling's filled grid (16 programs on 132 SMs
  at 1) repays the mixing's re-adding of the chunks, per kernel.

Cases run in that order (repeats and profiles first: they are short), but for the transposed
TF32 kernel's repeats, which come right after the layer repeats (the switch waits on them),
until the budget is spent; the rest are listed as not reached. Writes OUT/probe.json.

    python -m bench.gpu.layer_probe --output-dir OUT [--budget-s 90]
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch

from bench import hardware, providers
from bench.gpu import jit_log, smoke
from bench.results import environment, step_parser
from bench.timing import Timer, summarize
from bench.workloads import W4_256, Workload, main_workloads

RESULT_FILE = "probe.json"
# Every launch a layer call makes, by the launch plan class and method that make it
# (triton_nsr.layer calls them in this order) and the name the probe gives it.
LAUNCHERS = (("router", "RouterPool", "__call__", "router_pool"),
             ("mix", "MixForward", "__call__", "route_and_mix"),
             ("conv", "ConvForward", "__call__", "conv_fwd"),
             ("conv_bwd_weight", "ConvWeightGradient", "launch_parts", "conv_bwd_weight"),
             ("mix", "MixBackward", "__call__", "mix_bwd"),
             ("router", "RouterBackward", "__call__", "router_bwd"),
             ("conv_bwd_input", "ConvInputGradient", "__call__", "conv_bwd_input"))
# (workload, precision, layout): the smoke cases that differed run to run on the H200 first.
REPEAT_CASES = (("W2", "tf32", "nchw"), ("W2", "tf32", "channels_last"),
                ("W4-256", "tf32", "channels_last"), ("W2", "bf16", "channels_last"))
# (workload, precision, layout, pass)
PROFILE_CASES = (("W1-expand", "bf16", "channels_last", "forward_backward"),
                 ("W1-expand", "bf16", "channels_last", "forward"),
                 ("W4", "bf16", "channels_last", "forward_backward"),
                 ("W3", "bf16", "channels_last", "forward"))
# The pooling starts one program per sample on W1 at batch 16 (router.pool_chunks: chunks of at
# least 4096 pixels), 16 of 132 SMs; more chunks fill the GPU but every mixing program adds
# them again. The forward is profiled at these chunk counts per sample (1: the layer's own).
POOL_CHUNK_CASES = (("W1-expand", "bf16", "channels_last", "forward", 1),
                    ("W1-expand", "bf16", "channels_last", "forward", 4),
                    ("W1-expand", "bf16", "channels_last", "forward", 9))
CALLS = 20
TOP_FUNCTIONS = 30


def workloads() -> dict[str, Workload]:
    return {w.name: w for w in [*main_workloads(), W4_256]}


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


@contextlib.contextmanager
def recorded_launchers(calls: list[dict]):
    """Record every launch plan call a layer makes (triton_nsr.layer): name, tensor arguments
    before and after, returned tensors (copies, after a synchronisation)."""
    import importlib

    methods = [(getattr(importlib.import_module(f"triton_nsr.kernels.{module}"), cls), method,
                name) for module, cls, method, name in LAUNCHERS]

    def wrap(name, launch):
        def recorded(self, *args, **kwargs):
            _synchronize()
            before = [t.detach().clone() for t in _tensors((args, kwargs))]
            result = launch(self, *args, **kwargs)
            _synchronize()
            after = [t.detach().clone() for t in _tensors((args, kwargs))]
            calls.append({"name": name, "before": before, "after": after,
                          "result": [t.detach().clone() for t in _tensors(result)]})
            return result
        return recorded

    saved = [(cls, method, getattr(cls, method)) for cls, method, _ in methods]
    for cls, method, name in methods:
        setattr(cls, method, wrap(name, getattr(cls, method)))
    try:
        yield
    finally:
        for cls, method, launch in saved:
            setattr(cls, method, launch)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def _differs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def repeat_case(workload: Workload, precision: str, layout: str, device: str) -> dict:
    """Run the layer twice on the same inputs; per launcher call, whether what it read and what
    it wrote agree between the runs."""
    dtype, tf32 = smoke.PRECISIONS[precision]
    runs = []
    with hardware.tf32_mode(tf32):
        inputs = providers.LayerInputs.create(workload, device, dtype,
                                              layout == "channels_last", tf32)
        forward, leaves = providers.get("triton_nsr").build(inputs)
        output_grad = torch.randn(forward().shape, device=device, dtype=torch.float64)
        for _ in range(2):
            calls: list[dict] = []
            with recorded_launchers(calls):
                results = smoke._run(forward, leaves, output_grad)
            runs.append((results, calls))
    (first, first_calls), (second, second_calls) = runs
    row = {"workload": workload.name, "precision": precision, "layout": layout,
           "results": {name: {"equal": _equal(a, b), "max_abs_difference": _differs(a, b)}
                       for name, a, b in zip(smoke.OUTPUT_NAMES, first, second)},
           "calls": [], "source": None}
    if [c["name"] for c in first_calls] != [c["name"] for c in second_calls]:
        row["source"] = "the two runs called different launchers"
        return row
    for index, (one, two) in enumerate(zip(first_calls, second_calls)):
        # Arguments a call wrote (changed within the run) are its outputs; the rest its inputs.
        written = [not _equal(b, a) for b, a in zip(one["before"], one["after"])]
        inputs_equal = all(_equal(x, y) for x, y, w in zip(one["before"], two["before"], written)
                           if not w)
        outputs = [(x, y) for x, y, w in zip(one["after"], two["after"], written) if w]
        outputs += list(zip(one["result"], two["result"]))
        differences = [_differs(x, y) for x, y in outputs]
        call = {"index": index, "name": one["name"], "inputs_equal": inputs_equal,
                "outputs_equal": all(d == 0 for d in differences),
                "max_abs_difference": max(differences, default=0.0)}
        row["calls"].append(call)
        if row["source"] is None and inputs_equal and not call["outputs_equal"]:
            row["source"] = f"call {index}: {one['name']}"
    return row


# Kernel-gradient repeats: (batch, in, out, height, width) and the configs tried beyond the
# kept ones (stage counts: a pipelining race shows up as a stage-dependent difference).
REPEAT_SHAPES = {"W4-256": (1, 64, 64, 256, 256), "W2": (16, 64, 64, 48, 48)}
REPEAT_LAUNCHES = 4
REPEAT_TIMINGS = 10


def weight_grad_configs(variant: str, precision: str) -> list:
    """The kernel's kept configs, then (per-tap kernel in TF32) each tile with 1 and 2
    stages."""
    import triton

    from triton_nsr.kernels import conv_bwd_weight

    if variant == "per_tap_x_in_registers":
        # Its own tiles (its MMA rows are the BLOCK_N input channels), as the autotuner
        # prunes them for these 64-channel layers.
        tuner = conv_bwd_weight.conv_bwd_weight_kernel
        channels = {"out_group_channels": 64, "in_group_channels": 64, "tuning_pixels": 4096}
        return tuner.early_config_prune(tuner.configs, channels, X_IN_REGISTERS=True)
    tuner = (conv_bwd_weight.conv_bwd_weight_3x3_kernel if variant == "all_taps"
             else conv_bwd_weight.conv_bwd_weight_kernel)
    # The first three: what the autotuner keeps for these 64-channel layers (the JIT log of
    # the first H200 lease, b49e5e9).
    configs = list(tuner.configs[:3])
    if variant == "per_tap" and precision == "tf32":
        configs += [triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=stages)
                    for c in tuner.configs[:3] for stages in (1, 2) if stages != c.num_stages]
    return configs


def weight_grad_repeats(shape, precision: str, layout: str, variant: str, config,
                        device: str, timer: Timer | None = None,
                        splits: int | None = None) -> dict:
    """Launch the kernel gradient REPEAT_LAUNCHES times with one config on the same inputs;
    whether every launch wrote the same bits (partial sums and bias, not added), and the
    median time of a launch (``ms``, by ``timer``: L2 flushed before each). ``splits``: the
    pixel splits to force (None: the layer's rule)."""
    from bench.gpu.diagnose import fixed_config
    from bench.gpu.splits import kernel_gradient_inputs, reference
    from triton_nsr.kernels import autotune, conv_bwd_weight
    from triton_nsr.kernels.inspection.capture import VARIANT_KERNELS, kernel_gradient_variant
    from triton_nsr.kernels.inspection.compiled import config_label

    dtype, tf32 = smoke.PRECISIONS[precision]
    batch, cin, cout = shape[:3]
    x, dy = kernel_gradient_inputs(shape, device, dtype, layout)
    name = VARIANT_KERNELS[variant]
    tuner = getattr(conv_bwd_weight, name)
    setattr(conv_bwd_weight, name, fixed_config(tuner, config))
    # The TF32 per-tap loop runs at the config's depth here (the layer's is
    # TF32_LOOP_STAGES = 1): whether the pipelined loop now repeats is what these launches ask.
    layer_stages = conv_bwd_weight.TF32_LOOP_STAGES
    conv_bwd_weight.TF32_LOOP_STAGES = None
    layer_splits = conv_bwd_weight.weight_grad_splits
    if splits is not None:
        conv_bwd_weight.weight_grad_splits = lambda *args: splits
    autotune.clear_launch_plans()
    row = {"shape": list(shape), "precision": precision, "layout": layout, "variant": variant,
           "config": config_label(config)}
    try:
        results = []

        def launch():
            grad_weight = x.new_full((batch, cout, cin, 3, 3), float("nan"))
            grad_bias = x.new_full((batch, cout), float("nan"))
            return conv_bwd_weight.conv_bwd_weight(dy, x, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                                 1, tf32, grad_weight, grad_bias,
                                                 sum_splits=False)

        with kernel_gradient_variant(variant, dtype), hardware.tf32_mode(tf32):
            for _ in range(REPEAT_LAUNCHES):
                parts, bias_parts = launch()
                results.append((parts.clone(), bias_parts.clone()))
            _synchronize()
            timer = timer or Timer(device, 1, REPEAT_TIMINGS)
            row["ms"] = summarize(timer.samples(launch))["median"]
        first = results[0]
        row["splits"] = first[0].shape[0]
        row["differing_launches"] = sum(not (_equal(w, first[0]) and _equal(b, first[1]))
                                        for w, b in results[1:])
        row["max_abs_difference"] = max(_differs(w, first[0]) for w, _ in results[1:])
        expected = reference(shape, device, dtype)
        total = first[0].double().sum(dim=0)
        row["error"] = float((total - expected).norm() / expected.norm())
    except Exception as error:  # a compile failure or fault is this config's finding
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    finally:
        setattr(conv_bwd_weight, name, tuner)
        conv_bwd_weight.TF32_LOOP_STAGES = layer_stages
        conv_bwd_weight.weight_grad_splits = layer_splits
        autotune.clear_launch_plans()
    return row


def repeat_jobs() -> list[tuple]:
    """(shape name, precision, layout, variant, config) for every kernel-gradient repeat: the
    per-tap kernel in TF32 transposed and pipelined (conv_bwd_weight.TF32_X_IN_REGISTERS, an NCHW
    dy: off in the layer until these repeat) and as the layer runs it (where its pipelined
    results differed), bf16 per-tap and all-taps, both layouts, W4-256 first."""
    jobs = []
    for shape in REPEAT_SHAPES:
        jobs += [(shape, "tf32", "nchw", "per_tap_x_in_registers", config)
                 for config in weight_grad_configs("per_tap_x_in_registers", "tf32")]
        for precision, variant in (("tf32", "per_tap"), ("bf16", "per_tap"),
                                   ("bf16", "all_taps")):
            for layout in ("channels_last", "nchw"):
                jobs += [(shape, precision, layout, variant, config)
                         for config in weight_grad_configs(variant, precision)]
    return jobs


def _step(workload: Workload, precision: str, layout: str, pass_: str, device: str):
    dtype, tf32 = smoke.PRECISIONS[precision]
    inputs = providers.LayerInputs.create(workload, device, dtype, layout == "channels_last",
                                          tf32)
    forward, leaves = providers.get("triton_nsr").build(inputs)
    if pass_ == "forward":
        def step():
            with torch.no_grad():
                return forward()
        return step
    for leaf in leaves:
        leaf.requires_grad_(True)
    grads = [torch.randn_like(o) for o in providers.output_list(forward())]
    return lambda: torch.autograd.grad(providers.output_list(forward()), leaves, grads)


def profile_case(workload: Workload, precision: str, layout: str, pass_: str,
                 device: str, calls: int = CALLS) -> dict:
    """Wall time per call (synchronised, and back to back), the top host functions (cProfile)
    and each GPU kernel's time per call (torch.profiler)."""
    _, tf32 = smoke.PRECISIONS[precision]
    with hardware.tf32_mode(tf32):
        step = _step(workload, precision, layout, pass_, device)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            step()
            torch.cuda.synchronize()
        synchronised_us = (time.perf_counter() - start) / calls * 1e6
        start = time.perf_counter()
        for _ in range(calls):
            step()
        host_us = (time.perf_counter() - start) / calls * 1e6
        torch.cuda.synchronize()
        back_to_back_us = (time.perf_counter() - start) / calls * 1e6

        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
        profiler.disable()
        stats = pstats.Stats(profiler)
        top = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)
        functions = [{"function": f"{Path(file).name}:{line}({name})",
                      "calls_per_layer_call": round(primitive / calls, 2),
                      "self_us": round(own / calls * 1e6, 1),
                      "cumulative_us": round(cumulative / calls * 1e6, 1)}
                     for (file, line, name), (primitive, _, own, cumulative, _)
                     in top[:TOP_FUNCTIONS]]

        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                step()
            torch.cuda.synchronize()
    kernels = {}
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "cuda_time_total", 0)
        if device_us and event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.key] = {"count_per_call": round(event.count / calls, 2),
                                  "us_per_call": round(device_us / calls, 2)}
    return {"workload": workload.name, "precision": precision, "layout": layout,
            "pass": pass_, "calls": calls, "synchronised_us": round(synchronised_us, 1),
            "host_us": round(host_us, 1), "back_to_back_us": round(back_to_back_us, 1),
            "device_kernels_us": round(sum(k["us_per_call"] for k in kernels.values()), 1),
            "kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us_per_call"])),
            "host_functions": functions}


@contextlib.contextmanager
def pool_chunks_fixed(chunks: int):
    """Inside the block the pooling cuts every sample into ``chunks`` chunks (at most one a
    pixel); launch plans are forgotten on entry and exit, so the layer's plans take it."""
    from triton_nsr.kernels import router
    from triton_nsr.kernels.autotune import clear_launch_plans

    layer_own = router.pool_chunks
    router.pool_chunks = lambda batch, pixels: max(1, min(chunks, pixels))
    clear_launch_plans()
    try:
        yield
    finally:
        router.pool_chunks = layer_own
        clear_launch_plans()


def pool_chunks_case(workload: Workload, precision: str, layout: str, pass_: str, chunks: int,
                     device: str) -> dict:
    """profile_case with the pooling cut into ``chunks`` chunks per sample."""
    with pool_chunks_fixed(chunks):
        return profile_case(workload, precision, layout, pass_, device) | {"chunks": chunks}


def probe_jobs() -> list[tuple[str, tuple]]:
    """(kind, case) in the order the probe runs them: the layer repeats, the transposed TF32
    kernel's repeats (the evidence conv_bwd_weight.TF32_X_IN_REGISTERS waits on), the profiles,
    the pooling's chunk counts, then the other kernel repeats."""
    kernel_jobs = repeat_jobs()
    switch = [case for case in kernel_jobs if case[3] == "per_tap_x_in_registers"]
    jobs = [("repeat", case) for case in REPEAT_CASES]
    jobs += [("kernel_repeats", case) for case in switch]
    jobs += [("profile", case) for case in PROFILE_CASES]
    jobs += [("pool_chunks", case) for case in POOL_CHUNK_CASES]
    return jobs + [("kernel_repeats", case) for case in kernel_jobs if case not in switch]


def probe(output_dir: Path, budget_s: float, device: str) -> dict:
    """The cases of probe_jobs, in order, while the budget lasts; writes OUT/probe.json."""
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    known = workloads()
    record = {"environment": environment(device), "budget_s": budget_s, "repeat": [],
              "kernel_repeats": [], "profile": [], "pool_chunks": [], "not_reached": []}
    timer = None  # one L2 flush buffer for every kernel repeat, made at the first
    for kind, case in probe_jobs():
        if time.perf_counter() - started > budget_s:
            record["not_reached"].append([kind, *map(str, case)])
            continue
        try:
            if kind == "repeat":
                row = repeat_case(known[case[0]], case[1], case[2], device)
            elif kind == "kernel_repeats":
                timer = timer or Timer(device, 1, REPEAT_TIMINGS)
                row = weight_grad_repeats(REPEAT_SHAPES[case[0]], *case[1:], device, timer)
            elif kind == "pool_chunks":
                row = pool_chunks_case(known[case[0]], *case[1:], device)
            else:
                row = profile_case(known[case[0]], *case[1:], device)
        except Exception as error:  # one case's failure is a finding; the rest still run
            row = {"case": [str(c) for c in case],
                   "error": f"{type(error).__name__}: {error}"[:400]}
        record[kind].append(row)
        record["elapsed_s"] = round(time.perf_counter() - started, 1)
        (output_dir / RESULT_FILE).write_text(json.dumps(record, indent=1))
    return record


def summary(record: dict) -> str:
    lines = []
    for row in record["repeat"]:
        if "error" in row:
            lines.append(f"repeat {row['case']}: {row['error']}")
            continue
        differing = [n for n, r in row["results"].items() if not r["equal"]]
        lines.append(f"repeat {row['workload']} {row['precision']} {row['layout']}: "
                     f"differ {differing or 'none'}; source {row['source']}")
    for row in record["kernel_repeats"]:
        if "differing_launches" not in row:
            lines.append(f"kernel repeats {row.get('case') or row}: {row.get('error')}")
            continue
        lines.append(f"kernel repeats {row['shape']} {row['precision']} {row['layout']} "
                     f"{row['variant']} {row['config']} S={row['splits']}: "
                     f"{row['differing_launches']} of {REPEAT_LAUNCHES - 1} differ "
                     f"(max {row['max_abs_difference']:.3g}), error {row['error']:.2e}, "
                     f"{row['ms']:.3f} ms")
    for row in record["profile"] + record.get("pool_chunks", []):
        if "error" in row:
            lines.append(f"profile {row['case']}: {row['error']}")
            continue
        chunks = f" pooled in {row['chunks']} chunks" if "chunks" in row else ""
        lines.append(f"profile {row['workload']} {row['precision']} {row['layout']} "
                     f"{row['pass']}{chunks}: synchronised {row['synchronised_us']} us, host "
                     f"{row['host_us']} us, device kernels {row['device_kernels_us']} us")
        for name, kernel in list(row["kernels"].items())[:8]:
            lines.append(f"    {kernel['us_per_call']:8.1f} us x{kernel['count_per_call']} "
                         f"{name[:90]}")
        for function in row["host_functions"][:12]:
            lines.append(f"    self {function['self_us']:7.1f} us cum "
                         f"{function['cumulative_us']:7.1f} us x"
                         f"{function['calls_per_layer_call']} {function['function']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = step_parser(__doc__, 90.0)
    args = parser.parse_args(argv)
    if args.device != "cuda" or not torch.cuda.is_available():
        parser.error("the probe needs a CUDA device")
    jit_log.install("probe")
    record = probe(args.output_dir, args.budget_s, args.device)
    print(summary(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
