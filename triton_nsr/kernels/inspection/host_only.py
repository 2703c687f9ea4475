"""The layer's whole host path on a machine without a GPU: Triton's JIT for sm_90, launches counted.

A Triton driver that answers for an H200 (sm_90, 132 multiprocessors, device 0, stream 0) and
whose kernel launcher, the C function ``CompiledKernel.run`` calls, only counts: everything
above it runs as on a GPU, on CPU tensors. Our dispatch, autograd, the allocations, the tuned
kernels' table and autotuner (its benchmarks answered by a stand-in), Triton's binder,
specialisation, cache lookup and compile (a real sm_90 compile, kept in Triton's cache), and
our known launches (kernels/known_launches.py). What is left out is what a GPU does: the
launch itself.

    with host_only() as counters:
        layer(x).sum().backward()
    counters.launches, counters.jit_runs, counters.compiles

Run it without TRITON_INTERPRET (Triton must compile), in a process that needs no real GPU
afterwards: the driver stays set until the block ends, and kernels loaded under it are stubs.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import torch

# What the stand-in device reports: an H200's multiprocessors and shared memory per block.
MULTIPROCESSORS = 132
MAX_SHARED_MEMORY = 232448
DEVICE_NAME = "sm_90, host only"


@dataclass
class Counters:
    """What happened under :func:`host_only`: launches by kernel name, kernels loaded, the
    autotuner's benchmark calls, Triton's JIT runs (each binds and specialises every argument)
    and compiles, the arguments of the last launches when ``keep_arguments`` is set."""

    launches: Counter = field(default_factory=Counter)
    loads: int = 0
    benchmarks: int = 0
    jit_runs: int = 0
    compiles: int = 0
    keep_arguments: bool = False
    arguments: list = field(default_factory=list)

    def total_launches(self) -> int:
        return sum(self.launches.values())

    def snapshot(self) -> dict:
        from triton_nsr.kernels import tuned_configs

        return {"launches": self.total_launches(), "jit_runs": self.jit_runs,
                "compiles": self.compiles, "autotunes": tuned_configs.telemetry.autotuned}


# Aten ops that allocate, and those that read a tensor's value on the host (a synchronisation
# on a GPU, and no CUDA graph can capture one).
ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "new_empty",
                         "new_empty_strided", "zeros", "zeros_like", "ones_like", "full",
                         "new_zeros"})
HOST_READS = frozenset({"_local_scalar_dense", "item", "equal", "is_nonzero", "nonzero",
                        "allclose", "tolist", "unique", "masked_select"})


class AtenOps:
    """Counts the aten ops run inside the block by name (a TorchDispatchMode); ``allocations``
    and ``host_reads`` sum the ones that allocate and those that read a value on the host."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        names = self.names = Counter()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                names[func.overloadpacket.__name__] += 1
                return func(*args, **(kwargs or {}))

        self._mode = Mode()

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    @property
    def allocations(self) -> int:
        return sum(n for name, n in self.names.items() if name in ALLOCATIONS)

    @property
    def host_reads(self) -> int:
        return sum(n for name, n in self.names.items() if name in HOST_READS)


class _Launcher:
    """``CompiledKernel.run``'s launcher: counts the launch and calls the launch hooks as
    Triton's launcher does, with the launch metadata it was given."""

    def __init__(self, counters: Counters, name: str) -> None:
        self.counters = counters
        self.name = name

    def __call__(self, grid_x, grid_y, grid_z, stream, function, packed_metadata,
                 launch_metadata, enter_hook, exit_hook, *args) -> None:
        if enter_hook is not None:
            enter_hook(launch_metadata)
        counters = self.counters
        counters.launches[self.name] += 1
        if counters.keep_arguments:
            counters.arguments.append((self.name, (grid_x, grid_y, grid_z, stream, *args)))
        if exit_hook is not None:
            exit_hook(launch_metadata)


class _Utils:
    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def get_device_properties(self, device) -> dict:
        return {"max_shared_mem": MAX_SHARED_MEMORY, "multiprocessor_count": MULTIPROCESSORS,
                "max_num_regs": 65536, "warpSize": 32}

    def load_binary(self, name, kernel, shared, device):
        self.counters.loads += 1
        # (module, function, registers, spills, most threads a block)
        return 1, 1, 0, 0, 1024

    def unload_module(self, module) -> None:
        return None


def _driver_class():
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class HostOnlyDriver(DriverBase):
        """A Triton driver for an sm_90 device that is not there (see the module doc)."""

        def __init__(self, counters: Counters) -> None:
            self.counters = counters
            self.utils = _Utils(counters)

        def launcher_cls(self, src, metadata):
            return _Launcher(self.counters, metadata.name)

        @classmethod
        def is_active(cls) -> bool:
            return True

        def map_python_to_cpp_type(self, ty: str) -> str:
            return ty

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_device_interface(self):
            return torch.cuda

        def get_current_device(self) -> int:
            return 0

        def set_current_device(self, device) -> None:
            return None

        def get_current_stream(self, device=None) -> int:
            return 0

        def get_device_capability(self, device=None):
            return (9, 0)

        def get_benchmarker(self):
            def benchmark(kernel_call, quantiles=None, **kwargs):
                # Every config ties: the autotuner keeps the first it tried.
                self.counters.benchmarks += 1
                return [1.0] * len(quantiles) if quantiles else 1.0

            return benchmark

    return HostOnlyDriver


@contextlib.contextmanager
def host_only():
    """Run the layer's host path for an sm_90 device that is not there; yields the Counters.

    Sets the driver, lets the launchers take CPU tensors (inspection.capture's
    ``launchable_on_cpu``) and names the device ``DEVICE_NAME`` for the tuned-config table,
    which holds no section for it: every shape class autotunes once (the stand-in benchmark
    picks the first pruned config), as on a GPU the table does not cover.
    """
    import triton
    from triton import knobs
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from triton_nsr import functional
    from triton_nsr.kernels import autotune, tuned_configs
    from triton_nsr.kernels.inspection.capture import launchable_on_cpu

    if autotune.INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: the host-only driver runs Triton's compiler")
    counters = Counters()
    jit_run = JITFunction.run

    def counted_run(self, *args, **kwargs):
        counters.jit_runs += 1
        return jit_run(self, *args, **kwargs)

    listener = knobs.compilation.listener

    def counted_compile(**kwargs):
        counters.compiles += 1
        if listener is not None:
            listener(**kwargs)

    JITFunction.run = counted_run
    knobs.compilation.listener = counted_compile
    saved_target = tuned_configs.Target.here
    # backend='triton' takes CPU tensors where the kernels can run on them.
    saved_interpreter = functional.interpreter_enabled
    functional.interpreter_enabled = lambda: True
    # The private slot, not driver.active: on a machine without a GPU, making the default
    # driver raises ("0 active drivers").
    previous = driver._active
    driver.set_active(_driver_class()(counters))
    tuned_configs.Target.here = classmethod(lambda cls: cls(triton.__version__, DEVICE_NAME))
    try:
        with launchable_on_cpu():
            yield counters
    finally:
        tuned_configs.Target.here = saved_target
        functional.interpreter_enabled = saved_interpreter
        JITFunction.run = jit_run
        knobs.compilation.listener = listener
        driver._active = previous
