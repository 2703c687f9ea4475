"""Providers: named ways to compute (part of) an NSR layer, registered in one table.

A provider turns a workload's tensors (:class:`LayerInputs`) into a forward function and names
the tensors whose gradients a training step needs; the harness times it. ``part`` says which
piece of the layer it computes, which fixes its FLOPs and bytes:

- 'layer':  the whole NSR layer (pool, MLP, softmax, mix, per-sample conv)
- 'mix':    the kernel mixing alone, routing (B, k, d) -> weight_b (B, out, C, kh, kw)
- 'conv':   the per-sample convolution alone, given weight_b
- 'static': one convolution with a kernel shared by the batch (what NSR replaces: the floor)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.workloads import Workload
from triton_nsr import reference
from triton_nsr.arguments import ConvGeometry, check_nsr_conv2d, conv_output_size
from triton_nsr.flops import LayerCost

Outputs = torch.Tensor | tuple[torch.Tensor, ...]


def output_list(outputs: Outputs) -> list[torch.Tensor]:
    """A provider's output(s) as a list, without the None a bias-free mix returns."""
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return [o for o in outputs if o is not None]


@dataclass
class LayerInputs:
    """The tensors of one workload, shared by every provider so they all see the same data.

    x (B, C, H, W) in the requested memory layout; weight (k*out, C, kh, kw); bias (k*out,);
    mlp_weight (k*d, C); mlp_bias (k*d,); routing (B, k, d); weight_b (B, out, C, kh, kw);
    bias_b (B, out); static_weight (out, C, kh, kw) and static_bias (out,).
    """

    workload: Workload
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    mlp_weight: torch.Tensor
    mlp_bias: torch.Tensor
    routing: torch.Tensor
    weight_b: torch.Tensor
    bias_b: torch.Tensor
    static_weight: torch.Tensor
    static_bias: torch.Tensor
    allow_tf32: bool

    @classmethod
    def create(cls, workload: Workload, device: str, dtype: torch.dtype,
               channels_last: bool, allow_tf32: bool) -> LayerInputs:
        w = workload
        opts = {"device": device, "dtype": dtype}
        kernel = (w.kernel_size, w.kernel_size)
        # Scaled like a Kaiming init so bfloat16 outputs stay in range.
        scale = (w.in_channels * w.kernel_size**2) ** -0.5
        x = torch.randn(w.batch, w.in_channels, w.height, w.width, **opts)
        weight = torch.randn(w.k * w.out_channels, w.in_channels, *kernel, **opts) * scale
        bias = torch.randn(w.k * w.out_channels, **opts) * scale
        mlp_weight = torch.randn(w.k * w.d, w.in_channels, **opts) * w.in_channels**-0.5
        mlp_bias = torch.zeros(w.k * w.d, **opts)
        with torch.no_grad():
            routing = reference.routing_weights(x, mlp_weight, mlp_bias, w.k, w.d)
            weight_b, bias_b = reference.mix_kernels(routing, weight, bias)
        static_weight = weight[: w.out_channels].clone()
        static_bias = bias[: w.out_channels].clone()
        if channels_last:
            # What model.to(memory_format=torch.channels_last) does to activations and kernels.
            x = x.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
            static_weight = static_weight.contiguous(memory_format=torch.channels_last)
        return cls(w, x, weight, bias, mlp_weight, mlp_bias, routing, weight_b, bias_b,
                   static_weight, static_bias, allow_tf32)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor here: the ones a provider may have made require gradients."""
        return [self.x, self.weight, self.bias, self.mlp_weight, self.mlp_bias, self.routing,
                self.weight_b, self.bias_b, self.static_weight, self.static_bias]

    @property
    def geometry(self) -> ConvGeometry:
        """The layer's geometry, from the same checks nsr_conv2d runs."""
        w = self.workload
        return check_nsr_conv2d(self.x, self.weight, self.bias, self.mlp_weight, self.mlp_bias,
                                w.k, w.d, 1, w.padding, 1, 1)


@dataclass(frozen=True)
class Provider:
    """A named implementation: ``build(inputs)`` returns (forward function, gradient leaves).

    ``requires`` is a module that must import for the provider to run (None: always runs);
    ``needs_triton`` marks providers that run Triton kernels (CUDA, or the CPU interpreter);
    ``compiles``, those built with torch.compile; ``graphed``, those that replay CUDA graphs
    (``mode="reduce-overhead"``: CUDA only).
    """

    name: str
    part: str
    description: str
    build: Callable[[LayerInputs], tuple[Callable[[], Outputs], list[torch.Tensor]]]
    requires: str | None = None
    needs_triton: bool = False
    compiles: bool = False
    graphed: bool = False


PROVIDERS: dict[str, Provider] = {}
PARTS = ("layer", "mix", "conv", "static")


