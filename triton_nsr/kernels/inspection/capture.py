"""Record the kernel launches a real NSR layer call makes, without running a kernel.

The kernel report compiles each kernel with the arguments a real launch gives it, because Triton's
JIT specialises on them (integers equal to 1 become constants, integers and pointers divisible by
16 are marked so, which decides vector widths). This module runs the layer's own launchers on
CPU tensors, forward and backward, with every kernel object swapped for a recorder: the launcher
code computes strides, grids and constexprs exactly as on a GPU, and nothing executes.

    launches = capture(LayerShape("W1-expand", 16, 32, 128, 48, 48), "bf16", "nchw")
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

# An H200 has 132 multiprocessors; launchers that size their grid by the SM count see this.
H200_MULTIPROCESSORS = 132

PRECISIONS = {
    # name: (dtype, allow_tf32)
    "bf16": (torch.bfloat16, False),
    "tf32": (torch.float32, True),
    "fp32": (torch.float32, False),
}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


@dataclass(frozen=True)
class LayerShape:
    """An NSR layer: input (batch, in_channels, height, width), 3x3 kernel, padding 1, k, d."""

    name: str
    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    k: int = 4
    d: int = 16


# The training shapes as bench/workloads.py defines them (tests check they agree): W1's two
# layers, W2 and W4, for the report, the grid-fill table and the kernel-gradient candidates.
W1_EXPAND = LayerShape("W1-expand", 16, 32, 128, 48, 48)
W1_REDUCE = LayerShape("W1-reduce", 16, 128, 32, 48, 48)
W2 = LayerShape("W2", 16, 64, 64, 48, 48)
W4 = LayerShape("W4", 1, 64, 64, 512, 512)


@dataclass(frozen=True)
class PointerArg:
    """A tensor argument reduced to what Triton's JIT specialises on (address and dtype)."""

    address: int
    dtype: torch.dtype

    def data_ptr(self) -> int:
        return self.address


@dataclass
class Launch:
    """One recorded launch: the kernel's name, its arguments, the layer's batch size.

    Tensors are replaced by :class:`PointerArg`, so a launch pickles to worker processes.
    ``named`` maps every argument name of the kernel to its value; ``programs`` the index of
    each of the kernel's autotune configs to the number of programs its grid launches.
    """

    kernel: str
    args: tuple
    kwargs: dict
    named: dict
    batch: int
    programs: dict = field(default_factory=dict)


def _kernel_modules():
    from triton_nsr.kernels import (
        conv,
        conv_bwd_input,
        conv_bwd_weight,
        conv_bwd_weight_3x3,
        conv_bwd_weight_row,
        mix,
        router,
    )

    return (router, mix, conv, conv_bwd_weight, conv_bwd_weight_3x3, conv_bwd_weight_row,
            conv_bwd_input)


def kernels() -> dict:
    """Every tuned kernel of the package by name: the wrappers ``autotune.tuned`` makes."""
    from triton_nsr.kernels.tuned_configs import TunedKernel

    found = {}
    for module in _kernel_modules():
        for value in vars(module).values():
            if isinstance(value, TunedKernel):
                found[value.fn.__name__] = value
    return found


class _Recorder:
    """Stands in for a kernel object: ``kernel[grid](*args, **kwargs)`` appends a Launch."""

    def __init__(self, tuner, sink: list, batch: int) -> None:
        self.tuner = tuner
        self.sink = sink
        self.batch = batch

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            args = tuple(PointerArg(a.data_ptr(), a.dtype) if isinstance(a, torch.Tensor) else a
                         for a in args)
            named = dict(zip(self.tuner.fn.arg_names, args)) | kwargs
            self.sink.append(Launch(self.tuner.fn.__name__, args, kwargs, named, self.batch,
                                    grid_programs(grid, named, self.tuner.configs)))

        return record


def grid_programs(grid, named: dict, configs) -> dict[int, int]:
    """{config index: programs} of a launch's grid (a tuple, or a function of the arguments and
    the config's constexprs, as Triton evaluates it)."""
    programs = {}
    for index, config in enumerate(configs):
        cells = grid(named | config.kwargs) if callable(grid) else grid
        count = 1
        for cell in cells:
            count *= cell
        programs[index] = count
    return programs


