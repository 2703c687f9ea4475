"""Train WDSR-NSR for super-resolution on a folder of images, or on synthetic images.

One device:      python examples/train_sr.py --data path/to/images --scale 2 --steps 10000
Several GPUs:    torchrun --nproc_per_node=4 examples/train_sr.py --data path/to/images
No data at hand: python examples/train_sr.py --synthetic --steps 200
A CPU try-out:   python examples/train_sr.py --synthetic --small-cpu   (about a minute)

Low-resolution inputs are bicubic downscalings of random high-resolution crops. Under torchrun
(WORLD_SIZE > 1) each process trains on its own crops under DistributedDataParallel; rank 0
shows the progress bar, measures PSNR on the held-out images and writes the checkpoints. On a
GPU the forward pass runs under bf16 autocast. Checkpoints use the authors' trainer layout
({'model_state_dict', 'optimizer_state_dict', ...}), so their checkpoints resume here and the
other way round. Reading images needs Pillow; synthetic data needs nothing beyond torch.

Checkpoints go to OUT/latest.pth. An existing one is never replaced silently: --resume continues
it (it must hold the same network: --scale, --small, --num-blocks, --units, --width, --groups,
--cardinals), --overwrite starts again from step 0.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from triton_nsr import NSRConv2d, reference
from triton_nsr.models import WDSRNSR
from triton_nsr.models.wdsr_nsr import EVAL_OVERLAP, EVAL_PADDING

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's line breaks and shows every option's default."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# WDSRNSR's eval-time patching pads 4 px and overlaps patches by 8: a patch must exceed 16.
MIN_PATCH_SIZE = 2 * EVAL_PADDING + EVAL_OVERLAP + 1


def patch_size(text: str) -> int:
    """argparse type: a low-resolution patch side of at least MIN_PATCH_SIZE."""
    value = int(text)
    if value < MIN_PATCH_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_PATCH_SIZE} (the evaluation "
                                         f"pads {EVAL_PADDING} px and overlaps patches by "
                                         f"{EVAL_OVERLAP}), got {value}")
    return value


# --small-cpu: a network and a run a 2-core CPU trains in about a minute.
SMALL_CPU = {"num_blocks": 4, "units": 32, "width": 2, "cardinals": 4, "steps": 300,
             "batch_size": 8, "patch_size": 32, "synthetic_images": 16,
             "synthetic_size": 96, "val_every": 150, "save_every": 150}


# The options that decide the network's parameters: a checkpoint only resumes under the same.
MODEL_OPTIONS = ("scale", "small", "num_blocks", "units", "width", "groups", "cardinals")
# What --small fixes (WDSRNSR.small), so those options do not count against a --small run.
SMALL_FIXES = ("num_blocks", "units", "width", "groups", "cardinals")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, help="folder of high-resolution images (needs Pillow)")
    data.add_argument("--synthetic", action="store_true", help="train on generated images")
    data.add_argument("--synthetic-images", type=positive_int, default=32,
                      help="number of synthetic images, validation ones included")
    data.add_argument("--synthetic-size", type=positive_int, default=128,
                      help="side of synthetic images")
    data.add_argument("--val-images", type=positive_int, default=4,
                      help="images held out for PSNR")
    net = parser.add_argument_group("network")
    net.add_argument("--scale", type=positive_int, default=2, help="upscaling factor")
    net.add_argument("--small", action="store_true",
                     help="the authors' released small model (64 units, width 1); overrides "
                          "--num-blocks, --units, --width, --groups, --cardinals")
    net.add_argument("--num-blocks", type=positive_int, default=16, help="residual blocks")
    net.add_argument("--units", type=positive_int, default=32, help="residual units R")
    net.add_argument("--width", type=float, default=4, help="width multiplier")
    net.add_argument("--groups", type=positive_int, default=4, help="sparsity groups k")
    net.add_argument("--cardinals", type=positive_int, default=16, help="sparsity cardinals d")
    net.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto",
                     help="triton_nsr backend of every NSR layer")
    net.add_argument("--layer", choices=("triton_nsr", "paper"), default="triton_nsr",
                     help="'paper': every NSR layer on the paper's formulation "
                          "(triton_nsr.reference.NSRConv2d, ignores --backend), a baseline for "
                          "speed and memory")
    net.add_argument("--compile", action="store_true", help="torch.compile the model")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=positive_int, default=1000,
                       help="total optimizer steps, those of a resumed run included")
    train.add_argument("--batch-size", type=positive_int, default=16, help="per process")
    train.add_argument("--patch-size", type=patch_size, default=48,
                       help=f"low-resolution patch side, at least {MIN_PATCH_SIZE}; training "
                            "images need scale x patch-size pixels a side")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="torch device: cpu, cuda or cuda:N")
    train.add_argument("--seed", type=int, default=0, help="seed of weights and crops")
    train.add_argument("--out", type=Path, default=Path("runs/train_sr"),
                       help="checkpoint folder")
    train.add_argument("--save-every", type=positive_int, default=500,
                       help="steps between checkpoints")
    train.add_argument("--val-every", type=positive_int, default=500,
                       help="steps between PSNR runs")
    train.add_argument("--small-cpu", action="store_true",
                       help="a try-out sized for a CPU (about a minute on 2 cores): "
                            + ", ".join(f"--{k.replace('_', '-')} {v}"
                                        for k, v in SMALL_CPU.items())
                            + "; options given explicitly win")
    existing = train.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue from OUT/latest.pth (from step 0 if there is none)")
    existing.add_argument("--overwrite", action="store_true",
                          help="start from step 0 and replace an existing OUT/latest.pth")
    args = parser.parse_args(argv)
    if args.small_cpu:
        given = {action.dest for action in parser._actions
                 if any(option in (argv if argv is not None else sys.argv[1:])
                        for option in action.option_strings)}
        for name, value in SMALL_CPU.items():
            if name not in given:
                setattr(args, name, value)
    if (args.data is None) == (not args.synthetic):
        parser.error("give exactly one of --data DIR and --synthetic")
    if args.synthetic and args.synthetic_size < args.scale * args.patch_size:
        parser.error(f"--synthetic-size {args.synthetic_size} is below --scale x --patch-size "
                     f"({args.scale * args.patch_size}): no patch fits a synthetic image")
    if args.synthetic and args.synthetic_images <= args.val_images:
        parser.error(f"--synthetic-images {args.synthetic_images} must exceed --val-images "
                     f"{args.val_images} (those are held out for PSNR)")
    try:  # the network's own checks, on the meta device: nothing is allocated
        build_model(args, torch.device("meta"))
    except ValueError as error:
        parser.error(str(error))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a torch device; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        build = ("this torch is a CPU-only build" if torch.version.cuda is None else
                 f"this torch is built for CUDA {torch.version.cuda} but sees no GPU")
        parser.error(f"--device {args.device}: no CUDA device is available ({build}); "
                     "use --device cpu")
    return args


def model_config(args: argparse.Namespace) -> dict:
    """The options that decide the network's parameters, as stored in a checkpoint."""
    return {name: getattr(args, name) for name in MODEL_OPTIONS
            if not (args.small and name in SMALL_FIXES)}


