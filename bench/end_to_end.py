"""Whole-model jobs on WDSR-NSR: one training step, and the patch-based eval of one image.

The model comes from ``triton_nsr.models`` (imported here, lazily: the harness reports the job
as skipped when it is missing). For 'triton_nsr' every NSR layer runs on the triton backend; for
'paper' every NSR layer is replaced by the paper's layer (``triton_nsr.reference.NSRConv2d``)
with the same parameters and weight normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.cpu_cases import paper_layer, replace_nsr_layers
from bench.workloads import EVAL_PADDING, EVAL_STRIDE, EndToEnd

PROVIDERS = ("paper", "triton_nsr")
SCALE = 2


def build(job: EndToEnd, provider: str, device: str) -> Callable[[], object]:
    """A closure running one ``job`` step with every NSR layer on ``provider``'s backend.

    Raises ImportError when triton_nsr.models is missing, ValueError for an unknown provider.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"end-to-end jobs run {sorted(PROVIDERS)}, not {provider!r}")
    from triton_nsr import convert
    from triton_nsr.models import WDSRNSR, evaluate_patches

    model = WDSRNSR(scale=SCALE, lr_patch_size=job.patch_size).to(device)
    if provider == "paper":
        model = replace_nsr_layers(model, paper_layer)
    else:
        model = convert(model, backend="triton")

    if job.kind == "train":
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        size = job.patch_size
        lr = torch.rand(job.batch, 3, size, size, device=device)
        hr = torch.rand(job.batch, 3, SCALE * size, SCALE * size, device=device)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.l1_loss(model(lr), hr).backward()
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
