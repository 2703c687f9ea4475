"""Shared test helpers: the tolerance table, an independent per-sample oracle, gradient checks."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

# One table of tolerances per dtype (atol, rtol), used by every comparison.
TOLERANCES = {
    torch.float64: (1e-9, 1e-7),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (8e-2, 5e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "output",
                 dtype: torch.dtype | None = None) -> None:
    """Compare with the tolerance of ``dtype`` (default: expected's dtype), NaN never equal."""
    atol, rtol = TOLERANCES[dtype or expected.dtype]
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol,
                               msg=lambda m: f"{name}: {m}")


def per_sample_loop(x, weight, bias, mlp_weight, mlp_bias, k, d, stride=1, padding=0,
                    dilation=1, groups=1, temperature=1.0, padding_mode="zeros", routing=None):
    """Oracle: for each sample, route, mix its kernel, and run nn.Conv2d on that sample alone.

    Written independently of triton_nsr: padding modes, 'same' and friends come from nn.Conv2d.
    ``routing`` (B, k, d), when given, replaces the router's softmax.
    """
    out = weight.shape[0] // k
    conv = nn.Conv2d(x.shape[1], out, tuple(weight.shape[2:]), stride, padding, dilation, groups,
                     bias is not None, padding_mode, device=x.device, dtype=x.dtype)
    outputs = []
    for b in range(x.shape[0]):
        pooled = x[b].mean(dim=(1, 2))
        logits = mlp_weight @ pooled
        if mlp_bias is not None:
            logits = logits + mlp_bias
        scores = torch.softmax(logits.view(k, d) / temperature, dim=0)  # over the k groups
        if routing is not None:
            scores = routing[b]
        # Output channel o belongs to cardinal o // (out/d); its kernel mixes rows j*out + o.
        per_channel = scores.repeat_interleave(out // d, dim=1)  # (k, out)
        banks = weight.view(k, out, *weight.shape[1:])
        kernel = (per_channel.view(k, out, 1, 1, 1) * banks).sum(0)
        params = {"weight": kernel}
        if bias is not None:
            params["bias"] = (per_channel * bias.view(k, out)).sum(0)
        outputs.append(functional_call(conv, params, (x[b:b + 1],)))
    if not outputs:
        with torch.no_grad():
            shape = conv(x.new_zeros(1, *x.shape[1:])).shape[1:]
        return x.new_zeros((0, *shape)) + 0 * weight.sum()
    return torch.cat(outputs)


def make_params(in_channels, out_channels, kernel_size, k, d, groups=1, bias=True,
                dtype=torch.float64, device="cpu", scale=1.0):
    """Random NSR parameters (weight, bias, mlp_weight, mlp_bias) with requires_grad."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    opts = {"dtype": dtype, "device": device}
    weight = torch.randn(k * out_channels, in_channels // groups, kh, kw, **opts) * scale
    params = [
        weight,
        torch.randn(k * out_channels, **opts) if bias else None,
        # Large MLP weights make the softmax decisive, so routing errors cannot hide.
        torch.randn(k * d, in_channels, **opts) * 2,
        torch.randn(k * d, **opts),
    ]
    return [p.requires_grad_() if p is not None else None for p in params]


def outputs_and_grads(fn, inputs, grad_output=None):
    """Run ``fn(*inputs)``, backpropagate ``grad_output``; return output and each input's grad."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    if grad_output is None:
        grad_output = torch.randn_like(out)
    if out.numel():
        out.backward(grad_output)
    grads = [None if t is None else t.grad for t in leaves]
    return out.detach(), grads, grad_output


def assert_same_outputs_and_grads(fn, oracle, inputs, names, dtype=None):
    """fn and oracle agree on the output and the gradient of every input that needs one."""
    out, grads, grad_output = outputs_and_grads(fn, inputs)
    ref, ref_grads, _ = outputs_and_grads(oracle, inputs, grad_output)
    assert_close(out, ref, "output", dtype)
    for name, g, rg in zip(names, grads, ref_grads):
        if rg is None and g is None:
            continue
        if out.numel() == 0:
            continue
        assert g is not None, f"no gradient for {name}"
        assert_close(g, rg, f"grad of {name}", dtype)


def all_taps_in_float32(monkeypatch, splits: int) -> list[bool]:
    """Make the kernel gradient run the all-taps kernel for float32 (16-bit only otherwise; the
    interpreter has no bfloat16 arithmetic) and either dy layout (NCHW only otherwise) with
    ``splits`` pixel splits, launch plans decided
    afresh; returns the list each plan's TRANSPOSED decision is appended to."""
    from triton_nsr.kernels import conv_bwd_weight
    from triton_nsr.kernels.autotune import clear_launch_plans

    monkeypatch.setattr(conv_bwd_weight, "ALL_TAPS_DTYPES", (torch.float32,))
    monkeypatch.setattr(conv_bwd_weight, "ALL_TAPS_LAYOUTS", ("nchw", "channels_last"))
    monkeypatch.setattr(conv_bwd_weight, "weight_grad_splits", lambda *args: splits)
    decided = []
    transposes = conv_bwd_weight._transposes
    monkeypatch.setattr(conv_bwd_weight, "_transposes",
                        lambda *args: decided.append(transposes(*args)) or decided[-1])
    clear_launch_plans()
    return decided
