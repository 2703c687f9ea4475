"""examples/train_sr.py runs end to end on tiny data and writes a checkpoint WDSRNSR can load."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triton_nsr import NSRConv2d, reference
from triton_nsr.models import WDSRNSR

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_sr.py"
TINY = ["--num-blocks", "1", "--units", "4", "--width", "2", "--groups", "2", "--cardinals", "2",
        "--batch-size", "2", "--patch-size", "20", "--val-images", "1", "--backend", "torch",
        "--device", "cpu"]


def run_script(*args, timeout=60):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                  "")])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_help():
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    assert "--synthetic" in result.stdout and "torchrun" in result.stdout


def check_checkpoint(path: Path, steps: int):
    state = torch.load(path)
    assert state["step"] == steps
    model = WDSRNSR(scale=2, num_blocks=1, num_residual_units=4, width_multiplier=2,
                    num_sparsity_groups=2, num_sparsity_cardinals=2, lr_patch_size=20)
    model.load_state_dict(state["model_state_dict"], strict=True)


def test_two_steps_on_synthetic_data(tmp_path):
    result = run_script("--synthetic", "--steps", "2", "--synthetic-images", "3",
                        "--synthetic-size", "48", "--out", str(tmp_path), *TINY)
    assert result.returncode == 0, result.stderr
    assert "step 2: validation PSNR" in result.stdout
    assert "2/2" in result.stderr  # the progress bar
    check_checkpoint(tmp_path / "latest.pth", 2)


def test_one_step_on_a_folder_of_images(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    for i in range(2):
        pixels = (torch.rand(50, 45, 3) * 255).to(torch.uint8).numpy()
        image_module.fromarray(pixels).save(tmp_path / f"{i}.png")
    result = run_script("--data", str(tmp_path), "--steps", "1", "--out", str(tmp_path / "run"),
                        *TINY)
    assert result.returncode == 0, result.stderr
    check_checkpoint(tmp_path / "run" / "latest.pth", 1)


def test_layer_paper_puts_every_nsr_layer_on_the_papers_formulation():
    spec = importlib.util.spec_from_file_location("train_sr", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args(["--synthetic", *TINY])
    torch.manual_seed(0)
    ours = script.build_model(args, "cpu")
    torch.manual_seed(0)
    paper = script.build_model(script.parse_args(["--synthetic", "--layer", "paper", *TINY]),
                               "cpu")
    layers = [m for m in paper.modules() if isinstance(m, reference.NSRConv2d)]
    assert layers and not any(isinstance(m, NSRConv2d) for m in layers)
    lr = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(paper(lr), ours(lr), atol=1e-5, rtol=1e-5)
    paper(lr).sum().backward()  # the weight norm still reaches the swapped layers
    assert all(m.weight_g.grad is not None for m in layers)