def kept_configs(tuner, launch) -> list[int]:
    """Indices of the configs the autotuner tries for this launch (after its pruning)."""
    if tuner.early_config_prune is None:
        return list(range(len(tuner.configs)))
    kept = tuner.early_config_prune(tuner.configs, launch.named)
    return [i for i, config in enumerate(tuner.configs) if any(config is k for k in kept)]


@contextlib.contextmanager
def launchable_on_cpu():
    """Let the launchers take CPU tensors outside the interpreter, sizing their grids for an
    H200's multiprocessors: what a stand-in for the kernels (a recorder, a compile) needs."""
    from triton_nsr.kernels import conv_bwd_weight
    from triton_nsr.kernels.autotune import clear_launch_plans

    patched = []
    for module in _kernel_modules():
        if hasattr(module, "check_launchable"):
            patched.append((module, "check_launchable", module.check_launchable))
            module.check_launchable = lambda *tensors: None
    patched.append((conv_bwd_weight, "multiprocessor_count",
                    conv_bwd_weight.multiprocessor_count))
    conv_bwd_weight.multiprocessor_count = lambda device: H200_MULTIPROCESSORS
    # Decisions cached for CPU tensors outside the block (one split there) are not these.
    clear_launch_plans()
    try:
        yield
    finally:
        for module, name, value in reversed(patched):
            setattr(module, name, value)
        clear_launch_plans()


@contextlib.contextmanager
def recording(batch: int):
    """Swap every kernel for a recorder and let the launchers accept CPU tensors.

    Yields the list that receives the launches.
    """
    sink: list[Launch] = []
    patched = []
    tuners = list(kernels().values())
    for module in _kernel_modules():
        for name, value in list(vars(module).items()):
            if any(value is tuner for tuner in tuners):
                patched.append((module, name, value))
                setattr(module, name, _Recorder(value, sink, batch))
    try:
        with launchable_on_cpu():
            yield sink
    finally:
        for module, name, value in reversed(patched):
            setattr(module, name, value)


# The kernel each forced kernel-gradient variant launches.
VARIANT_KERNELS = {"all_taps": "conv_bwd_weight_3x3_kernel", "per_tap": "conv_bwd_weight_kernel",
                   "per_tap_x_in_registers": "conv_bwd_weight_kernel",
                   "row_of_3": "conv_bwd_weight_row_kernel"}
KERNEL_GRADIENT_VARIANTS = tuple(VARIANT_KERNELS)


@contextlib.contextmanager
def kernel_gradient_variant(variant: str, dtype: torch.dtype | None = None):
    """Force the kernel gradient's kernel inside the block, for a dy of either layout:
    "all_taps" (for ``dtype`` too, when given; the layer takes it for 16-bit NCHW dy only:
    conv_bwd_weight.ALL_TAPS_DTYPES, ALL_TAPS_LAYOUTS), "per_tap" (every dtype; TF32
    untransposed and unpipelined), "per_tap_x_in_registers" (per-tap, a TF32 NCHW dy
    transposed and pipelined: conv_bwd_weight.TF32_X_IN_REGISTERS) or "row_of_3" (a program
    per kernel row of a kernel three taps wide: conv_bwd_weight.ROW_LAYOUTS). The launch plans
    are forgotten before and after."""
    from triton_nsr.kernels import conv_bwd_weight, tuned_configs
    from triton_nsr.kernels.autotune import clear_launch_plans

    if variant not in KERNEL_GRADIENT_VARIANTS:
        raise ValueError(f"kernel gradient variant is one of {KERNEL_GRADIENT_VARIANTS}, not "
                         f"{variant!r}")
    saved = (conv_bwd_weight.ALL_TAPS_DTYPES, conv_bwd_weight.ALL_TAPS_LAYOUTS,
             conv_bwd_weight.TF32_X_IN_REGISTERS, conv_bwd_weight.ROW_LAYOUTS)
    both = ("nchw", "channels_last")
    if variant == "all_taps":
        if dtype is not None:
            conv_bwd_weight.ALL_TAPS_DTYPES = (dtype,)
    else:
        conv_bwd_weight.ALL_TAPS_DTYPES = ()
        conv_bwd_weight.TF32_X_IN_REGISTERS = variant == "per_tap_x_in_registers"
    conv_bwd_weight.ALL_TAPS_LAYOUTS = both
    conv_bwd_weight.ROW_LAYOUTS = both if variant == "row_of_3" else ()
    # The layers' cached decisions are the layer's own choice of kernel: forget them, here and
    # after.
    clear_launch_plans()
    try:
        with tuned_configs.known_launches_suspended():
            yield
    finally:
        clear_launch_plans()
        (conv_bwd_weight.ALL_TAPS_DTYPES, conv_bwd_weight.ALL_TAPS_LAYOUTS,
         conv_bwd_weight.TF32_X_IN_REGISTERS, conv_bwd_weight.ROW_LAYOUTS) = saved


