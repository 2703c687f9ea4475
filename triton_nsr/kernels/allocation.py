"""New tensors of a shape a plan fixed, for about half of ``torch.empty``'s host time.

``torch.empty(shape, dtype=..., device=...)`` parses a size list and two keywords on every
call (2.6-2.8 us on a 2-core CPU); ``torch.empty_like`` of a tensor that already has the
shape, dtype and device parses none (1.5-1.7 us). A plan keeps one :class:`Empty` per tensor
it allocates on every call; each keeps such a stand-in, an expanded scalar (one element of
storage), made on the first call and again whenever the device or dtype asked for changes
(launch plans are shared across devices, and some across dtypes).

What comes back is what ``torch.empty`` gives: new memory from PyTorch's allocator (a CUDA
graph's pool under capture), uninitialised but for the channels a packed layout pads with
zeros.
"""

from __future__ import annotations

import torch


class Empty:
    """``Empty(shape, memory_format, zero_from)(device, dtype)``: a new tensor of ``shape`` in
    ``memory_format``; with ``zero_from``, its last dimension's entries from that index on are
    zeroed (the padding channels of a packed weight; nothing to do when there are none)."""

    __slots__ = ("shape", "memory_format", "zero_from", "device", "dtype", "stand_in")

    def __init__(self, shape, memory_format=torch.contiguous_format,
                 zero_from: int | None = None) -> None:
        self.shape = tuple(shape)
        self.memory_format = memory_format
        self.zero_from = (zero_from if zero_from is not None and zero_from < self.shape[-1]
                          else None)
        self.device = self.dtype = self.stand_in = None

    def __call__(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if dtype is not self.dtype or device != self.device:
            self.stand_in = torch.empty((), dtype=dtype, device=device).expand(self.shape)
            self.device, self.dtype = device, dtype
        tensor = torch.empty_like(self.stand_in, memory_format=self.memory_format)
        if self.zero_from is not None:
            tensor[..., self.zero_from:].zero_()
        return tensor