def config_mismatch(checkpoint: Path, stored: dict, wanted: dict) -> str | None:
    """A one-paragraph error naming every option where ``stored`` and ``wanted`` differ, or
    None when the checkpoint's network is this run's."""
    differing = [f"--{name.replace('_', '-')} {wanted.get(name, 'unset')} "
                 f"(checkpoint: {stored.get(name, 'unset')})"
                 for name in MODEL_OPTIONS if stored.get(name) != wanted.get(name)]
    if not differing:
        return None
    return (f"cannot resume from {checkpoint}: it holds a network of another configuration. "
            f"This run asks for {', '.join(differing)}. Rerun with the checkpoint's options to "
            "resume it, or give another --out (or --overwrite) to start a new run.")


def load_folder(folder: Path) -> list[torch.Tensor]:
    """Every image in ``folder`` as a (3, H, W) float tensor in [0, 1]."""
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        sys.exit("--data needs Pillow (pip install pillow); --synthetic needs nothing")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        sys.exit(f"no images in {folder}")
    images = []
    for path in paths:
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        images.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    return images


def synthetic_images(count: int, size: int, seed: int) -> list[torch.Tensor]:
    """Smooth random colour fields with a few sharp edges: textures an upscaler can learn."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        coarse = torch.rand(1, 3, size // 16, size // 16, generator=generator)
        image = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        angle = torch.rand((), generator=generator) * math.pi
        period = 4 + 12 * torch.rand((), generator=generator)
        stripes = (xs * angle.cos() + ys * angle.sin()) % period < period / 2
        images.append((0.8 * image[0] + 0.2 * stripes).clamp(0, 1))
    return images


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic downscaling with antialiasing; (B, C, s*h, s*w) -> (B, C, h, w)."""
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True,
                       align_corners=False)
    return lr.clamp(0, 1)


