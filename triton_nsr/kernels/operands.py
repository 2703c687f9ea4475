"""How the convolution kernels' GEMM operands are laid out and fetched on Hopper.

Per-sample weights. The mixed kernels come as (B, out, Cg, kh, kw): along the K dimension of any
conv GEMM (channels within a tap) the stride is kh*kw, so a weight tile has no contiguous
dimension and every element is a separate load. The launchers therefore write each kernel the
layout it reads along K, zero-padded so that every stride is a multiple of 16 elements (the
only divisibility Triton's JIT proves, and what 16-byte cp.async needs):

- forward, B = w[K = (tap, c), N = o]:   (B, out, kh, kw, Cp),  c contiguous (K-major);
- input gradient, B = w[K = (tap, o), N = c]: (B, groups, kh, kw, Cg, Op), o contiguous.

TF32 wgmma reads only K-major operands from shared memory, so each kernel gets its own major.
The copies cost one read and one write of the per-sample weights per launch; docs/kernels.md
compares that with mixing the k banks inside the conv.

Input pixels. A tap shifts the input tile by one element, 2 bytes in bf16: pointer loads cannot
use 16-byte cp.async there. A TMA descriptor over the sample's (Cg, H, W) input (NCHW) or
(H, W, Cg) (channels_last) loads a box at the tap-shifted coordinates of a rows x columns output
tile, and the hardware's out-of-bounds zero fill is the convolution's zero padding.
:func:`input_route` decides per launch whether TMA can take the tensor; what it cannot take
(stride > 1, strides that are not multiples of 16 bytes, e.g. a bf16 width that is not a
multiple of 8, sliced or expanded inputs, float64) goes through the pointer gather, which is
the same kernel with INPUT_ROUTE = "gather".
"""

from __future__ import annotations

import torch
import triton

from triton_nsr.kernels.allocation import Empty
from triton_nsr.kernels.autotune import launch_plan
from triton_nsr.kernels.tiling import format_strides

# Strides of the packed weight copies are multiples of this many elements.
PACK = 16
# TMA needs 16-byte aligned base addresses and strides.
TMA_ALIGN_BYTES = 16
TMA_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def packed_channels(channels: int) -> int:
    """The channel count of a packed copy: channels rounded up to a multiple of PACK."""
    return _round_up(channels, PACK)


