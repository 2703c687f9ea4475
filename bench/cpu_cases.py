"""What the CPU suite runs: NSR layer shapes and a WDSR-NSR training step, three ways each.

The three providers, built with the same parameters so their ratios compare like with like:

- 'paper':   the paper's formulation, ``triton_nsr.reference.NSRConv2d`` (one grouped F.conv2d
             over the batch folded into channels)
- 'default': ``triton_nsr.NSRConv2d`` with ``backend='auto'``, what a user gets on this machine
- 'static':  ``nn.Conv2d`` of the same in/out channels and kernel: the floor NSR is held to

Only the public API is used, so the suite measures whatever the library's default is today.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import triton_nsr
from bench.workloads import FORWARD, FORWARD_BACKWARD, Workload, main_workloads, tiny_workloads
from triton_nsr import reference

PROVIDERS = ("paper", "default", "static")
PASSES = (FORWARD, FORWARD_BACKWARD)
TRAIN = "train_step"
LAYER_NAMES = ("W1-expand", "W1-reduce", "W2")


@dataclass(frozen=True)
class TrainStep:
    """One WDSR-NSR training step: ``batch`` LR patches of ``patch`` squared, L1 loss, Adam.

    The network is WDSRNSR(scale, num_blocks, num_residual_units, width_multiplier, k, d).
    """

    name: str
    batch: int = 16
    patch: int = 48
    scale: int = 2
    num_blocks: int = 4
    num_residual_units: int = 32
    width_multiplier: float = 4
    k: int = 4
    d: int = 16
    description: str = ""

    def as_dict(self) -> dict:
        return {**asdict(self), "kind": "train"}


Case = Workload | TrainStep


def case_dict(case: Case) -> dict:
    """A case as stored in the run JSON: layers carry kind 'layer', steps kind 'train'."""
    if isinstance(case, TrainStep):
        return case.as_dict()
    return {**case.as_dict(), "kind": "layer"}


def case_from_dict(stored: dict) -> Case:
    """The case ``case_dict`` stored."""
    fields = {key: value for key, value in stored.items() if key != "kind"}
    if stored["kind"] == "train":
        return TrainStep(**fields)
    return Workload(**{**fields, "passes": tuple(fields["passes"])})


def case_passes(case: Case) -> tuple[str, ...]:
    """What is timed for a case: both passes of a layer; a training step is one whole step."""
    return (TRAIN,) if isinstance(case, TrainStep) else PASSES


def default_cases() -> list[Case]:
    """The issue's CPU shapes: W1-expand, W1-reduce and W2 at batch 16, and a 4-block step."""
    layers = [w for w in main_workloads() if w.name in LAYER_NAMES]
    step = TrainStep("WDSR-NSR-train", description=(
        "one WDSR-NSR x2 training step: 4 blocks, 32 units (128 inside), k=4, d=16, 16 LR "
        "patches of 48x48, L1, Adam"))
    return [*layers, step]


def tiny_cases() -> list[Case]:
    """Cases small enough for a test of the whole suite in a few seconds."""
    step = TrainStep("tiny-train", batch=2, patch=24, num_blocks=1, num_residual_units=4,
                     width_multiplier=2, k=2, d=2, description="tiny training step: CPU smoke "
                     "test")
    return [*tiny_workloads(), step]


def _normalised_like(layer: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` with the same weight normalisation as ``layer`` (hook-style or parametrized)."""
    if hasattr(layer, "weight_g") and hasattr(layer, "weight_v"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the hook style WDSRNSR uses
            return nn.utils.weight_norm(new)
    if parametrize.is_parametrized(layer, "weight"):
        return nn.utils.parametrizations.weight_norm(new)
    return new


def paper_layer(layer: triton_nsr.NSRConv2d) -> nn.Module:
    """The paper's layer with ``layer``'s configuration, normalisation and parameter values."""
    new = reference.NSRConv2d(
        layer.in_channels, layer.out_channels, layer.kernel_size, layer.num_sparsity_groups,
        layer.num_sparsity_cardinals, layer.stride, layer.padding, layer.dilation, layer.groups,
        layer.bias is not None, layer.padding_mode, temperature=layer.temperature,
    )
    # A parameter's device: under hook-style weight normalisation ``layer.weight`` is a plain
    # attribute, left where it was until the next forward recomputes it.
    new = _normalised_like(layer, new).to(next(layer.parameters()).device)
    new.load_state_dict(layer.state_dict())
    return new


def static_layer(layer: triton_nsr.NSRConv2d) -> nn.Module:
    """A static nn.Conv2d of ``layer``'s in/out channels, kernel and geometry (fresh weights)."""
    new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                    layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                    layer.padding_mode)
    return _normalised_like(layer, new).to(layer.weight.device)


def replace_nsr_layers(model: nn.Module, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace every ``triton_nsr.NSRConv2d`` in ``model`` by ``make(layer)``, in place."""
    targets = [name for name, m in model.named_modules() if isinstance(m, triton_nsr.NSRConv2d)]
    for name in targets:
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attribute, make(getattr(parent, attribute)))
    return model


LAYER_MAKERS = {"paper": paper_layer, "default": lambda layer: layer, "static": static_layer}


def layer_module(workload: Workload, provider: str) -> nn.Module:
    """The provider's module for a layer workload, seeded so every provider shares weights."""
    torch.manual_seed(0)
    layer = triton_nsr.NSRConv2d(workload.in_channels, workload.out_channels,
                                 workload.kernel_size, workload.k, workload.d,
                                 padding=workload.padding)
    return LAYER_MAKERS[provider](layer)


def train_model(step: TrainStep, provider: str) -> nn.Module:
    """WDSR-NSR for ``step`` on the provider's layers, seeded so NSR providers share weights."""
    from triton_nsr.models import WDSRNSR

    torch.manual_seed(0)
    model = WDSRNSR(scale=step.scale, num_blocks=step.num_blocks,
                    num_residual_units=step.num_residual_units,
                    width_multiplier=step.width_multiplier, num_sparsity_groups=step.k,
                    num_sparsity_cardinals=step.d, lr_patch_size=None)
    return replace_nsr_layers(model, LAYER_MAKERS[provider])


def build(case: Case, provider: str, pass_: str) -> Callable[[], object]:
    """A closure running one ``pass_`` of ``case`` on ``provider``; its tensors are built here.

    Layers: 'forward' runs under no_grad (inference); 'forward_backward' also computes the
    gradients of the input and every parameter with torch.autograd.grad, so nothing accumulates
    between calls. Training steps: zero_grad, forward, L1 loss, backward, Adam step.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    if pass_ not in case_passes(case):
        raise ValueError(f"{case.name} runs {case_passes(case)}, not {pass_!r}")
    if isinstance(case, TrainStep):
        return _train_step(case, provider)
    module = layer_module(case, provider)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(case.batch, case.in_channels, case.height, case.width, generator=generator)
    if pass_ == FORWARD:
        def forward() -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        return forward
    x.requires_grad_(True)
    leaves = [x, *module.parameters()]

    def forward_backward() -> tuple[torch.Tensor, ...]:
        output = module(x)
        return torch.autograd.grad(output, leaves, torch.ones_like(output))

    return forward_backward


def _train_step(step: TrainStep, provider: str) -> Callable[[], None]:
    model = train_model(step, provider).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    lr = torch.rand(step.batch, 3, step.patch, step.patch, generator=generator)
    hr = torch.rand(step.batch, 3, step.scale * step.patch, step.scale * step.patch,
                    generator=generator)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.l1_loss(model(lr), hr).backward()
        optimizer.step()

    return train_step