def random_batch(images, batch_size, patch_size, scale, generator):
    """Random high-resolution crops with random flips, and their downscalings."""
    side = patch_size * scale
    crops = []
    for _ in range(batch_size):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        top = int(torch.randint(image.shape[1] - side + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[2] - side + 1, (1,), generator=generator))
        crop = image[:, top:top + side, left:left + side]
        flips = [d for d, flip in zip((1, 2), torch.rand(2, generator=generator) < 0.5) if flip]
        crops.append(crop.flip(flips) if flips else crop)
    hr = torch.stack(crops)
    return downscale(hr, scale), hr


def psnr(sr: torch.Tensor, hr: torch.Tensor, shave: int) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1], ignoring ``shave`` border pixels."""
    if shave:
        sr, hr = sr[..., shave:-shave, shave:-shave], hr[..., shave:-shave, shave:-shave]
    mse = F.mse_loss(sr.clamp(0, 1).float(), hr.float())
    return float(10 * torch.log10(1 / mse.clamp_min(1e-12)))


@torch.no_grad()
def validate(model, images, scale, device) -> float:
    """Mean PSNR of the model's upscaling of each held-out image (whole images, eval mode)."""
    model.eval()
    scores = []
    for image in images:
        height, width = (size - size % scale for size in image.shape[1:])
        hr = image[None, :, :height, :width].to(device)
        scores.append(psnr(model(downscale(hr, scale)), hr, shave=scale))
    model.train()
    return sum(scores) / len(scores)


