"""``convert``: turn the NSR layers of an existing model into :class:`triton_nsr.NSRConv2d`.

The layers are converted in place by changing their class, not by building new modules: the
module objects, their Parameters (so optimizers and DDP keep working), parameter names,
weight-norm hooks, parametrizations, device, dtype and training mode all stay as they are.
Changing the class drops every method the old class defined, so subclasses that override
anything beyond what NSRConv2d replaces are refused rather than silently changed. Every layer is
checked before any is changed: a refused model is left as it was.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from triton_nsr import reference
from triton_nsr.arguments import check_backend, check_positive_int, check_temperature
from triton_nsr.modules import NSRConv2d, NSRConv2dBase

# Entries of a class namespace that belong to the class object itself, never copied to another.
_CLASS_INTERNALS = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__"}

# What convert() may do with the padding_mode of an authors' layer (see convert()).
AUTHORS_PADDING = ("zeros", "declared")


def is_authors_layer(module: nn.Module) -> bool:
    """True for an NSR layer in the authors' style: an nn.Conv2d subclass with integer
    ``num_sparsity_groups`` and ``num_sparsity_cardinals`` and an ``mlp`` of exactly one Linear.

    Their ``out_channels`` holds k times the channels the layer outputs.
    """
    if isinstance(module, NSRConv2dBase) or not isinstance(module, nn.Conv2d):
        return False
    k = getattr(module, "num_sparsity_groups", None)
    d = getattr(module, "num_sparsity_cardinals", None)
    mlp = getattr(module, "mlp", None)
    return (
        isinstance(k, int)
        and isinstance(d, int)
        and isinstance(mlp, nn.Sequential)
        and len(mlp) == 1
        and isinstance(mlp[0], nn.Linear)
    )


def _original_class(module: nn.Module) -> type:
    """The module's own class, under the subclass that parametrize generates."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def _lost_methods(cls: type, base: type, replaced: set[str]) -> list[str]:
    """Methods that the classes between ``cls`` and ``base`` define and a class change to
    NSRConv2d would drop, as 'Class.name'.

    ``__init__`` is never lost (the layer is built already); ``replaced`` names the methods whose
    job NSRConv2d takes over, allowed only in the class that derives from ``base`` directly (the
    layer's own implementation, not a subclass's override of it).
    """
    lost = []
    for klass in cls.__mro__[:cls.__mro__.index(base)]:
        allowed = {"__init__"} | (replaced if base in klass.__bases__ else set())
        for name, value in vars(klass).items():
            is_method = callable(value) or isinstance(value, (property, staticmethod, classmethod))
            if is_method and name not in _CLASS_INTERNALS and name not in allowed:
                lost.append(f"{klass.__qualname__}.{name}")
    return lost


def _converted_class(module: nn.Module) -> type:
    """NSRConv2d, or for a parametrized module its generated class rebuilt on top of NSRConv2d.

    torch.nn.utils.parametrize gives a parametrized module a generated subclass of its original
    class that carries the parametrized tensors as properties; removing the parametrization later
    restores ``__bases__[0]``. So the generated class is rebuilt on top of NSRConv2d with the same
    properties, and removal then yields a plain NSRConv2d.
    """
    if not parametrize.is_parametrized(module):
        return NSRConv2d
    namespace = {
        name: value for name, value in vars(type(module)).items() if name not in _CLASS_INTERNALS
    }
    return type(f"Parametrized{NSRConv2d.__name__}", (NSRConv2d,), namespace)


@dataclass
class _Conversion:
    """What convert() will change on one layer, decided before anything is changed."""

    module: nn.Module
    new_class: type | None = None
    out_channels: int | None = None
    temperature: float | None = None
    padding_mode: str | None = None
    warning: str | None = None

    def apply(self, backend: str) -> None:
        if self.out_channels is not None:
            self.module.out_channels = self.out_channels
            self.module.temperature = self.temperature
        if self.padding_mode is not None:
            self.module.padding_mode = self.padding_mode
        if self.new_class is not None:
            self.module.__class__ = self.new_class
        self.module.backend = backend


def _refuse_lost_methods(name: str, module: nn.Module, base: type, replaced: set[str]) -> None:
    cls = _original_class(module)
    lost = _lost_methods(cls, base, replaced)
    if lost:
        raise TypeError(
            f"convert() cannot convert {name} ({cls.__qualname__}): it changes the layer's class "
            f"to triton_nsr.NSRConv2d, which would silently drop {', '.join(lost)}. Build the "
            "layer from triton_nsr.NSRConv2d (a subclass of it keeps its methods) instead"
        )


