"""Whole-model jobs on WDSR-NSR: one training step, and the patch-based eval of one image.

The model comes from ``triton_nsr.models`` (imported here, lazily: the harness reports the job
as skipped when it is missing). For 'triton_nsr' every NSR layer runs on the triton backend; for
'paper' every NSR layer is replaced by the paper's layer (``triton_nsr.reference.NSRConv2d``)
with the same parameters and weight normalisation; for 'static' by an nn.Conv2d of the same
shape (the network NSR is measured against). A '_graphed' provider trains the same model under
torch.compile(mode="reduce-overhead"): the step's forward and backward replayed as CUDA graphs.
The training step runs channels_last (with bf16 autocast, the harness's headline precision), as
mixed-precision training on a GPU does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.cpu_cases import paper_layer, replace_nsr_layers, static_layer
from bench.workloads import EVAL_PADDING, EVAL_STRIDE, EndToEnd

EAGER = ("paper", "triton_nsr", "static")
PROVIDERS = (*EAGER, *(f"{name}_graphed" for name in EAGER))
# What the harness may pass to every job: the graphed ones and the static network train only.
TRAIN_ONLY = tuple(p for p in PROVIDERS if p.endswith("_graphed") or p == "static")
SCALE = 2


def build(job: EndToEnd, provider: str, device: str) -> Callable[[], object]:
    """A closure running one ``job`` step with every NSR layer on ``provider``'s backend.

    Raises ImportError when triton_nsr.models is missing, ValueError for an unknown provider.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"end-to-end jobs run {sorted(PROVIDERS)}, not {provider!r}")
    if job.kind != "train" and provider in TRAIN_ONLY:
        raise ValueError(f"{provider!r} runs the training step only, not a {job.kind} job")
    from triton_nsr import convert
    from triton_nsr.models import WDSRNSR, evaluate_patches

    base = provider.removesuffix("_graphed")
    model = WDSRNSR(scale=SCALE, lr_patch_size=job.patch_size).to(device)
    if base == "paper":
        model = replace_nsr_layers(model, paper_layer)
    elif base == "static":
        model = replace_nsr_layers(model, static_layer)
    else:
        model = convert(model, backend="triton")

    if job.kind == "train":
        model.train()
        layout = torch.channels_last
        model = model.to(memory_format=layout)
        # capturable: the optimizer's step, inside the replayed graph, keeps its state on the
        # device.
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4,
                                     capturable=device == "cuda")
        size = job.patch_size
        lr = torch.rand(job.batch, 3, size, size, device=device).to(memory_format=layout)
        hr = torch.rand(job.batch, 3, SCALE * size, SCALE * size,
                        device=device).to(memory_format=layout)
        net = model
        if provider.endswith("_graphed"):
            torch._dynamo.reset()
            net = torch.compile(model, mode="reduce-overhead")

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.l1_loss(net(lr), hr).backward()
            optimizer.step()

        return train_step

    if job.kind == "eval":
        model.eval()
        image = torch.rand(1, 3, job.image_height, job.image_width, device=device)

        def eval_image() -> torch.Tensor:
            with torch.no_grad():
                return evaluate_patches(model, image, patch_size=job.patch_size,
                                        padding=EVAL_PADDING, stride=EVAL_STRIDE)

        return eval_image

    raise ValueError(f"unknown end-to-end kind {job.kind!r}")