def format_duration(seconds: float) -> str:
    """Seconds as H:MM:SS (or M:SS under an hour)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """A one-line text progress bar on stderr: steps done, loss, speed and time left."""

    def __init__(self, total: int, first_step: int = 0, width: int = 30):
        self.total, self.first_step, self.width = total, first_step, width
        self.start = time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        done = int(self.width * step / self.total)
        rate = (step - self.first_step) / max(time.perf_counter() - self.start, 1e-9)
        # The rate of this run's steps so far, validation and checkpoints included.
        eta = format_duration((self.total - step) / rate) if rate > 0 else "?"
        sys.stderr.write(f"\r[{'#' * done}{'.' * (self.width - done)}] {step}/{self.total} "
                         f"loss {loss:.4f} {rate:.2f} it/s ETA {eta}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, torch.device(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return dist.get_rank(), world_size, torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return dist.get_rank(), world_size, torch.device(device)


def use_paper_layers(model: torch.nn.Module) -> None:
    """Put every NSR layer of ``model`` on the paper's formulation, in place.

    The two layer classes have the same constructor, parameters and state and differ only in
    the function computing the layer, so changing the class keeps the parameters, their values
    and the weight norm.
    """
    for module in model.modules():
        if isinstance(module, NSRConv2d):
            module.__class__ = reference.NSRConv2d


def build_model(args, device) -> WDSRNSR:
    options = {"backend": args.backend, "device": device, "lr_patch_size": args.patch_size}
    if args.small:
        model = WDSRNSR.small(scale=args.scale, **options)
    else:
        model = WDSRNSR(scale=args.scale, num_blocks=args.num_blocks,
                        num_residual_units=args.units, width_multiplier=args.width,
                        num_sparsity_groups=args.groups, num_sparsity_cardinals=args.cardinals,
                        **options)
    if args.layer == "paper":
        use_paper_layers(model)
    return model


def save_checkpoint(path: Path, model, optimizer, step: int, args) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
             "step": step, "config": model_config(args),
             # Plain values only, so torch.load's default weights_only mode can read it back.
             "args": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()}}
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # never leave a half-written latest.pth behind


def shape_mismatch(checkpoint: Path, stored: dict, wanted: dict) -> str | None:
    """For checkpoints without a stored configuration: one paragraph counting the parameters
    that do not fit (other shape, missing, unexpected), or None when all fit."""
    reshaped = [key for key in stored.keys() & wanted.keys()
                if stored[key].shape != wanted[key].shape]
    missing, unexpected = wanted.keys() - stored.keys(), stored.keys() - wanted.keys()
    if not (reshaped or missing or unexpected):
        return None
    options = ", ".join("--" + name.replace("_", "-") for name in MODEL_OPTIONS)
    return (f"cannot resume from {checkpoint}: its network is not this run's ({len(reshaped)} "
            f"tensors of another shape, {len(missing)} missing, {len(unexpected)} unexpected). "
            f"It records no configuration, so rerun with the options that wrote it ({options}), "
            "or give another --out (or --overwrite) to start a new run.")


def resume(checkpoint: Path, model, optimizer, args, device) -> int:
    """Load ``checkpoint`` into model and optimizer and say so; the step to continue from.

    Exits with one paragraph naming the differing options when the checkpoint holds another
    network. Checkpoints without a stored configuration (the authors' trainer writes none) are
    compared by their parameter shapes instead.
    """
    if not checkpoint.exists():
        print(f"--resume: no checkpoint at {checkpoint}; starting from step 0", flush=True)
        return 0
    state = torch.load(checkpoint, map_location=device)
    problem = (config_mismatch(checkpoint, state["config"], model_config(args))
               if "config" in state else
               shape_mismatch(checkpoint, state["model_state_dict"], model.state_dict()))
    if problem:
        sys.exit(problem)
    model.load_state_dict(state["model_state_dict"])
    optimizer.load_state_dict(state["optimizer_state_dict"])
    step = state.get("step", 0)
    print(f"resumed from {checkpoint} at step {step} (of --steps {args.steps})", flush=True)
    return step


def main(argv=None) -> None:
    args = parse_args(argv)
    checkpoint = args.out / "latest.pth"
    if checkpoint.exists() and not (args.resume or args.overwrite):
        sys.exit(f"{checkpoint} exists: give --resume to continue it, --overwrite to replace it, "
                 "or another --out")
    rank, world_size, device = setup_distributed(args.device)
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    images = (load_folder(args.data) if args.data else
              synthetic_images(args.synthetic_images, args.synthetic_size, args.seed))
    if len(images) <= args.val_images:
        sys.exit(f"need more than --val-images={args.val_images} images, got {len(images)}")
    train_images, val_images = images[args.val_images:], images[:args.val_images]
    side = args.patch_size * args.scale
    if min(min(image.shape[1:]) for image in train_images) < side:
        sys.exit(f"every training image must be at least {side} px (patch size x scale)")

    model = build_model(args, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = resume(checkpoint, model, optimizer, args, device) if args.resume else 0
    trained = DistributedDataParallel(model) if world_size > 1 else model
    if args.compile:
        trained = torch.compile(trained)
    generator = torch.Generator().manual_seed(args.seed + 1000 * (rank + 1) + step)
    bar = ProgressBar(args.steps, step) if rank == 0 else None

    model.train()
    while step < args.steps:
        lr, hr = (t.to(device, non_blocking=True) for t in
                  random_batch(train_images, args.batch_size, args.patch_size, args.scale,
                               generator))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.l1_loss(trained(lr).float(), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if rank != 0:
            continue
        bar.update(step, loss.item())
        if step % args.save_every == 0 or step == args.steps:
            save_checkpoint(checkpoint, model, optimizer, step, args)
        if step % args.val_every == 0 or step == args.steps:
            bar.close()
            score = validate(model, val_images, args.scale, device)
            print(f"step {step}: validation PSNR {score:.2f} dB on {len(val_images)} images",
                  flush=True)
    if rank == 0:
        print(f"checkpoint: {checkpoint}")
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
