"""Argument checks and normalisation shared by every backend.

Everything ``F.conv2d`` rejects is rejected here too, before any kernel runs, with a message that
names the offending value. The result is a :class:`ConvGeometry` that the backends consume, so no
backend re-derives padding or output sizes on its own.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

import torch

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
BACKENDS = ("auto", "torch", "triton")
FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class ConvGeometry:
    """The normalised geometry of one NSR convolution.

    ``pad`` is ``(top, bottom, left, right)``; it is asymmetric only for padding='same' with an
    even effective kernel, where (like F.conv2d) the extra row/column goes at the bottom/right.
    """

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    num_sparsity_groups: int
    num_sparsity_cardinals: int
    in_size: tuple[int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]
    out_size: tuple[int, int]

    @property
    def fpad(self) -> tuple[int, int, int, int]:
        """Padding in the order F.pad expects: (left, right, top, bottom)."""
        top, bottom, left, right = self.pad
        return (left, right, top, bottom)


def conv_output_size(
    in_size: tuple[int, int], kernel_size: tuple[int, int], stride, pad, dilation
) -> tuple[int, int]:
    """(Ho, Wo) of a convolution of an (H, W) input with pad = (top, bottom, left, right)."""
    pads = ((pad[0], pad[1]), (pad[2], pad[3]))
    return tuple(
        (size + lo + hi - dil * (ks - 1) - 1) // st + 1
        for size, ks, st, (lo, hi), dil in zip(in_size, kernel_size, stride, pads, dilation)
    )


def as_int(value, name: str) -> int:
    """``value`` as a Python int, accepting what F.conv2d accepts: ints and int-likes (numpy
    integers, one-element integer tensors: anything with ``__index__``), but not bools or floats.
    """
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    # What F.conv2d and the kernels' integer arguments can hold.
    if not -2**63 <= number < 2**63:
        raise ValueError(f"{name} must fit in a 64-bit integer, got {value!r}")
    return number


def as_pair(value, name: str) -> tuple[int, int]:
    """An int-like, or a pair (or 1-sequence) of int-likes, as a pair of Python ints."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    if len(items) in (1, 2):
        try:
            return (as_int(items[0], name), as_int(items[-1], name))
        except TypeError:
            pass
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as a Python int if it is an int-like >= 1 (see :func:`as_int`), else
    raise naming it."""
    try:
        number = as_int(value, name)
    except TypeError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


# The temperatures the router can divide by: float32's normal range (the Triton kernels take it
# as a float32 pair, and a subnormal one may be flushed to zero on a GPU).
TEMPERATURE_RANGE = (torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max)


def check_temperature(temperature) -> float:
    """Return the softmax temperature as a float, rejecting non-positive or non-finite values
    and those outside :data:`TEMPERATURE_RANGE`.

    Under ``torch.compile`` a temperature that changes between calls becomes a symbolic float;
    it is checked with comparisons (which Dynamo turns into guards), not converted. A tensor
    temperature is read on the host (one value).
    """
    if isinstance(temperature, torch.SymFloat):
        value = temperature
    else:
        try:
            value = float(temperature)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"temperature must be a positive number, got {temperature!r}") from None
    # Written so that NaN fails too: every comparison with NaN is False.
    if not (0 < value < math.inf):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    low, high = TEMPERATURE_RANGE
    if not (low <= value <= high):
        raise ValueError(f"temperature must be between {low:.4g} and {high:.4g} (float32's "
                         f"normal range, in which the router divides), got {temperature!r}")
    return value


def differentiable_temperature(temperature) -> bool:
    """Whether ``temperature`` is a tensor whose gradient this call must compute."""
    return (isinstance(temperature, torch.Tensor) and temperature.requires_grad
            and torch.is_grad_enabled())


def refuse_gradient(value, name: str) -> None:
    """Raise naming ``name`` when ``value`` is a tensor that requires grad: an argument read as
    a fixed number would silently drop its gradient."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        raise TypeError(f"{name} is read as a fixed number, but got a tensor that requires grad, "
                        f"whose gradient would be dropped: pass a float or {name}.detach()")


def check_padding_mode(padding_mode) -> str:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _check_tensor(tensor, name: str, like: torch.Tensor | None, shape: tuple | None) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOATING_DTYPES:
        raise TypeError(
            f"{name} has dtype {tensor.dtype}; NSR convolution supports "
            f"{', '.join(str(d) for d in FLOATING_DTYPES)}"
        )
    if like is not None:
        if tensor.dtype != like.dtype:
            raise TypeError(
                f"input dtype ({like.dtype}) and {name} dtype ({tensor.dtype}) should be the same"
            )
        if tensor.device != like.device:
            raise ValueError(
                f"input device ({like.device}) and {name} device ({tensor.device}) "
                "should be the same"
            )
    if shape is not None and tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


