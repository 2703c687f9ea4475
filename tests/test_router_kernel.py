"""The fused kernels of the layer against plain torch: the router each way, the mean's gradient
in the input-gradient epilogue, and the mixing of two banks (split partial sums included).

Outputs are NaN-poisoned before the kernels write them (conftest's poison_allocations).
"""

import pytest
import torch

from tests.utils import assert_close
from triton_nsr import router

pytestmark = pytest.mark.usefixtures("poison_allocations")

router_kernels = pytest.importorskip("triton_nsr.kernels.router")
from triton_nsr.kernels import conv_bwd_input, mix  # noqa: E402 - needs triton, skipped above

# (batch, channels, height, width, k, d, channels_last, bias)
ROUTER_CASES = [
    (2, 8, 5, 5, 4, 2, False, True),
    (3, 13, 7, 11, 3, 5, True, True),  # odd k, d and C: padded blocks everywhere
    (1, 37, 4, 9, 2, 16, False, False),  # several channel blocks, no MLP bias
    (2, 4, 1, 1, 1, 1, True, True),  # one pixel, one group: the softmax is 1
    (1, 5, 70, 70, 2, 3, False, True),  # one large image: the pooling cuts it into chunks
    (19, 3, 2, 3, 2, 2, True, True),  # two sample blocks of the mixing kernel
]


def _route(x, mlp_weight, mlp_bias, k, d, temperature):
    """(routing, pooled) as the layer computes them: the pooling launch, then the mixing
    launch that finishes the router (here mixing a small stand-in bank)."""
    partials, copy = router_kernels.router_pool(x, channels_last_copy=True)
    # The channels_last copy the convolution of an NCHW input reads, made on the same pass.
    assert copy.is_contiguous(memory_format=torch.channels_last) and torch.equal(copy, x)
    assert partials.shape == (x.shape[0], router_kernels.pool_chunks(
        x.shape[0], x.shape[2] * x.shape[3]), x.shape[1])
    bank = torch.randn(k, d, 3, dtype=partials.dtype)
    mixed, _, _, routing, pooled = mix.route_and_mix(
        partials, x.shape[2] * x.shape[3], mlp_weight, mlp_bias, d, temperature, bank)
    # Every mixing program mixed with the routing it computed, the same that was stored.
    assert_close(mixed, torch.einsum("bjc,jcf->bcf", routing, bank), "mixed")
    return routing, pooled