def pack_forward_weight(weight: torch.Tensor, groups: int):
    """The forward's weight operand: ((B, out, kh, kw, Cp) tensor, strides, channel bound).

    strides: (batch, group, out-in-group, in-channel, row, column) in elements, as the kernels
    take them. Channels Cg..Cp-1 are zeros, so a load may cover them without a mask.
    """
    batch, out, cg, kh, kw = weight.shape
    cp = packed_channels(cg)
    if is_packed_forward_weight(weight):
        # The layer's mixing kernel writes this layout itself (empty_packed_forward_weight).
        packed = weight.as_strided((batch, out, kh, kw, cp),
                                   (weight.stride(0), weight.stride(1), kw * cp, cp, 1))
    else:
        packed = empty_packed_storage(weight.shape, weight.dtype, weight.device)
        packed[..., :cg].copy_(weight.permute(0, 1, 3, 4, 2))
    b, o, h, w, c = packed.stride()
    return packed, (b, o * (out // groups), o, c, h, w), cp


def packed_storage(shape) -> Empty:
    """The allocation of (B, out, kh, kw, Cp) storage for a (B, out, Cg, kh, kw) weight,
    channels Cg..Cp-1 zeroed (no fill kernel when Cg is already a multiple of PACK); a plan
    keeps it and calls it with the device and dtype."""
    batch, out, cg, kh, kw = shape
    return Empty((batch, out, kh, kw, packed_channels(cg)), zero_from=cg)


def empty_packed_storage(shape, dtype, device) -> torch.Tensor:
    """New :func:`packed_storage` (the layer keeps it as the mixed kernels: the kernels read
    it by its address)."""
    return packed_storage(shape)(device, dtype)


def empty_packed_forward_weight(shape, dtype, device) -> torch.Tensor:
    """A (B, out, Cg, kh, kw) view of new packed (B, out, kh, kw, Cp) storage, padding zeroed:
    what :func:`pack_forward_weight` reads without a copy (the layer's mixing writes into it)."""
    return forward_weight_view(empty_packed_storage(shape, dtype, device), shape[2])


def forward_weight_view(storage: torch.Tensor, channels: int) -> torch.Tensor:
    """The (B, out, Cg, kh, kw) view of packed (B, out, kh, kw, Cp) storage."""
    return storage[..., :channels].permute(0, 1, 4, 2, 3)


def is_packed_forward_weight(weight: torch.Tensor) -> bool:
    """Whether a (B, out, Cg, kh, kw) weight already has the forward's packed strides (and so,
    by construction in :func:`empty_packed_forward_weight`, zeroed padding channels)."""
    batch, out, cg, kh, kw = weight.shape
    cp = packed_channels(cg)
    return weight.stride()[1:] == (kh * kw * cp, 1, kw * cp, cp)


def pack_input_grad_weight(weight: torch.Tensor, groups: int):
    """The input gradient's weight operand: ((B, groups, kh, kw, Cg, Op) tensor, strides, bound).

    strides as in :func:`pack_forward_weight`; output channels OG..Op-1 of each group are zeros.
    """
    batch, out, cg, kh, kw = weight.shape
    og = out // groups
    packed = empty_packed_input_grad_weight(weight.shape, groups, weight.dtype, weight.device)
    packed[..., :og].copy_(weight.view(batch, groups, og, cg, kh, kw).permute(0, 1, 4, 5, 3, 2))
    return packed, input_grad_weight_strides(packed), packed.shape[-1]


def packed_input_grad_weight(shape, groups: int) -> Empty:
    """The allocation of (B, groups, kh, kw, Cg, Op) storage for a (B, out, Cg, kh, kw)
    weight, output channels OG..Op-1 zeroed (no fill kernel when OG is already a multiple of
    PACK): what the layer's mixing writes for a TF32 input gradient."""
    return Empty(input_grad_weight_shape(shape, groups), zero_from=shape[1] // groups)


def empty_packed_input_grad_weight(shape, groups: int, dtype, device) -> torch.Tensor:
    """New :func:`packed_input_grad_weight` storage."""
    return packed_input_grad_weight(shape, groups)(device, dtype)


def input_grad_weight_shape(shape, groups: int) -> tuple[int, ...]:
    """(B, groups, kh, kw, Cg, Op) for a (B, out, Cg, kh, kw) weight: Op = OG rounded up to a
    multiple of PACK."""
    batch, out, cg, kh, kw = shape
    return (batch, groups, kh, kw, cg, _round_up(out // groups, PACK))


def input_grad_weight_strides(packed: torch.Tensor) -> tuple[int, ...]:
    """A (B, groups, kh, kw, Cg, Op) packed weight's strides in the kernels' order: (batch,
    group, out-in-group, in-channel, row, column)."""
    b, g, h, w, c, o = packed.stride()
    return (b, g, o, c, h, w)


def tile_width(width: int) -> int:
    """Columns of the rows x columns output tile: the power of two in 8..64 wasting the fewest
    lanes on the image's width (ties: the widest). 48 -> 16, 512 -> 64, 29 -> 32."""
    return min((8, 16, 32, 64), key=lambda w: (_round_up(width, w), -w))


def input_route(input: torch.Tensor, group_channels: int, stride, pad, dilation,
                kernel_size) -> tuple[str, str]:
    """(route, reason): "tma_nchw", "tma_channels_last" or "gather" for the input operand.

    The reason says why TMA cannot take the tensor (empty for a TMA route).
    """
    return route_of(tuple(input.shape), input.stride(), input.dtype,
                    input.data_ptr() % TMA_ALIGN_BYTES == 0, group_channels, tuple(stride),
                    tuple(pad), tuple(dilation), tuple(kernel_size))


def route_of(shape, strides, dtype, aligned: bool, group_channels: int, stride, pad, dilation,
             kernel_size) -> tuple[str, str]:
    """:func:`input_route` from the tensor's shape, strides, dtype and whether its address is
    16-byte aligned: what the launchers' cached plans decide once per shape."""
    if stride != (1, 1):
        return "gather", f"stride {stride}: a TMA box is a dense window"
    if dtype not in TMA_DTYPES:
        return "gather", f"{dtype} has no tensor-core TMA path"
    size = dtype.itemsize
    batch_stride, channel_stride, h_stride, w_stride = strides
    if w_stride == 1:
        route, inner = "tma_nchw", (channel_stride, h_stride)
    elif channel_stride == 1:
        route, inner = "tma_channels_last", (h_stride, w_stride)
    else:
        return "gather", f"strides {tuple(strides)}: neither width nor channels contiguous"
    offsets = (batch_stride, group_channels * channel_stride, *inner)
    if any(s * size % TMA_ALIGN_BYTES for s in offsets) or 0 in inner:
        return "gather", f"strides {tuple(strides)}: not multiples of {TMA_ALIGN_BYTES} bytes"
    if not aligned:
        return "gather", f"address not {TMA_ALIGN_BYTES}-byte aligned"
    if route == "tma_nchw":
        # A box whose innermost (column) coordinate is not 16-byte aligned is refused by the
        # interpreter and, on an H200 with Triton 3.6, faults ("illegal instruction"): every
        # NCHW launch with a tap-shifted column did. Tap shifts move the column coordinate.
        shifts = {(t * dilation[1] - pad[2]) * size for t in range(kernel_size[1])}
        if any(s % TMA_ALIGN_BYTES for s in shifts):
            return "gather", "tap-shifted columns are not 16-byte aligned for a TMA box"
    return route, ""


def channels_last_copy_helps(input: torch.Tensor, group_channels: int, stride, pad, dilation,
                             kernel_size, aligned: bool | None = None) -> bool:
    """Whether the convolution should read a channels_last copy of ``input`` rather than input.

    True where TMA cannot take the input only because of its NCHW layout (a tap shifts its
    columns off 16 bytes) and can take the same values in channels_last, where a tap moves by
    whole pixels: the router's pooling pass, which reads all of x anyway, then writes the copy
    (router.router_pool), one x-sized write in exchange for TMA boxes and a pipelined main loop
    instead of synchronous 2-byte (bf16) or 4-byte (float32) pointer loads.

    ``aligned``: decide as for an input whose address is (True) or is not (False) 16-byte
    aligned; None: as input's is.
    """
    if aligned is None:
        aligned = input.data_ptr() % TMA_ALIGN_BYTES == 0
    return _copy_helps(tuple(input.shape), input.stride(), input.dtype, aligned,
                       group_channels, tuple(stride), tuple(pad), tuple(dilation),
                       tuple(kernel_size))


def copy_helps_for(shape, strides, dtype, group_channels, stride, pad, dilation,
                   kernel_size) -> bool:
    """:func:`channels_last_copy_helps` from a 16-byte aligned input's shape and strides."""
    return _copy_helps(shape, strides, dtype, True, group_channels, stride, pad, dilation,
                       kernel_size)


@launch_plan
def _copy_helps(shape, strides, dtype, aligned, group_channels, stride, pad, dilation,
                kernel_size) -> bool:
    route, _ = route_of(shape, strides, dtype, aligned, group_channels, stride, pad, dilation,
                        kernel_size)
    if route != "gather" or strides[3] != 1:
        return False
    copy_route, _ = route_of(shape, format_strides(shape, torch.channels_last), dtype, True,
                             group_channels, stride, pad, dilation, kernel_size)
    return copy_route == "tma_channels_last"


def scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Global memory for device-side TMA descriptors (Triton's allocator hook)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def set_descriptor_allocator(*tensors: torch.Tensor) -> None:
    """Install :func:`scratch` for launches from this thread.

    triton.set_allocator is a ContextVar: autograd runs backward in its own thread on CUDA, which
    does not see a value set in the forward's thread, so every launcher sets it again.
    """
    if any(t.is_cuda for t in tensors):
        triton.set_allocator(scratch)