# Geometries of argument sets that passed the checks, by everything the checks read (shapes,
# dtypes, devices, the integer arguments): a layer called again on the same shapes does not
# re-derive its geometry. Failing arguments are never stored, so they raise every time.
_CHECKED: dict[tuple, ConvGeometry] = {}
_CHECKED_MAX = 256


def _reuse_checked(check):
    """Wrap ``check`` so that an argument set it passed before returns its stored geometry."""

    @functools.wraps(check)
    def checked(*args, **kwargs):
        geometry, key = lookup(_CHECKED, None if kwargs else _checked_key(*args))
        if geometry is None:
            geometry = check(*args, **kwargs)
            if key is not None:
                if len(_CHECKED) >= _CHECKED_MAX:
                    _CHECKED.clear()
                _CHECKED[key] = geometry
        return geometry

    return checked


# check_nsr_conv2d's arguments that are tensors of data, whose shape, dtype and device are all
# the checks read: input, weight, bias, mlp_weight, mlp_bias. The others are numbers, read by
# value; one given as a tensor (``stride=torch.tensor(2)``) makes the call uncached.
_DATA_ARGUMENTS = 5


_PLAIN = (int, str, type(None))


def _checked_key(*args) -> tuple | None:
    """A hashable key of the arguments, or None where one cannot be made cheaply and surely
    (tracing under torch.compile, symbolic sizes, int-likes other than int, numbers given as
    tensors, whose value a key of metadata would miss). Called on every layer call: written
    for speed (a torch.Size hashes as the tuple it is; one with a symbolic size does not hash).
    """
    if torch.compiler.is_compiling():
        return None
    key = []
    for arg in args[:_DATA_ARGUMENTS]:
        if arg is None:
            key.append(None)
        elif type(arg) is torch.nn.Parameter or type(arg) is torch.Tensor:
            key.append((arg.shape, arg.dtype, arg.device))
        else:
            return None
    return _hashable(key, args[_DATA_ARGUMENTS:])


def _hashable(key: list, numbers) -> tuple | None:
    """``key`` with the plain ``numbers`` appended, as a tuple, or None (see
    :func:`_checked_key`). A tuple of ints stands for itself, a list of ints is marked as one
    (bools and numpy ints are refused: they would equal ints). Not hashed here: a symbolic size
    makes it unhashable, which :func:`lookup` tells (hashing it twice costs microseconds)."""
    for arg in numbers:
        kind = type(arg)
        if kind in _PLAIN:
            key.append(arg)
        elif kind is tuple or kind is list:
            for item in arg:
                if type(item) is not int:
                    return None
            key.append(arg if kind is tuple else (list, tuple(arg)))
        else:
            return None
    return tuple(key)


def lookup(table: dict, key: tuple | None) -> tuple:
    """(``table[key]`` or None, ``key``, or None where it does not hash: a symbolic size)."""
    if key is None:
        return None, None
    try:
        return table.get(key), key
    except TypeError:
        return None, None


def call_key(input, weight, bias, mlp_weight, mlp_bias, numbers: tuple,
             flags: tuple) -> tuple | None:
    """One key for everything a layer call's checks and plan read, or None (as
    :func:`_checked_key`): what the checks key on, and every tensor's strides and the input's
    16-byte alignment (the Triton layer's plan reads them), then ``flags`` as they are.
    ``numbers``: check_nsr_conv2d's arguments after the tensors. Not for use while compiling.
    """
    if type(input) is not torch.Tensor and type(input) is not torch.nn.Parameter:
        return None
    key = [input.shape, input.stride(), input.dtype, input.device, input.data_ptr() % 16 == 0,
           *flags]
    for arg in (weight, bias, mlp_weight, mlp_bias):
        if arg is None:
            key.append(None)
        elif type(arg) is torch.nn.Parameter or type(arg) is torch.Tensor:
            key.append((arg.shape, arg.stride(), arg.dtype, arg.device))
        else:
            return None
    return _hashable(key, numbers)


