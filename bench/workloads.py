"""The benchmark's workloads: NSR layer shapes from WDSR-NSR, sweeps, and the end-to-end jobs.

Every layer workload follows the WDSR-NSR conventions unless it says otherwise: a 3x3 kernel,
padding 1, stride 1, k=4 sparsity groups and d=16 cardinals, bias on. A workload only describes
shapes; the harness builds the tensors and the providers decide what to run on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from triton_nsr.flops import LayerCost, nsr_layer_cost
from triton_nsr.models.patches import patch_layout

FORWARD = "forward"
FORWARD_BACKWARD = "forward_backward"
TRAINING = (FORWARD, FORWARD_BACKWARD)
INFERENCE = (FORWARD,)

# The evaluation image of W3 and the end-to-end eval: a DIV2K-sized LR image at x2 (W x H).
EVAL_IMAGE_WIDTH, EVAL_IMAGE_HEIGHT = 1020, 678
EVAL_PATCH, EVAL_PADDING, EVAL_STRIDE = 48, 4, 32


@dataclass(frozen=True)
class Workload:
    """One NSR layer on input (batch, in_channels, height, width).

    ``group`` names the family ('W1', 'sweep-batch', ...); ``sweep_value`` is the swept
    quantity's value for sweep members. ``passes`` lists what the harness measures.
    """

    name: str
    group: str
    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    k: int = 4
    d: int = 16
    kernel_size: int = 3
    padding: int = 1
    passes: tuple[str, ...] = TRAINING
    sweep_value: int | None = None
    description: str = ""

    def cost(self, itemsize: int = 4) -> LayerCost:
        """Analytic parameters, FLOPs and bytes of this layer (triton_nsr.flops)."""
        return nsr_layer_cost(
            self.batch, self.in_channels, self.out_channels, self.height, self.width,
            self.kernel_size, self.k, self.d, padding=self.padding, itemsize=itemsize,
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "passes": list(self.passes)}


@dataclass(frozen=True)
class EndToEnd:
    """A whole-model job on WDSR-NSR (x2): a training step or the patch-based eval of an image.

    For 'train', ``batch`` LR patches of ``patch_size`` squared; for 'eval', one image of
    ``image_height`` x ``image_width`` cut into patches (see :func:`eval_patch_count`).
    """

    name: str
    kind: str
    batch: int = 16
    patch_size: int = EVAL_PATCH
    image_height: int = EVAL_IMAGE_HEIGHT
    image_width: int = EVAL_IMAGE_WIDTH
    description: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def eval_patch_count() -> int:
    """Number of 48x48 patches the eval image is cut into: the batch of W3.

    Taken from the evaluation protocol itself (triton_nsr.models.patches.patch_layout: a centred
    grid plus four border strips), so the benchmark runs the batch the evaluation runs.
    """
    layout = patch_layout(EVAL_IMAGE_HEIGHT, EVAL_IMAGE_WIDTH, EVAL_PATCH, EVAL_PADDING,
                          EVAL_STRIDE, border_weight=0.3)
    return sum(grid.rows * grid.cols for grid in layout)


# The smoke's large image (bench/gpu/plan.py): batch 1 takes the split kernel gradient.
W4_256 = Workload("W4-256", "smoke", 1, 64, 64, 256, 256, description="W4 at 256x256")


def main_workloads() -> list[Workload]:
    """W1-W4: the shapes WDSR-NSR trains and evaluates on."""
    return [
        Workload("W1-expand", "W1", 16, 32, 128, 48, 48,
                 description="training, wide block expansion 32->128, batch 16, 48x48"),
        Workload("W1-reduce", "W1", 16, 128, 32, 48, 48,
                 description="training, wide block reduction 128->32, batch 16, 48x48"),
        Workload("W2", "W2", 16, 64, 64, 48, 48,
                 description="training, small model 64->64, batch 16, 48x48"),
        Workload("W3", "W3", eval_patch_count(), 32, 128, 48, 48, passes=INFERENCE,
                 description=(
                     f"inference, every 48x48 patch of a {EVAL_IMAGE_WIDTH}x{EVAL_IMAGE_HEIGHT} "
                     f"LR image ({EVAL_PADDING} px reflect pad, stride {EVAL_STRIDE}) in one "
                     "batch, 32->128"
                 )),
        Workload("W4", "W4", 1, 64, 64, 512, 512,
                 description="one large image, batch 1, 512x512, 64->64"),
    ]


def sweep_workloads() -> list[Workload]:
    """One-parameter sweeps around W1-expand (batch, k, channels) and W2 (resolution)."""
    sweeps = []
    for batch in (1, 2, 4, 8, 16, 32, 64):
        sweeps.append(Workload(f"batch-{batch}", "sweep-batch", batch, 32, 128, 48, 48,
                               sweep_value=batch, description="W1-expand, batch swept"))
    # Batch 4 keeps the 512x512 point within a few hundred MB in float32.
    for size in (32, 48, 64, 128, 256, 512):
        sweeps.append(Workload(f"res-{size}", "sweep-resolution", 4, 64, 64, size, size,
                               sweep_value=size, description="64->64, batch 4, resolution swept"))
    for k in (1, 2, 4, 8, 16):
        sweeps.append(Workload(f"k-{k}", "sweep-k", 16, 32, 128, 48, 48, k=k,
                               sweep_value=k, description="W1-expand, k swept"))
    for channels in (16, 32, 64, 128, 256):
        sweeps.append(Workload(f"ch-{channels}", "sweep-channels", 16, channels, channels, 48, 48,
                               sweep_value=channels, description="C->C, batch 16, 48x48"))
    return sweeps


def end_to_end_jobs() -> list[EndToEnd]:
    """The two whole-model jobs: one training step and the patch-based eval of one image."""
    return [
        EndToEnd("E2E-train", "train", batch=16, patch_size=48,
                 description="one WDSR-NSR x2 training step: 16 LR patches of 48x48, L1, Adam"),
        EndToEnd("E2E-eval", "eval",
                 description=(
                     f"patch-based eval of a {EVAL_IMAGE_WIDTH}x{EVAL_IMAGE_HEIGHT} LR image, "
                     "WDSR-NSR x2"
                 )),
    ]


def tiny_workloads() -> list[Workload]:
    """Shapes small enough for CPU smoke runs of the harness (tests, --device cpu)."""
    return [
        Workload("tiny", "tiny", 2, 8, 16, 8, 8, k=2, d=4,
                 description="2 x 8 -> 16, 8x8, k=2, d=4: CPU smoke test"),
    ]


def all_workloads() -> list[Workload]:
    return main_workloads() + sweep_workloads() + tiny_workloads()


def select(names: list[str]) -> tuple[list[Workload], list[EndToEnd]]:
    """Resolve names or group names ('W1', 'sweeps', 'e2e', 'main', 'W3', ...) to jobs.

    Raises ValueError naming the unknown entries.
    """
    layers = all_workloads()
    jobs = end_to_end_jobs()
    groups = {
        "main": main_workloads(),
        "sweeps": sweep_workloads(),
        "tiny": tiny_workloads(),
    }
    chosen: list[Workload] = []
    chosen_jobs: list[EndToEnd] = []
    unknown = []
    for name in names:
        if name in groups:
            matches = groups[name]
        else:
            matches = [w for w in layers if name in (w.name, w.group)]
        job_matches = [j for j in jobs if name in (j.name, "e2e")]
        if not matches and not job_matches:
            unknown.append(name)
        chosen += [w for w in matches if w not in chosen]
        chosen_jobs += [j for j in job_matches if j not in chosen_jobs]
    if unknown:
        known = sorted({w.name for w in layers} | {w.group for w in layers} | set(groups)
                       | {j.name for j in jobs} | {"e2e"})
        raise ValueError(f"unknown workload(s) {unknown}; choose from {known}")
    return chosen, chosen_jobs