def register(provider: Provider) -> Provider:
    if provider.part not in PARTS:
        raise ValueError(f"provider {provider.name!r}: part must be one of {PARTS}")
    PROVIDERS[provider.name] = provider
    return provider


def get(name: str) -> Provider:
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}; choose from {sorted(PROVIDERS)}")
    return PROVIDERS[name]


def unavailable_reason(provider: Provider, device: str,
                       dtype: torch.dtype | None = None) -> str | None:
    """Why ``provider`` cannot run on ``device`` in ``dtype`` here, or None when it can."""
    if provider.graphed and device != "cuda":
        return "CUDA graphs need CUDA"
    if provider.needs_triton and device != "cuda":
        from triton_nsr.functional import interpreter_enabled

        if not interpreter_enabled():
            return "needs CUDA or the Triton interpreter (TRITON_INTERPRET=1)"
        if dtype == torch.bfloat16:
            return "Triton's CPU interpreter has no bfloat16 arithmetic"
    if provider.requires is not None:
        try:
            importlib.import_module(provider.requires)
        except ImportError as error:
            return f"{provider.requires} is not importable ({error})"
        # Broken rather than missing: still a reason to skip, with what went wrong.
        except Exception as error:
            return f"importing {provider.requires} failed ({type(error).__name__}: {error})"
    return None


def reference_part(part: str, inputs: LayerInputs) -> tuple[Callable[[], Outputs],
                                                               list[torch.Tensor]]:
    """The plain-PyTorch version of ``part``: (forward function, gradient leaves).

    'layer' is the paper's formulation (triton_nsr.reference); the Triton providers use the
    same leaves as the part they replace.
    """
    w = inputs.workload
    if part == "layer":
        def forward() -> Outputs:
            return reference.nsr_conv2d(
                inputs.x, inputs.weight, inputs.bias, inputs.mlp_weight, inputs.mlp_bias,
                w.k, w.d, padding=w.padding,
            )

        return forward, [inputs.x, inputs.weight, inputs.bias, inputs.mlp_weight,
                         inputs.mlp_bias]
    if part == "mix":
        return (lambda: reference.mix_kernels(inputs.routing, inputs.weight, inputs.bias),
                [inputs.routing, inputs.weight, inputs.bias])
    if part == "conv":
        g = inputs.geometry
        return (lambda: reference.per_sample_conv2d(inputs.x, inputs.weight_b, inputs.bias_b,
                                                    g.stride, w.padding, g.dilation, g.groups),
                [inputs.x, inputs.weight_b, inputs.bias_b])
    if part == "static":
        return (lambda: F.conv2d(inputs.x, inputs.static_weight, inputs.static_bias,
                                 padding=w.padding),
                [inputs.x, inputs.static_weight, inputs.static_bias])
    raise ValueError(f"unknown part {part!r}; choose from {PARTS}")


def _build_paper(inputs: LayerInputs):
    return reference_part("layer", inputs)


def _build_paper_compiled(inputs: LayerInputs):
    forward, leaves = reference_part("layer", inputs)
    # Dynamo caches compiled graphs on the code object, with a small recompile limit; a reset
    # per case compiles exactly this shape, dtype and layout rather than falling back to eager.
    torch._dynamo.reset()
    return torch.compile(forward, dynamic=False), leaves


def _build_triton_nsr(inputs: LayerInputs):
    from triton_nsr import nsr_conv2d

    w = inputs.workload
    _, leaves = reference_part("layer", inputs)

    def forward() -> torch.Tensor:
        return nsr_conv2d(
            inputs.x, inputs.weight, inputs.bias, inputs.mlp_weight, inputs.mlp_bias, w.k, w.d,
            padding=w.padding, backend="triton",
        )

    return forward, leaves


def _build_triton_mix(inputs: LayerInputs):
    from triton_nsr import ops

    _, leaves = reference_part("mix", inputs)
    return (lambda: ops.mix_kernels(inputs.routing, inputs.weight, inputs.bias)), leaves


def _build_triton_conv(inputs: LayerInputs):
    from triton_nsr import ops

    g = inputs.geometry
    _, leaves = reference_part("conv", inputs)

    def forward() -> torch.Tensor:
        return ops.per_sample_conv2d(
            inputs.x, inputs.weight_b, inputs.bias_b, g.stride, g.pad, g.dilation, g.groups,
            inputs.allow_tf32,
        )

    return forward, leaves


def _build_static_conv(inputs: LayerInputs):
    return reference_part("static", inputs)


def graphed(build):
    """``build``'s forward under torch.compile(mode="reduce-overhead"): Inductor's graph, its
    forward and backward replayed as CUDA graphs (cudagraph trees) after the warm-up calls."""

    def build_graphed(inputs: LayerInputs):
        forward, leaves = build(inputs)
        # As _build_paper_compiled: this shape, dtype and layout, not a recompile limit's.
        torch._dynamo.reset()
        return torch.compile(forward, mode="reduce-overhead", dynamic=False), leaves

    return build_graphed


