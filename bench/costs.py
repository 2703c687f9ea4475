"""The analytic tables of the workloads: params, FLOPs and minimum bytes; the HBM bytes model.

Arithmetic only: no device, no timing. The cost table comes from triton_nsr.flops and is
printed by ``python -m bench`` on machines without a GPU and included in docs/performance.md.
The bytes model (``python -m bench costs``, kept in docs/design.md) counts what the triton
path moves per layer and pass: the layer's launches are recorded on meta tensors (nothing runs),
and each launch is charged every tensor it reads or writes, once, with no credit for L2 hits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.workloads import FORWARD, FORWARD_BACKWARD, Workload
from triton_nsr.arguments import conv_output_size
from triton_nsr.flops import paper_overhead_bound
from triton_nsr.kernels.mix import MIX_BWD_BLOCK_F
from triton_nsr.kernels.router import pool_chunks
from triton_nsr.kernels.tiling import cdiv

COST_HEADERS = (
    "workload", "input", "C_in->C_out", "static params", "NSR params", "static GFLOP",
    "NSR GFLOP", "extra FLOPs", "paper bound (c=C_in)", "min MB fp32",
)


def markdown_table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table; readable as plain text in a terminal too."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cost_rows(workloads: list[Workload]) -> list[list[str]]:
    """One row per workload: parameters, forward FLOPs and minimum bytes (float32)."""
    rows = []
    for w in workloads:
        cost = w.cost(itemsize=4)
        bound = paper_overhead_bound(w.height, w.in_channels, w.kernel_size, w.k, w.d)
        rows.append([
            w.name,
            f"{w.batch}x{w.height}x{w.width}",
            f"{w.in_channels}->{w.out_channels}",
            f"{cost.static_params:,}",
            f"{cost.nsr_params:,}",
            f"{cost.static_flops / 1e9:.3f}",
            f"{cost.nsr_flops / 1e9:.3f}",
            f"+{100 * cost.extra_flops_ratio:.3f}%",
            f"{100 * bound:.3f}%",
            f"{cost.nsr_bytes / 1e6:.1f}",
        ])
    return rows


def cost_table(workloads: list[Workload]) -> str:
    """The cost table followed by how the analytic overhead compares with the paper's bound."""
    return markdown_table(COST_HEADERS, cost_rows(workloads)) + "\n\n" + bound_note(workloads)


def bound_note(workloads: list[Workload]) -> str:
    """Which workloads' exact FLOP overhead exceeds the supplementary's bound, computed.

    The bound assumes as many output as input channels and ignores the bias; with c = C_in it
    can be exceeded when C_out < C_in.
    """
    over = []
    for w in workloads:
        exact = w.cost().extra_flops_ratio
        bound = paper_overhead_bound(w.height, w.in_channels, w.kernel_size, w.k, w.d)
        if exact > bound:
            over.append(f"{w.name} ({100 * exact:.3f}% > {100 * bound:.3f}%)")
    if not over:
        return ("The exact FLOP overhead stays under the supplementary's bound (with c = C_in) "
                "for every workload above.")
    return ("The exact FLOP overhead exceeds the supplementary's bound (with c = C_in; the "
            "bound assumes C_out = C_in and no bias) for " + ", ".join(over) + ".")


# What each column of the analytic cost table (COST_HEADERS) means.
COST_COLUMNS = {
    "workload": "the layer shape (above)",
    "input": "batch x height x width of the layer's input",
    "C_in->C_out": "input and output channels",
    "static params": "parameters of an `nn.Conv2d` of the same shape (weight and bias)",
    "NSR params": "parameters of the NSR layer: k weight and bias banks plus the router's "
                  "`Linear(C_in, k*d)`",
    "static GFLOP": "forward FLOPs of that static convolution over the whole batch, 10^9 "
                    "(a multiply-add counts as two; bias adds included)",
    "NSR GFLOP": "forward FLOPs of the NSR layer: the convolution plus the spatial mean, the "
                 "router's matmul, the softmax and mixing every sample's kernel from the k banks",
    "extra FLOPs": "(NSR - static) / static: the overhead the supplementary calls negligible",
    "paper bound (c=C_in)": "the supplementary's (section 2) estimate of that overhead, "
                            "(p^2 c + k c d + k q^2 c^2) / (p^2 q^2 c^2) with image side p, "
                            "kernel side q and c = C_in channels; it assumes C_out = C_in and "
                            "no bias",
    "min MB fp32": "the least memory traffic of the NSR layer's forward in float32, in MB "
                   "(10^6 bytes): input, output and every parameter moved once; the mixed "
                   "per-sample kernels, which an implementation may keep on chip, are not "
                   "counted",
}


