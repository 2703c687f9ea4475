"""examples/train_sr.py runs end to end on tiny data and writes a checkpoint WDSRNSR can load;
its guards (overwrite, resume, configuration, device) stop with one clear message."""

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
SYNTHETIC = ["--synthetic", "--synthetic-images", "3", "--synthetic-size", "48"]
TINY = ["--num-blocks", "1", "--units", "4", "--width", "2", "--groups", "2", "--cardinals", "2",
        "--batch-size", "2", "--patch-size", "20", "--val-images", "1", "--backend", "torch",
        "--device", "cpu"]


def run_script(*args, timeout=60):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                  "")])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def script():
    """examples/train_sr.py as a module, to call its main() in this process (faster)."""
    spec = importlib.util.spec_from_file_location("train_sr", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_shows_every_default():
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    assert "--synthetic" in result.stdout and "torchrun" in result.stdout
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for default in ("(default: 1000)", "(default: 16)", "(default: runs/train_sr)",
                    "(default: auto)", "(default: 0.001)"):
        assert default in text


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
    assert "2/2" in result.stderr and "ETA" in result.stderr  # the progress bar
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


def test_layer_paper_puts_every_nsr_layer_on_the_papers_formulation(script):
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


def test_runs_folder_is_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "-q", "runs/train_sr/latest.pth"], cwd=ROOT,
                            check=False)
    assert result.returncode == 0, "runs/ (the default --out) is not ignored by git"


def exit_message(script, *argv) -> str:
    """The message main() exits with (sys.exit(text) outside argparse)."""
    with pytest.raises(SystemExit) as exit_info:
        script.main([*SYNTHETIC, *TINY, *argv])
    assert isinstance(exit_info.value.code, str), exit_info.value.code
    return exit_info.value.code


def test_an_existing_checkpoint_is_not_overwritten_without_resume_or_overwrite(script, tmp_path):
    script.main([*SYNTHETIC, *TINY, "--steps", "1", "--out", str(tmp_path)])
    checkpoint = tmp_path / "latest.pth"
    written = checkpoint.read_bytes()
    message = exit_message(script, "--steps", "2", "--out", str(tmp_path))
    assert str(checkpoint) in message and "--resume" in message and "--overwrite" in message
    assert checkpoint.read_bytes() == written
    script.main([*SYNTHETIC, *TINY, "--steps", "1", "--out", str(tmp_path), "--overwrite"])
    assert torch.load(checkpoint)["step"] == 1 and checkpoint.read_bytes() != written


def test_resume_says_where_it_resumed(script, tmp_path, capsys):
    script.main([*SYNTHETIC, *TINY, "--steps", "1", "--out", str(tmp_path)])
    capsys.readouterr()
    script.main([*SYNTHETIC, *TINY, "--steps", "2", "--out", str(tmp_path), "--resume"])
    checkpoint = tmp_path / "latest.pth"
    assert f"resumed from {checkpoint} at step 1 (of --steps 2)" in capsys.readouterr().out
    check_checkpoint(checkpoint, 2)


def test_resume_without_a_checkpoint_says_it_starts_from_zero(script, tmp_path, capsys):
    script.main([*SYNTHETIC, *TINY, "--steps", "1", "--out", str(tmp_path), "--resume"])
    assert "no checkpoint at" in capsys.readouterr().out
    check_checkpoint(tmp_path / "latest.pth", 1)


def test_resume_and_overwrite_exclude_each_other(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--synthetic", "--resume", "--overwrite"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_resuming_another_configuration_names_the_differing_options(script, tmp_path):
    script.main([*SYNTHETIC, *TINY, "--steps", "1", "--out", str(tmp_path)])
    # argparse keeps the last of a repeated option, so these override TINY's values.
    message = exit_message(script, "--steps", "2", "--out", str(tmp_path), "--resume",
                           "--units", "6", "--cardinals", "1")
    assert "--units 6 (checkpoint: 4)" in message and "--cardinals 1 (checkpoint: 2)" in message
    assert "--groups" not in message  # the same in both
    assert "size mismatch" not in message and "\n" not in message  # one paragraph
    check_checkpoint(tmp_path / "latest.pth", 1)


def test_resuming_a_checkpoint_without_configuration_compares_shapes(script, tmp_path):
    script.main([*SYNTHETIC, *TINY, "--steps", "1", "--out", str(tmp_path)])
    checkpoint = tmp_path / "latest.pth"
    state = torch.load(checkpoint)
    del state["config"], state["args"]  # as the authors' trainer writes it
    torch.save(state, checkpoint)
    message = exit_message(script, "--steps", "2", "--out", str(tmp_path), "--resume",
                           "--units", "6")
    assert "records no configuration" in message and "tensors of another shape" in message
    assert "size mismatch" not in message and "\n" not in message
    script.main([*SYNTHETIC, *TINY, "--steps", "2", "--out", str(tmp_path), "--resume"])
    check_checkpoint(checkpoint, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(("device", "expected"), [("cuda", "no CUDA device is available"),
                                                  ("cuda:1", "no CUDA device is available"),
                                                  ("gpu", "is not a torch device")])
def test_a_device_that_is_not_there_is_a_usage_error(script, capsys, device, expected):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--synthetic", "--device", device])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error


def test_progress_shows_the_time_left(script, capsys, monkeypatch):
    clock = iter([100.0, 110.0])  # 10 s for the first 2 of 12 steps: 50 s left
    monkeypatch.setattr(script.time, "perf_counter", lambda: next(clock))
    bar = script.ProgressBar(12)
    bar.update(2, 0.5)
    assert "2/12 loss 0.5000 0.20 it/s ETA 0:50" in capsys.readouterr().err
    assert script.format_duration(50) == "0:50" and script.format_duration(3725) == "1:02:05"


@pytest.mark.parametrize("options, message", [
    (["--patch-size", "16"], "--patch-size: must be at least 17"),
    (["--units", "30"], "num_residual_units (30) must be divisible by num_sparsity_cardinals"),
    (["--patch-size", "100"], "--synthetic-size 128 is below --scale x --patch-size (200)"),
    (["--width", "0.01"], "width_multiplier must give a block at least one channel"),
    (["--synthetic-images", "4"], "--synthetic-images 4 must exceed --val-images 4"),
])
def test_out_of_range_options_are_usage_errors_without_a_traceback(script, options, message,
                                                                    capsys):
    with pytest.raises(SystemExit) as exit_:
        script.parse_args(["--synthetic", *options])
    assert exit_.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err


def test_small_cpu_fills_in_what_is_not_given(script):
    args = script.parse_args(["--synthetic", "--small-cpu", "--steps", "5"])
    assert args.steps == 5
    assert (args.num_blocks, args.patch_size) == (script.SMALL_CPU["num_blocks"],
                                                  script.SMALL_CPU["patch_size"])