register(Provider("paper", "layer", "the paper's formulation, eager: einsum mixing and one "
                  "grouped F.conv2d over the batch", _build_paper))
register(Provider("paper_compiled", "layer", "the paper's formulation under torch.compile",
                  _build_paper_compiled, compiles=True))
register(Provider("triton_nsr", "layer", "triton_nsr.nsr_conv2d(backend='triton')",
                  _build_triton_nsr, requires="triton_nsr.ops", needs_triton=True))
register(Provider("triton_mix", "mix", "the Triton mixing kernel alone (ops.mix_kernels)",
                  _build_triton_mix, requires="triton_nsr.ops", needs_triton=True))
register(Provider("triton_conv", "conv", "the Triton per-sample convolution alone "
                  "(ops.per_sample_conv2d)", _build_triton_conv, requires="triton_nsr.ops",
                  needs_triton=True))
register(Provider("static_conv", "static", "one F.conv2d with a kernel shared by the batch "
                  "(cuDNN on GPU): the floor NSR is measured against", _build_static_conv))
# The three a user compares, each CUDA-graphed (torch.compile, mode="reduce-overhead").
register(Provider("paper_graphed", "layer", "the paper's formulation, CUDA-graphed",
                  graphed(_build_paper), compiles=True, graphed=True))
register(Provider("triton_nsr_graphed", "layer", "triton_nsr, CUDA-graphed",
                  graphed(_build_triton_nsr), requires="triton_nsr.ops", needs_triton=True,
                  compiles=True, graphed=True))
register(Provider("static_conv_graphed", "static", "the static convolution, CUDA-graphed",
                  graphed(_build_static_conv), compiles=True, graphed=True))


def part_flops_and_bytes(part: str, workload: Workload, cost: LayerCost,
                         itemsize: int) -> tuple[int, int]:
    """Analytic forward FLOPs and minimum bytes of one ``part`` of the layer.

    Bytes count every tensor the part reads or writes once (the roofline's lower bound).
    """
    w = workload
    kernel_params = cost.static_params
    out_h, out_w = conv_output_size((w.height, w.width), (w.kernel_size,) * 2, (1, 1),
                                    (w.padding,) * 4, (1, 1))
    activations = w.batch * (w.in_channels * w.height * w.width + w.out_channels * out_h * out_w)
    if part == "layer":
        return cost.nsr_flops, cost.nsr_bytes
    if part == "static":
        return cost.static_flops, cost.static_bytes
    if part == "conv":
        return cost.static_flops, itemsize * (activations + w.batch * kernel_params)
    if part == "mix":
        # Reads the k banks and the routing, writes one kernel (and bias) per sample.
        traffic = (w.k + w.batch) * kernel_params + w.batch * w.k * w.d
        return 2 * cost.mix_macs, itemsize * traffic
    raise ValueError(f"unknown part {part!r}")


def _per_sample_part(part: str, inputs: LayerInputs):
    """``part`` as the reference computes it, with the per-sample convolution one F.conv2d per
    sample instead of one grouped over the batch (for counting: see count_flops)."""
    if part not in ("layer", "conv"):
        return reference_part(part, inputs)
    w = inputs.workload
    _, leaves = reference_part(part, inputs)

    def forward() -> torch.Tensor:
        if part == "layer":
            routing = reference.routing_weights(inputs.x, inputs.mlp_weight, inputs.mlp_bias,
                                                w.k, w.d)
            weight_b, bias_b = reference.mix_kernels(routing, inputs.weight, inputs.bias)
        else:
            weight_b, bias_b = inputs.weight_b, inputs.bias_b
        return torch.cat([F.conv2d(inputs.x[b:b + 1], weight_b[b], bias_b[b],
                                   padding=w.padding) for b in range(w.batch)])

    return forward, leaves


def count_flops(part: str, workload: Workload, backward: bool) -> int:
    """FLOPs that torch.utils.flop_counter counts for the plain-PyTorch version of ``part``.

    Runs on the meta device: shapes only, no data, no time. The counter sees matmuls and
    convolutions (and their gradients), not pooling, softmax or bias adds. The per-sample
    convolution is counted one sample at a time: the counter takes a grouped convolution's
    weight gradient as if it were ungrouped (torch.utils.flop_counter.conv_backward_flop
    ignores groups there), so the paper's batch-grouped convolution counted ``batch`` times its
    weight gradient's FLOPs (48.9 G against 8.2 G for W1-expand's forward+backward).
    """
    from torch.utils.flop_counter import FlopCounterMode

    inputs = LayerInputs.create(workload, "meta", torch.float32, False, False)
    forward, leaves = _per_sample_part(part, inputs)
    for leaf in leaves:
        leaf.requires_grad_(backward)
    with FlopCounterMode(display=False) as counter:
        outputs = forward()
        if backward:
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
    return counter.get_total_flops()
