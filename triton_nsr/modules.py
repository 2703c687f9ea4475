"""The drop-in module :class:`NSRConv2d`."""

from __future__ import annotations

import torch
from torch import nn

from triton_nsr.arguments import check_backend, check_positive_int, check_temperature
from triton_nsr.functional import nsr_conv2d


class NSRConv2dBase(nn.Conv2d):
    """The NSR layer's parameters and call, shared by :class:`NSRConv2d` and the reference layer
    (``triton_nsr.reference.NSRConv2d``); subclasses choose the functional that computes it.

    Constructor and state_dict follow the authors' layer: ``weight`` is
    (k*out_channels, in_channels/groups, kh, kw), ``bias`` (k*out_channels,), and the router is
    ``mlp = Sequential(Linear(in_channels, k*d))``. Unlike the authors' layer, ``out_channels``
    holds the number of channels the layer outputs (theirs holds k times that).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        num_sparsity_groups: int = 1,
        num_sparsity_cardinals: int = 1,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        temperature: float = 1.0,
        backend: str = "auto",
    ) -> None:
        check_positive_int(in_channels, "in_channels")
        k = check_positive_int(num_sparsity_groups, "num_sparsity_groups")
        d = check_positive_int(num_sparsity_cardinals, "num_sparsity_cardinals")
        check_positive_int(out_channels, "out_channels")
        if out_channels % d != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by "
                f"num_sparsity_cardinals ({d})"
            )
        check_positive_int(groups, "groups")
        if out_channels % groups != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        super().__init__(
            in_channels, k * out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self.out_channels = out_channels
        self.num_sparsity_groups = k
        self.num_sparsity_cardinals = d
        self.temperature = check_temperature(temperature)
        self.backend = check_backend(backend)
        self.mlp = nn.Sequential(nn.Linear(in_channels, k * d, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_sparsity_groups={self.num_sparsity_groups}, "
            f"num_sparsity_cardinals={self.num_sparsity_cardinals}, "
            f"temperature={self.temperature}, backend={self.backend!r}"
        )

    def _functional(self, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must choose its functional")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input (B, C, H, W) or (C, H, W) -> (B, out, Ho, Wo) or (out, Ho, Wo)."""
        # The parameters are read here, at call time, so weight-norm hooks and parametrizations
        # apply; the router's Linear by its key in the Sequential (indexing one costs
        # microseconds).
        router = self._modules["mlp"]._modules["0"]
        return self._functional(
            input,
            _parameter(self, "weight"),
            _parameter(self, "bias"),
            _parameter(router, "weight"),
            _parameter(router, "bias"),
            self.num_sparsity_groups,
            self.num_sparsity_cardinals,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            temperature=self.temperature,
            padding_mode=self.padding_mode,
            backend=self.backend,
        )


def _parameter(module: nn.Module, name: str):
    """``module.<name>``: from its parameters when registered there (a plain attribute read of
    a parameter first misses the instance and raises inside nn.Module, a microsecond each),
    else as attribute (a weight-norm hook's tensor, a parametrization's property)."""
    parameters = module._parameters
    return parameters[name] if name in parameters else getattr(module, name)


class NSRConv2d(NSRConv2dBase):
    """Drop-in NSR convolution with the authors' constructor and state_dict.

    ``NSRConv2d(in_channels, out_channels, kernel_size, num_sparsity_groups=1,
    num_sparsity_cardinals=1, stride=1, padding=0, dilation=1, groups=1, bias=True,
    padding_mode='zeros', device=None, dtype=None, *, temperature=1.0, backend='auto')``

    Parameters (state_dict keys as in the authors' layer, so their checkpoints load strictly):
        weight: (k*out_channels, in_channels/groups, kh, kw)
        bias: (k*out_channels,), when bias=True
        mlp.0.weight: (k*d, in_channels); mlp.0.bias: (k*d,)

    Input (B, in_channels, H, W) or (in_channels, H, W); output (B, out_channels, Ho, Wo).
    ``backend='auto'`` runs the Triton kernels on CUDA tensors (and under Triton's CPU
    interpreter) and the torch backend elsewhere; see :func:`triton_nsr.nsr_conv2d`.
    ``temperature`` and ``backend`` are plain attributes and may be changed between steps.

    Example:
        >>> layer = NSRConv2d(32, 128, 3, num_sparsity_groups=4, num_sparsity_cardinals=16,
        ...                   padding=1, backend="torch")
        >>> layer(torch.randn(2, 32, 24, 24)).shape
        torch.Size([2, 128, 24, 24])
    """

    def _functional(self, *args, **kwargs) -> torch.Tensor:
        return nsr_conv2d(*args, **kwargs)


# The name the authors' module gives its NSR layer, so swapping their import for
# `from triton_nsr import Conv2d` keeps the rest of their code unchanged.
Conv2d = NSRConv2d