@_reuse_checked
def check_nsr_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mlp_weight: torch.Tensor,
    mlp_bias: torch.Tensor | None,
    num_sparsity_groups: int,
    num_sparsity_cardinals: int,
    stride,
    padding,
    dilation,
    groups: int,
) -> ConvGeometry:
    """Validate the arguments of ``nsr_conv2d`` for a 4-D ``input`` and return its geometry.

    Shapes: input (B, C, H, W); weight (k*out, C/groups, kh, kw); bias (k*out,);
    mlp_weight (k*d, C); mlp_bias (k*d,).
    """
    k = check_positive_int(num_sparsity_groups, "num_sparsity_groups")
    d = check_positive_int(num_sparsity_cardinals, "num_sparsity_cardinals")
    groups = check_positive_int(groups, "groups")
    _check_tensor(input, "input", None, None)
    if input.dim() != 4:
        raise ValueError(
            "Expected 3D (unbatched) or 4D (batched) input to nsr_conv2d, "
            f"but got input of size: {list(input.shape)}"
        )
    _check_tensor(weight, "weight", input, None)
    if weight.dim() != 4:
        raise ValueError(
            f"weight must be 4-D (k*out, in/groups, kh, kw), got shape {tuple(weight.shape)}"
        )
    batch, channels, height, width = input.shape
    if channels == 0:
        # F.conv2d accepts this; here the router would average nothing and every sample would
        # get the mixed bias alone.
        raise ValueError(
            f"input has 0 channels (shape {list(input.shape)}); NSR convolution needs at least "
            "one input channel for its router to average"
        )
    if channels % groups != 0:
        raise ValueError(f"in_channels ({channels}) must be divisible by groups ({groups})")
    if weight.shape[1] * groups != channels:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} with groups={groups} expects "
            f"{weight.shape[1] * groups} input channels, but input has {channels} channels "
            f"(input shape {tuple(input.shape)})"
        )
    if weight.shape[0] % k != 0:
        raise ValueError(
            f"weight.shape[0] ({weight.shape[0]}) must be num_sparsity_groups ({k}) "
            "times out_channels"
        )
    out_channels = weight.shape[0] // k
    if out_channels == 0:
        raise ValueError(f"out_channels must be positive, got weight shape {tuple(weight.shape)}")
    if out_channels % d != 0:
        raise ValueError(
            f"out_channels ({out_channels}) must be divisible by "
            f"num_sparsity_cardinals ({d})"
        )
    if out_channels % groups != 0:
        raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")
    if bias is not None:
        _check_tensor(bias, "bias", input, (k * out_channels,))
    _check_tensor(mlp_weight, "mlp_weight", input, (k * d, channels))
    if mlp_bias is not None:
        _check_tensor(mlp_bias, "mlp_bias", input, (k * d,))

    stride = as_pair(stride, "stride")
    dilation = as_pair(dilation, "dilation")
    if min(stride) < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be positive, got {dilation}")
    kernel_size = (int(weight.shape[2]), int(weight.shape[3]))
    if min(kernel_size) < 1:
        raise ValueError(f"kernel size must be positive, got {kernel_size}")
    span = tuple(dil * (ks - 1) for dil, ks in zip(dilation, kernel_size))
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' is not supported for strided convolutions "
                                 f"(stride={stride})")
            pad = (span[0] // 2, span[0] - span[0] // 2, span[1] // 2, span[1] - span[1] // 2)
        else:
            raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    else:
        ph, pw = as_pair(padding, "padding")
        if ph < 0 or pw < 0:
            raise ValueError(f"padding must be non-negative, got {(ph, pw)}")
        pad = (ph, ph, pw, pw)
    padded = (height + pad[0] + pad[1], width + pad[2] + pad[3])
    if padded[0] < span[0] + 1 or padded[1] < span[1] + 1:
        raise ValueError(
            f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). "
            f"Kernel size: ({span[0] + 1} x {span[1] + 1}) (dilated). "
            "Kernel size can't be greater than actual input size"
        )
    if batch > 0 and 0 in (height, width):
        # F.conv2d refuses this too ("Only zero batch or zero channel inputs are supported");
        # the router's mean over no pixels would be NaN everywhere.
        raise ValueError(
            f"input has an empty spatial size ({height} x {width}, input shape "
            f"{list(input.shape)}): the router averages each channel over H x W, a mean over "
            "nothing; only a batch of 0 samples may have no pixels"
        )
    out_size = conv_output_size((height, width), kernel_size, stride, pad, dilation)
    return ConvGeometry(
        batch=batch,
        in_channels=channels,
        out_channels=out_channels,
        groups=groups,
        num_sparsity_groups=k,
        num_sparsity_cardinals=d,
        in_size=(height, width),
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        pad=pad,
        out_size=out_size,
    )