def alternative_launches(shape: LayerShape, precision: str, layout: str) -> list[Launch]:
    """Kernel gradient launches the layer does not take, which the report compiles beside its
    own: the all-taps kernel where the layer takes the per-tap one (16-bit, channels_last), and
    the per-tap kernel X_IN_REGISTERS where the layer runs TF32 unpipelined (an NCHW dy, while
    conv_bwd_weight.TF32_X_IN_REGISTERS is off). Empty elsewhere."""
    from triton_nsr.kernels import conv_bwd_weight

    dtype, allow_tf32 = PRECISIONS[precision]
    if dtype in conv_bwd_weight.ALL_TAPS_DTYPES and layout not in conv_bwd_weight.ALL_TAPS_LAYOUTS:
        variant, kernel = "all_taps", "conv_bwd_weight_3x3_kernel"
    elif (dtype == torch.float32 and allow_tf32 and layout == "nchw"
          and not conv_bwd_weight.TF32_X_IN_REGISTERS):
        variant, kernel = "per_tap_x_in_registers", "conv_bwd_weight_kernel"
    else:
        return []
    with kernel_gradient_variant(variant):
        return [launch for launch in capture(shape, precision, layout)
                if launch.kernel == kernel]


def capture(shape: LayerShape, precision: str, layout: str) -> list[Launch]:
    """The launches of one forward and backward pass of the layer, in launch order
    (:func:`layer_pass`), recorded, not run."""
    with recording(shape.batch) as launches:
        layer_pass(shape, precision, layout)
    return launches


def layer_pass(shape: LayerShape, precision: str, layout: str) -> None:
    """One forward and backward pass of the layer on CPU tensors of ``shape``.

    The layer runs through triton_nsr.ops.nsr_layer as nsr_conv2d's triton backend calls it
    (zero padding 1 as a mask): router, mixing of weight and bias, per-sample convolution, then
    its backward. The parameters are float32 in every precision, as a layer trained under
    autocast keeps them (the kernels read them as they are). Call it where the kernels are
    stood in for (:func:`capture`), never where they would run on CPU tensors.
    """
    from triton_nsr import ops
    from triton_nsr.arguments import check_nsr_conv2d

    dtype, allow_tf32 = PRECISIONS[precision]
    b, c, o, k, d = shape.batch, shape.in_channels, shape.out_channels, shape.k, shape.d

    def leaf(*size, dtype=torch.float32, memory_format=torch.contiguous_format):
        return torch.empty(size, dtype=dtype, memory_format=memory_format).zero_().requires_grad_()

    x = leaf(b, c, shape.height, shape.width, dtype=dtype, memory_format=LAYOUTS[layout])
    weight, bias = leaf(k * o, c, 3, 3), leaf(k * o)
    mlp_weight, mlp_bias = leaf(k * d, c), leaf(k * d)
    # Checked as autocast would see it: the parameters' dtype, the input's shape.
    geometry = check_nsr_conv2d(torch.empty(()).expand(x.shape), weight, bias, mlp_weight,
                                mlp_bias, k, d, 1, 1, 1, 1)
    y = ops.nsr_layer(x, None, weight, bias, mlp_weight, mlp_bias, geometry, 1.0, geometry.pad,
                      allow_tf32)
    y.backward(torch.zeros_like(y))