def _plan_authors_layer(name: str, module: nn.Module, authors_padding: str) -> _Conversion:
    """Check an authors' layer and decide its new out_channels, temperature and padding."""
    _refuse_lost_methods(name, module, nn.Conv2d, {"_conv_forward"})
    k, d = module.num_sparsity_groups, module.num_sparsity_cardinals
    check_positive_int(module.in_channels, f"{name}.in_channels")
    if module.out_channels % k != 0:
        raise ValueError(
            f"{name} ({type(module).__name__}) has out_channels={module.out_channels}, not a "
            f"multiple of num_sparsity_groups={k}"
        )
    out_channels = module.out_channels // k
    for divisor, what in ((d, "num_sparsity_cardinals"), (module.groups, "groups")):
        if out_channels % divisor != 0:
            raise ValueError(
                f"{name} ({type(module).__name__}) outputs {out_channels} channels, not a "
                f"multiple of {what}={divisor}"
            )
    conversion = _Conversion(module, _converted_class(module), out_channels,
                             check_temperature(getattr(module, "temperature", 1.0)))
    if module.padding_mode != "zeros" and authors_padding == "zeros":
        conversion.padding_mode = "zeros"
        conversion.warning = (
            f"convert(): {name} has padding_mode={module.padding_mode!r}, but the authors' layer "
            "zero-pads whatever its padding_mode says; the converted layer gets "
            "padding_mode='zeros' to keep its outputs. Pass authors_padding='declared' to "
            f"honour {module.padding_mode!r} instead."
        )
    return conversion


def convert(model: nn.Module, backend: str = "auto", *,
            authors_padding: str = "zeros") -> nn.Module:
    """Convert every NSR layer of ``model`` to :class:`triton_nsr.NSRConv2d`, in place.

    Converted: layers in the authors' style (see :func:`is_authors_layer`; their ``out_channels``
    is divided by k and, having no temperature, they get 1.0) and the plain-PyTorch
    :class:`triton_nsr.reference.NSRConv2d`. Layers that already are NSRConv2d (or a subclass)
    only get the new ``backend``. Outputs and gradients are unchanged up to floating-point
    rounding, with the default ``authors_padding``.

    Subclasses of those layers are converted only if they lose nothing by the class change
    (they override ``__init__`` at most); one that overrides other methods (``forward``, the
    authors' ``_conv_forward`` again, ...) raises TypeError naming the class and the methods.
    Every layer is checked before any is changed, so on an error the model is left as it was.

    Args:
        model: any module; ``model`` itself may be an NSR layer.
        backend: 'auto', 'torch' or 'triton', set on every converted layer.
        authors_padding: the authors' layer zero-pads whatever its ``padding_mode`` says (its
            ``_conv_forward`` replaces the one of nn.Conv2d that applies the mode). 'zeros'
            (default): a converted authors' layer gets ``padding_mode='zeros'``, so its outputs
            stay as they were, with a UserWarning for each layer that declared another mode.
            'declared': it keeps its ``padding_mode``, which NSRConv2d honours as nn.Conv2d
            does, so outputs change for 'reflect', 'replicate' or 'circular' with padding.

    Returns:
        ``model``, for chaining.

    Example:
        >>> model = nn.Sequential(reference.NSRConv2d(3, 8, 3, 2, 2, padding=1))
        >>> type(convert(model, backend="torch")[0]).__name__
        'NSRConv2d'
    """
    backend = check_backend(backend)
    if authors_padding not in AUTHORS_PADDING:
        raise ValueError(
            f"authors_padding must be one of {AUTHORS_PADDING}, got {authors_padding!r}"
        )
    conversions = []
    for name, module in model.named_modules():
        name = name or type(module).__name__
        if isinstance(module, NSRConv2d):
            conversions.append(_Conversion(module))
        elif isinstance(module, reference.NSRConv2d):
            _refuse_lost_methods(name, module, reference.NSRConv2d, set())
            conversions.append(_Conversion(module, _converted_class(module)))
        elif is_authors_layer(module):
            conversions.append(_plan_authors_layer(name, module, authors_padding))
    for conversion in conversions:
        conversion.apply(backend)
        if conversion.warning:
            warnings.warn(conversion.warning, UserWarning, stacklevel=2)
    return model