def cost_legend(workloads: list[Workload]) -> str:
    """The cost table's workloads (from their descriptions) and columns, as markdown."""
    lines = ["Each workload is one NSR layer as WDSR-NSR runs it (3x3 kernel, padding 1, "
             "k = 4 sparsity groups of d = 16 cardinals, bias):", ""]
    lines += [f"- **{w.name}**: {w.description}" for w in workloads]
    lines += ["", "Columns:", ""]
    lines += [f"- `{name}`: {meaning}" for name, meaning in COST_COLUMNS.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HBM bytes

BYTES_HEADERS = ("workload", "layout", "pass", "launches", "moved MB", "floor MB", "ratio",
                 "target")
# What each column of the bytes table means.
BYTES_COLUMNS = {
    "launches": "Triton launches of the layer call (forward; or forward and backward)",
    "moved MB": "what the launches read and write in HBM, each tensor once per launch that "
                "touches it, no credit for L2 hits (10^6 bytes)",
    "floor MB": "the least a layer call must move: forward x, y and the k banks; backward dy, "
                "x, dx, the banks and their gradient",
    "ratio": "moved / floor",
    "target": "the most moved / floor set for this layer and pass when the launches were "
              "merged (docs/design.md, HBM bytes), met or MISSED",
}
# Issue 11's targets, bfloat16 activations: (workload, pass) -> most moved bytes / floor.
BYTES_TARGETS = {
    ("W3", FORWARD): 1.25, ("W4", FORWARD): 1.55,
    ("W1-expand", FORWARD_BACKWARD): 1.5, ("W1-reduce", FORWARD_BACKWARD): 1.5,
    ("W4", FORWARD_BACKWARD): 1.5,
}
ACTIVATION_BYTES = 2  # bfloat16
PARAMETER_BYTES = 4  # float32 parameters, as autocast keeps them
ROUTER_BYTES = 4  # the router's tensors are float32


@dataclass(frozen=True)
class TensorBytes:
    """The bytes of each tensor one layer call reads or writes (bf16 activations)."""

    x: int  # input, and its gradient
    y: int  # output, and its gradient
    bank: int  # weight and bias banks, and their gradients
    mixed: int  # the per-sample kernels and biases
    mlp: int  # the router's weight and bias, and their gradients
    per_sample: int  # pooled input, and the mean's gradient, (B, C)
    routing: int  # routing weights, (B, k, d)
    routing_parts: int  # the routing gradient in per-tile parts, (T, B, k, d)
    partials: int  # the pooling's per-chunk channel sums, (B, chunks, C)

    @classmethod
    def of(cls, w: Workload) -> TensorBytes:
        taps = w.kernel_size ** 2
        ho, wo = conv_output_size((w.height, w.width), (w.kernel_size,) * 2, (1, 1),
                                  (w.padding,) * 4, (1, 1))
        return cls(
            x=w.batch * w.in_channels * w.height * w.width * ACTIVATION_BYTES,
            y=w.batch * w.out_channels * ho * wo * ACTIVATION_BYTES,
            bank=w.k * w.out_channels * (w.in_channels * taps + 1) * PARAMETER_BYTES,
            mixed=w.batch * w.out_channels * (w.in_channels * taps + 1) * ACTIVATION_BYTES,
            mlp=w.k * w.d * (w.in_channels + 1) * PARAMETER_BYTES,
            per_sample=w.batch * w.in_channels * ROUTER_BYTES,
            routing=w.batch * w.k * w.d * ROUTER_BYTES,
            routing_parts=(cdiv(w.out_channels // w.d * w.in_channels * taps, MIX_BWD_BLOCK_F)
                           + cdiv(w.out_channels // w.d, MIX_BWD_BLOCK_F))
            * w.batch * w.k * w.d * ROUTER_BYTES,
            partials=(w.batch * pool_chunks(w.batch, w.height * w.width) * w.in_channels
                      * ROUTER_BYTES),
        )

    def kernel_gradient(self, splits: int) -> int:
        """The per-sample kernel and bias gradients: in the activation dtype, or as float32
        partial sums of ``splits`` pixel splits."""
        if splits == 1:
            return self.mixed
        return splits * self.mixed * ROUTER_BYTES // ACTIVATION_BYTES


def kernel_bytes(kernel: str, t: TensorBytes, splits: int, named: dict | None = None) -> int:
    """HBM bytes of one launch: every tensor it reads or writes, once (no L2 credit).

    ``named``: the launch's arguments, where they change what it moves (WRITE_COPY: the
    channels_last copy of an NCHW x the pooling writes, or of an NCHW dy the kernel gradient
    writes).
    """
    grad_parts = t.kernel_gradient(splits)
    copies = bool((named or {}).get("WRITE_COPY"))
    moved = {
        # With an NCHW input: its channels_last copy for the forward's TMA boxes.
        "router_pool_kernel": t.x + t.partials + copies * t.x,
        # Finishes the router (partial sums and MLP in, routing and means out) and mixes.
        "mix_fwd_kernel": t.partials + t.mlp + t.routing + t.per_sample + t.bank + t.mixed,
        "conv_fwd_kernel": t.x + t.mixed + t.y,
        # With an NCHW dy: its channels_last copy for the input gradient's TMA boxes.
        "conv_bwd_weight_kernel": t.y + t.x + grad_parts + copies * t.y,
        # The all-taps 3x3 variant (16-bit) moves the same tensors.
        "conv_bwd_weight_3x3_kernel": t.y + t.x + grad_parts + copies * t.y,
        # Reads the kernel gradient once for both gradients; writes the routing gradient in
        # one part per F tile, which the router's backward reads and adds.
        "mix_bwd_kernel": t.routing + t.bank + grad_parts + t.bank + t.routing_parts,
        "router_bwd_kernel": t.routing_parts + t.routing + 2 * t.per_sample + 2 * t.mlp,
        # In bfloat16 it reads the forward's packed kernels as the mixing wrote them (no copy;
        # TF32 reads a second layout the mixing writes, one more write of the mixed kernels).
        "conv_bwd_input_kernel": t.y + t.mixed + t.x + t.per_sample,
    }
    if kernel not in moved:
        raise KeyError(f"the bytes model has no entry for {kernel}: add one to bench/costs.py")
    return moved[kernel]


LAYOUTS = ("channels_last", "nchw")


def recorded_launches(w: Workload, layout: str = "channels_last") -> tuple[list, list]:
    """(forward, backward) launches of the layer on an input in ``layout``, recorded on meta
    tensors (nothing runs, no memory is used) with the kernel gradient's pixel splits sized for
    an H200."""
    from triton_nsr import ops
    from triton_nsr.arguments import check_nsr_conv2d
    from triton_nsr.kernels.inspection.capture import recording

    def leaf(*size, dtype=torch.float32):
        return torch.empty(size, dtype=dtype, device="meta", requires_grad=True)

    x = leaf(w.batch, w.in_channels, w.height, w.width, dtype=torch.bfloat16)
    if layout == "channels_last":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    params = (leaf(w.k * w.out_channels, w.in_channels, w.kernel_size, w.kernel_size),
              leaf(w.k * w.out_channels), leaf(w.k * w.d, w.in_channels), leaf(w.k * w.d))
    geometry = check_nsr_conv2d(torch.empty(x.shape, device="meta"), *params, w.k, w.d, 1,
                                w.padding, 1, 1)
    with recording(w.batch) as launches:
        y = ops.nsr_layer(x, None, *params, geometry, 1.0, geometry.pad, False)
        forward = list(launches)
        torch.autograd.grad(y, [x, *params], torch.empty_like(y))
    return forward, launches[len(forward):]


def layer_bytes(w: Workload, layout: str = "channels_last") -> dict:
    """{pass: (launches, moved bytes, floor bytes, {kernel: bytes})} for the workload's passes
    on an input in ``layout``.

    Floors: forward x + y + bank; backward dy + x + dx + bank + bank gradient (so
    forward+backward's floor is their sum).
    """
    t = TensorBytes.of(w)
    forward, backward = recorded_launches(w, layout)
    splits = max([launch.named.get("num_splits", 1) for launch in backward] or [1])

    def moved(launches):
        per_kernel = {}
        for launch in launches:
            per_kernel[launch.kernel] = (per_kernel.get(launch.kernel, 0)
                                         + kernel_bytes(launch.kernel, t, splits,
                                                        launch.named))
        return per_kernel

    forward_kernels = moved(forward)
    floor = t.x + t.y + t.bank
    passes = {FORWARD: (len(forward), sum(forward_kernels.values()), floor, forward_kernels)}
    if FORWARD_BACKWARD in w.passes:
        both = moved(forward + backward)
        passes[FORWARD_BACKWARD] = (len(forward) + len(backward), sum(both.values()),
                                    floor + t.y + 2 * t.x + 2 * t.bank, both)
    return passes


def bytes_rows(workloads: list[Workload]) -> list[list[str]]:
    """One row per workload, layout and pass. An NCHW input costs the pooling's channels_last
    copy (one more write of x) where that copy gives the convolution TMA boxes."""
    rows = []
    for w in workloads:
        for layout in LAYOUTS:
            for name, (launches, moved, floor, _) in layer_bytes(w, layout).items():
                target = BYTES_TARGETS.get((w.group if w.group != "W1" else w.name, name))
                ratio = moved / floor
                verdict = "" if target is None else (
                    f"<= {target} {'met' if ratio <= target else 'MISSED'}")
                rows.append([w.name, layout, name, str(launches), f"{moved / 1e6:.1f}",
                             f"{floor / 1e6:.1f}", f"{ratio:.3f}x", verdict])
    return rows


def bytes_table(workloads: list[Workload]) -> str:
    """The HBM bytes model of the triton path per layer and pass, against the floor."""
    return markdown_table(BYTES_HEADERS, bytes_rows(workloads))


def kernel_bytes_table(workloads: list[Workload]) -> str:
    """Where the bytes go: MB per kernel of forward+backward (forward only for inference),
    channels_last input."""
    kernels = list(dict.fromkeys(k for w in workloads
                                 for *_, per_kernel in layer_bytes(w).values()
                                 for k in per_kernel))
    rows = []
    for w in workloads:
        *_, per_kernel = list(layer_bytes(w).values())[-1]
        rows.append([w.name] + [f"{per_kernel[k] / 1e6:.1f}" if k in per_kernel else ""
                                for k in kernels])
    short = [k.removesuffix("_kernel") for k in kernels]
    return markdown_table(["workload", *short], rows)