def _router_inputs(case, dtype):
    batch, channels, height, width, k, d, channels_last, bias = case
    x = torch.randn(batch, channels, height, width, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight_dtype = torch.promote_types(dtype, torch.float32)
    mlp_weight = torch.randn(k * d, channels, dtype=weight_dtype) * 2
    mlp_bias = torch.randn(k * d, dtype=weight_dtype) if bias else None
    return x, mlp_weight, mlp_bias, k, d


@pytest.mark.parametrize("case", ROUTER_CASES, ids=lambda c: "x".join(map(str, c[:6])))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_router_forward_and_backward_match_torch(case, dtype):
    x, mlp_weight, mlp_bias, k, d = _router_inputs(case, dtype)
    temperature = 0.3  # not a float32 number: float64 needs the exact temperature pair
    routing, pooled = _route(x, mlp_weight, mlp_bias, k, d, temperature)

    leaves = [t.detach().clone().requires_grad_() if t is not None else None
              for t in (x, mlp_weight, mlp_bias)]
    expected = router.routing_weights(*leaves, k, d, temperature)
    assert routing.dtype == pooled.dtype == expected.dtype
    assert_close(routing, expected, "routing")
    assert_close(pooled, x.mean((2, 3), dtype=routing.dtype), "pooled")

    grad_routing = torch.randn_like(expected)
    expected.backward(grad_routing)
    # The routing gradient as the mixing backward hands it over: in parts, to be added.
    parts = torch.stack([grad_routing * 0.25, grad_routing * 0.75])
    mean_grad, grad_mlp_weight, grad_mlp_bias = router_kernels.router_bwd(
        parts, routing, pooled, mlp_weight, mlp_bias is not None, temperature,
        x.shape[2] * x.shape[3])
    # The mean's gradient is the same at every pixel: mean_grad is that value.
    assert_close(mean_grad[:, :, None, None].expand_as(x), leaves[0].grad, "mean_grad")
    assert_close(grad_mlp_weight, leaves[1].grad, "grad mlp_weight")
    if mlp_bias is not None:
        assert_close(grad_mlp_bias, leaves[2].grad, "grad mlp_bias")
    else:
        assert grad_mlp_bias is None


# float16 only: the interpreter refuses bfloat16 (no bfloat16 arithmetic there).
@pytest.mark.parametrize("dtype", [torch.float16])
def test_router_runs_in_float32_for_half_inputs(dtype):
    """Half inputs are read as they are and routed in float32, also where float16 logits would
    overflow (a tiny temperature)."""
    x, mlp_weight, mlp_bias, k, d = _router_inputs(ROUTER_CASES[1], dtype)
    temperature = 1e-4
    routing, pooled = _route(x, mlp_weight, mlp_bias, k, d, temperature)
    assert routing.dtype == pooled.dtype == torch.float32
    expected = router.routing_weights(x, mlp_weight, mlp_bias, k, d, temperature)
    assert torch.isfinite(routing).all()
    assert_close(routing, expected, "routing")
    assert_close(pooled, x.float().mean((2, 3)), "pooled")


def test_router_reads_sliced_input_through_its_strides():
    base = torch.randn(3, 10, 9, 12, dtype=torch.float64)
    x = base[::2, 1::3, 1:, ::2]
    mlp_weight = torch.randn(6, x.shape[1], dtype=torch.float64)
    routing, pooled = _route(x, mlp_weight, None, 3, 2, 1.0)
    assert_close(routing, router.routing_weights(x, mlp_weight, None, 3, 2))
    assert_close(pooled, x.mean((2, 3)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_input_gradient_epilogue_adds_the_mean_gradient(channels_last):
    """conv_bwd_input with mean_grad equals the plain input gradient plus mean_grad[b, c] at
    every pixel (stride 2: some pixels get no convolution gradient at all, only the mean's)."""
    dtype = torch.float64
    x = torch.randn(2, 4, 9, 8, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(2, 6, 2, 3, 3, dtype=dtype)  # groups 2
    geometry = ((2, 2), (1, 1, 1, 1), (1, 1), 2, False)
    grad_output = torch.randn(2, 6, 5, 4, dtype=dtype)
    mean_grad = torch.randn(2, 4, dtype=dtype)
    plain = conv_bwd_input.conv_bwd_input(grad_output, weight, *geometry, torch.empty_like(x))
    fused = conv_bwd_input.conv_bwd_input(grad_output, weight, *geometry, torch.empty_like(x),
                                         mean_grad)
    assert fused.stride() == x.stride()
    assert_close(fused, plain + mean_grad[:, :, None, None])


@pytest.mark.parametrize("with_bias", [True, False])
def test_mixing_two_banks_in_one_launch(with_bias):
    dtype = torch.float64
    routing = torch.softmax(torch.randn(3, 4, 5, dtype=dtype), dim=1)
    bank = torch.randn(4, 5, 27, dtype=dtype)
    second = torch.randn(4, 5, 3, dtype=dtype) if with_bias else None
    mixed, mixed_second, _ = mix.mix_fwd(routing, bank, second)
    assert_close(mixed, torch.einsum("bjc,jcf->bcf", routing, bank))
    if with_bias:
        assert_close(mixed_second, torch.einsum("bjc,jcf->bcf", routing, second))
    else:
        assert mixed_second is None


def test_mixing_writes_the_requested_dtype_from_float32_banks():
    """Under autocast the float32 banks mix straight into 16-bit kernels: no cast kernel.
    (float16 here: the interpreter refuses bfloat16.)"""
    routing = torch.softmax(torch.randn(2, 3, 2), dim=1)
    bank, second = torch.randn(3, 2, 10), torch.randn(3, 2, 4)
    mixed, mixed_second, _ = mix.mix_fwd(routing, bank, second, torch.float16)
    assert mixed.dtype == mixed_second.dtype == torch.float16
    assert_close(mixed, torch.einsum("bjc,jcf->bcf", routing, bank).half())


@pytest.mark.parametrize("num_splits", [1, 3])
def test_mixing_backward_adds_split_partial_sums_as_it_reads(num_splits):
    """The kernel gradient may come as S pixel-split partial sums; the mixing backward's bank
    and routing gradients (the latter in per-tile parts) equal those of their sum, for both
    banks; F = 600 spans several tiles."""
    dtype = torch.float64
    routing = torch.softmax(torch.randn(3, 4, 5, dtype=dtype), dim=1)
    bank, second = torch.randn(4, 5, 600, dtype=dtype), torch.randn(4, 5, 3, dtype=dtype)
    grad_parts = torch.randn(num_splits, 3, 5, 600, dtype=dtype)
    second_parts = torch.randn(num_splits, 3, 5, 3, dtype=dtype)
    routing_parts, grad_bank, grad_second = mix.mix_bwd(grad_parts, second_parts, routing,
                                                        bank, second)
    grad_routing = routing_parts.sum(0)
    grad, grad2 = grad_parts.sum(0), second_parts.sum(0)
    assert_close(grad_bank, torch.einsum("bjc,bcf->jcf", routing, grad))
    assert_close(grad_second, torch.einsum("bjc,bcf->jcf", routing, grad2))
    assert_close(grad_routing, torch.einsum("jcf,bcf->bjc", bank, grad)
                 + torch.einsum("jcf,bcf->bjc", second, grad2))
    only_routing = mix.mix_bwd(grad_parts, second_parts, routing, bank, second,
                               need_banks=False)
    assert only_routing[1] is None and only_routing[2] is None
    assert_close(only_routing[0].sum(0), grad_routing)
    only_banks = mix.mix_bwd(grad_parts, second_parts, routing, bank, second,
                             need_routing=False)
    assert only_banks[0] is None
    assert_close(only_banks[1], grad_bank)
    assert_close(only_banks[2], grad_second)
