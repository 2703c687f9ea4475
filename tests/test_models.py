"""WDSRNSR: the authors' state_dict layout, parameter counts, initialisation and forward paths."""

import math

import pytest
import torch
from torch import nn

from tests.utils import assert_close
from triton_nsr import NSRConv2d
from triton_nsr.models import WDSRNSR, evaluate_patches


def tiny(**kwargs):
    options = dict(scale=2, num_blocks=2, num_residual_units=4, width_multiplier=2,
                   num_sparsity_groups=2, num_sparsity_cardinals=2, backend="torch",
                   dtype=torch.float64)
    return WDSRNSR(**{**options, **kwargs})


def authors_layout(scale, num_blocks, units, width, k, d, channels=3):
    """Keys and shapes of the authors' MODEL state_dict, written out from reading their code.

    Every conv is old-style weight-normed (weight_g, weight_v, bias); NSR convs add mlp.0 and
    store k times their output channels.
    """
    layout = {}

    def conv(prefix, cin, cout, kernel):
        layout.update({f"{prefix}.weight_g": (cout, 1, 1, 1),
                       f"{prefix}.weight_v": (cout, cin, kernel, kernel),
                       f"{prefix}.bias": (cout,)})

    def nsr(prefix, cin, cout):
        conv(prefix, cin, k * cout, 3)
        layout.update({f"{prefix}.mlp.0.weight": (k * d, cin), f"{prefix}.mlp.0.bias": (k * d,)})

    outputs = scale * scale * channels
    wide = int(units * width)
    conv("body.0", channels, units, 3)
    for i in range(1, num_blocks + 1):
        nsr(f"body.{i}.body.0", units, wide)
        nsr(f"body.{i}.body.2", wide, units)
    conv(f"body.{num_blocks + 1}", units, outputs, 3)
    if outputs != channels:
        conv("skip.0", channels, outputs, 5)
    return layout


@pytest.mark.parametrize("scale,width", [(2, 2), (3, 1.5), (1, 2)])
def test_a_state_dict_in_the_authors_layout_loads_strictly(scale, width):
    model = tiny(scale=scale, width_multiplier=width)
    layout = authors_layout(scale, 2, 4, width, 2, 2)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    synthetic = {k: torch.randn(shape, dtype=torch.float64) for k, shape in layout.items()}
    model.load_state_dict(synthetic, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, synthetic[key]), key


@pytest.mark.parametrize("scale,count", [(2, 4_877_812), (3, 4_887_637), (4, 4_901_392)])
def test_small_preset_has_the_released_parameter_counts(scale, count):
    # The counts the authors publish for their EDSR+NSR ('small') checkpoints.
    model = WDSRNSR.small(scale=scale)
    assert sum(p.numel() for p in model.parameters()) == count
    assert set(model.state_dict()) == set(authors_layout(scale, 16, 64, 1, 4, 16))


def test_initialisation_follows_the_authors():
    model = tiny(num_blocks=4)
    g = {name: p for name, p in model.named_parameters() if name.endswith("weight_g")}
    for name in ("body.0.weight_g", "body.5.weight_g", "skip.0.weight_g"):
        assert torch.all(g[name] == 1.0), name
    for i in range(1, 5):
        assert torch.all(g[f"body.{i}.body.0.weight_g"] == 2.0)
        assert torch.allclose(g[f"body.{i}.body.2.weight_g"], torch.tensor(1 / math.sqrt(4.0),
                                                                          dtype=torch.float64))
    biases = [p for name, p in model.named_parameters()
              if name.endswith("bias") and ".mlp." not in name]
    assert all(torch.all(b == 0) for b in biases)


def test_nsr_layers_get_the_backend_and_temperature():
    model = tiny(temperature=0.5)
    layers = [m for m in model.modules() if isinstance(m, NSRConv2d)]
    assert len(layers) == 4
    assert all(m.backend == "torch" and m.temperature == 0.5 for m in layers)
    assert [m.out_channels for m in layers] == [8, 4, 8, 4]


