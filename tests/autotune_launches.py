"""Every tuned kernel through Triton's own autotuner, on real layer launches, compiled for sm_90.

Run as a child process of tests/test_autotune_launches.py, without TRITON_INTERPRET (the
autotuner is built by the installed Triton, as on a GPU):

    python -m tests.autotune_launches OUT.json [SHAPE ...]

For each layer shape, precision and layout, the layer runs forward and backward on CPU tensors
(kernels.capture.layer_pass; for TF32 NCHW also with the transposed kernel gradient the layer
can be switched to) with no tuned-config table, so every launch of a new shape class takes
``TunedKernel``'s autotune path: ``triton.autotune`` built over the kernel's configs, key and
pruner, Triton computing the key and pruning with the launch's real arguments, our ``do_bench``
wrapper calling ``triton.testing.do_bench``. Only the GPU is stood in for: ``JITFunction.run``
compiles the launch for sm_90 with the arguments Triton's autotuner hands it
(kernels.compiled.compile_bound) instead of launching it, and ``do_bench`` checks its call
against the real signature, runs the first pruned config's call (one compile a launch) and
ranks it first. One record per launch goes to OUT.json for the test to check.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import traceback
import warnings

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"
os.environ["TRITON_NSR_TUNED_CONFIGS"] = "none"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

from triton_nsr.kernels import tuned_configs  # noqa: E402
from triton_nsr.kernels.inspection.capture import (  # noqa: E402
    LAYOUTS,
    PRECISIONS,
    LayerShape,
    kernel_gradient_variant,
    kernels,
    launchable_on_cpu,
    layer_pass,
)
from triton_nsr.kernels.inspection.compiled import compile_bound, config_label  # noqa: E402

SHAPES = {
    "W1-expand": LayerShape("W1-expand", 16, 32, 128, 48, 48),
    "odd": LayerShape("odd", 3, 24, 48, 37, 29),
}
# Short benchmarks, as a lease sets them, so that the autotuner gets our do_bench wrapper.
POLICY = tuned_configs.Policy(autotune=True, warmup_ms=1, rep_ms=1)
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


class Driver:
    """Stands in for the GPU under every tuned kernel and keeps one record per launch."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.case: dict = {}
        self.current: dict | None = None
        self._real_do_bench = triton.testing.do_bench

    def install(self) -> None:
        triton.testing.do_bench = self._do_bench
        tuned_configs.Target.here = classmethod(
            lambda cls: cls(triton.__version__, "sm_90, compiled on the CPU"))
        for kernel in kernels().values():
            kernel.fn.run = self._runner(kernel)
            kernel._launch = self._launcher(kernel, kernel._launch)
            if kernel.early_config_prune is not None:
                kernel.early_config_prune = self._pruner(kernel.early_config_prune)

    def _launcher(self, kernel, launch):
        """TunedKernel._launch, recorded: our shape class, then Triton's key if it tuned."""
        def recorded(grid, args, kwargs):
            tuner = kernel._autotuners.get((POLICY.warmup_ms, POLICY.rep_ms))
            known = set(tuner.cache) if tuner is not None else set()
            self.current = {**self.case, "kernel": kernel.name, "benched": 0, "compiled": [],
                            "ours": kernel.shape_class(dict(zip(kernel.arg_names, args))
                                                       | kwargs)}
            self.records.append(self.current)
            try:
                launch(grid, args, kwargs)
            except Exception:  # noqa: BLE001 - the test reports it with the launch
                self.current["error"] = traceback.format_exc(limit=6)
            tuner = kernel._autotuners.get((POLICY.warmup_ms, POLICY.rep_ms))
            new = [key for key in (tuner.cache if tuner is not None else ()) if key not in known]
            ours = self.current["ours"]
            self.current.update(ours=repr(ours), triton_key=repr(new[0]) if new else None,
                                keys_equal=new[0] == ours if new else None)
            self.current = None

        return recorded

    def _pruner(self, prune):
        def pruned(configs, named_args, **kwargs):
            kept = prune(configs, named_args, **kwargs)
            self.current["pruned"] = [config_label(c) for c in kept]
            return kept

        return pruned

    def _do_bench(self, fn, *args, **kwargs):
        """triton.testing.do_bench's stand-in: the call must bind to the real signature; the
        launch's first config is compiled (through fn) and wins, the others rank after it."""
        inspect.signature(self._real_do_bench).bind(fn, *args, **kwargs)
        self.current["benched"] += 1
        if self.current["benched"] > 1:
            return [2.0, 2.0, 2.0]
        fn()
        return [1.0, 1.0, 1.0]

    def _runner(self, kernel):
        """JITFunction.run's stand-in: compile for sm_90 what would have launched."""
        config_names = {*kernel.configs[0].kwargs, *LAUNCH_OPTIONS}

        def run(*args, grid, warmup, **kwargs):
            compiled = compile_bound(kernel.fn, args, kwargs)
            self.current["compiled"].append({
                "name": compiled.metadata.name,
                "fp_fusion": compiled.metadata.enable_fp_fusion,
                "config": {n: v for n, v in kwargs.items() if n in config_names}})

        return run

    def layer(self, shape: LayerShape, precision: str, layout: str, variant=None) -> None:
        """One forward and backward pass, every kernel forgetting the shape classes it chose."""
        self.case = {"shape": shape.name, "precision": precision, "layout": layout,
                     "variant": variant}
        for kernel in kernels().values():
            kernel._chosen.clear()
            for tuner in kernel._autotuners.values():
                tuner.cache.clear()
        with tuned_configs.use(POLICY), launchable_on_cpu():
            if variant is None:
                layer_pass(shape, precision, layout)
            else:
                with kernel_gradient_variant(variant):
                    layer_pass(shape, precision, layout)


def main(out: str, shape_names: list[str]) -> None:
    # Triton 3.9 warns at a compile that leaves FP fusion to its default, which 3.10 changes:
    # every launch states it (tuned_configs.COMPILE_OPTIONS), so the warning is an error here.
    warnings.filterwarnings("error", message="TRITON_DEFAULT_FP_FUSION")
    driver = Driver()
    built = {}
    for name, kernel in kernels().items():
        try:
            kernel.autotuner()
            built[name] = None
        except Exception as error:  # noqa: BLE001 - reported per kernel
            built[name] = f"{type(error).__name__}: {error}"
    driver.install()
    for shape_name in shape_names or list(SHAPES):
        for precision in PRECISIONS:
            for layout in LAYOUTS:
                driver.layer(SHAPES[shape_name], precision, layout)
        driver.layer(SHAPES[shape_name], "tf32", "nchw", "per_tap_x_in_registers")
    configs = {name: [config_label(c) for c in kernel.configs]
               for name, kernel in kernels().items()}
    with open(out, "w") as file:
        json.dump({"triton": triton.__version__, "torch": torch.__version__, "built": built,
                   "configs": configs, "records": driver.records}, file, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
