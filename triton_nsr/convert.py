"""``convert``: turn the NSR layers of an existing model into :class:`triton_nsr.NSRConv2d`.

The layers are converted in place by changing their class, not by building new modules: the
module objects, their Parameters (so optimizers and DDP keep working), parameter names,
weight-norm hooks, parametrizations, device, dtype and training mode all stay as they are.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from triton_nsr import reference
from triton_nsr.arguments import check_backend, check_temperature
from triton_nsr.modules import NSRConv2d, NSRConv2dBase

# Entries of a class namespace that belong to the class object itself, never copied to another.
_CLASS_INTERNALS = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__"}


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


def _set_class(module: nn.Module) -> None:
    """Make ``module`` an NSRConv2d, keeping a parametrized module parametrized.

    torch.nn.utils.parametrize gives a parametrized module a generated subclass of its original
    class that carries the parametrized tensors as properties; removing the parametrization later
    restores ``__bases__[0]``. So the generated class is rebuilt on top of NSRConv2d with the same
    properties, and removal then yields a plain NSRConv2d.
    """
    if not parametrize.is_parametrized(module):
        module.__class__ = NSRConv2d
        return
    generated = type(module)
    namespace = {
        name: value for name, value in vars(generated).items() if name not in _CLASS_INTERNALS
    }
    module.__class__ = type(f"Parametrized{NSRConv2d.__name__}", (NSRConv2d,), namespace)


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Convert every NSR layer of ``model`` to :class:`triton_nsr.NSRConv2d`, in place.

    Converted: layers in the authors' style (see :func:`is_authors_layer`; their ``out_channels``
    is divided by k and, having no temperature, they get 1.0) and the plain-PyTorch
    :class:`triton_nsr.reference.NSRConv2d`. Layers that already are NSRConv2d only get the new
    ``backend``. Outputs and gradients are unchanged up to floating-point rounding.

    Args:
        model: any module; ``model`` itself may be an NSR layer.
        backend: 'auto', 'torch' or 'triton', set on every converted layer.

    Returns:
        ``model``, for chaining.

    Example:
        >>> model = nn.Sequential(reference.NSRConv2d(3, 8, 3, 2, 2, padding=1))
        >>> type(convert(model, backend="torch")[0]).__name__
        'NSRConv2d'
    """
    backend = check_backend(backend)
    for module in model.modules():
        if is_authors_layer(module):
            k = module.num_sparsity_groups
            if module.out_channels % k != 0:
                raise ValueError(
                    f"{type(module).__name__} has out_channels={module.out_channels}, not a "
                    f"multiple of num_sparsity_groups={k}"
                )
            module.out_channels //= k
            module.temperature = check_temperature(getattr(module, "temperature", 1.0))
        elif not isinstance(module, NSRConv2dBase):
            continue
        if not isinstance(module, NSRConv2d):
            _set_class(module)
        module.backend = backend
    return model