@pytest.mark.parametrize("training", [True, False])
def test_input_is_not_modified(training):
    model = tiny().train(training)
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64, requires_grad=training)
    before = x.detach().clone()
    out = model(x)
    assert out.shape == (2, 3, 18, 14)
    assert torch.equal(x.detach(), before)


def zero_tail(model):
    tail = model.body[-1]
    with torch.no_grad():
        tail.weight_g.zero_()
        tail.bias.zero_()


def test_denoising_variant_has_identity_skip_and_no_shuffle():
    model = tiny(scale=1)
    assert len(model.skip) == 0 and len(model.shuf) == 0
    zero_tail(model)  # the body now adds nothing: what is left is the global skip
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert_close(model(x), x)


def test_super_resolution_skip_is_the_shuffled_5x5_conv():
    model = tiny(scale=2)
    zero_tail(model)
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    expected = nn.functional.pixel_shuffle(model.skip[0](x - 0.5), 2) + 0.5
    assert_close(model(x), expected)


def test_eval_on_large_images_runs_the_body_on_patches():
    # 4 * lr_patch_size = 128: a 128 x 132 image is patched in eval mode, as the authors do.
    model = tiny(lr_patch_size=32).eval()
    x = torch.rand(1, 3, 128, 132, dtype=torch.float64)
    with torch.no_grad():
        shifted = x - 0.5
        patched = evaluate_patches(model.body, shifted, 32, padding=4, stride=16)
        expected = nn.functional.pixel_shuffle(patched + model.skip(shifted), 2) + 0.5
        assert_close(model(x), expected)
        whole = model.train()(x)
        assert not torch.allclose(whole, expected)  # the NSR routing sees different pools
        model.eval().lr_patch_size = None
        assert_close(model(x), whole)


def test_eval_on_small_images_runs_the_whole_image():
    model = tiny(lr_patch_size=32)
    x = torch.rand(1, 3, 127, 140, dtype=torch.float64)
    with torch.no_grad():
        assert_close(model.eval()(x), model.train()(x))


def test_gradients_reach_every_parameter():
    model = tiny()
    model(torch.rand(2, 3, 6, 6, dtype=torch.float64)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_too_small_lr_patch_size_is_rejected():
    with pytest.raises(ValueError, match="lr_patch_size must exceed 16"):
        tiny(lr_patch_size=16)


def test_patching_the_whole_model_differs_only_at_the_border():
    # evaluate_patches on the whole model also patches the 5x5 skip conv, which then sees
    # reflected rather than zero pixels within 2 input pixels of the border; elsewhere the two
    # evaluations agree.
    model = tiny(lr_patch_size=32).eval()
    x = torch.rand(1, 3, 128, 132, dtype=torch.float64)
    with torch.no_grad():
        builtin = model(x)
        patched = evaluate_patches(model, x, 32, padding=4, stride=16)
    inner = (..., slice(4, -4), slice(4, -4))  # 2 input pixels at scale 2
    assert_close(patched[inner], builtin[inner])
    assert not torch.allclose(patched, builtin)


def test_small_network_on_the_triton_backend_matches_the_torch_backend():
    """Forward and every parameter gradient of a whole (tiny) WDSR-NSR on the Triton kernels."""
    pytest.importorskip("triton_nsr.ops")
    reference_model = tiny(num_blocks=1)
    triton_model = tiny(num_blocks=1, backend="triton")
    triton_model.load_state_dict(reference_model.state_dict())
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64)
    outputs = []
    for model in (reference_model, triton_model):
        out = model(x)
        out.square().mean().backward()
        outputs.append(out)
    assert_close(outputs[1], outputs[0])
    for (name, p), (_, q) in zip(reference_model.named_parameters(),
                                 triton_model.named_parameters()):
        assert_close(q.grad, p.grad, f"grad of {name}")
