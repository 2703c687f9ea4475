"""Mixing of the k kernel banks into per-sample kernels, forward and backward.

A *bank* is any tensor viewed as (k, d, F): the conv weight (k*out, Cg, kh, kw) is the bank
(k, d, F = out/d * Cg * kh * kw) and the bias (k*out,) is the bank (k, d, F = out/d). The
routing weights s have shape (B, k, d). Forward:

    mixed[b, c, f] = sum_j s[b, j, c] * bank[j, c, f]                   (B, d, F)

Backward, for the gradient g = d loss / d mixed (B, d, F):

    d bank[j, c, f] = sum_b s[b, j, c] * g[b, c, f]                      (k, d, F)
    d s[b, j, c]    = sum_f bank[j, c, f] * g[b, c, f]                   (B, k, d)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_nsr.kernels.autotune import accumulator_dtype, check_launchable, tuned

_MIX_CONFIGS = [
    triton.Config({"BLOCK_B": 16, "BLOCK_F": 128}, num_warps=4),
    triton.Config({"BLOCK_B": 16, "BLOCK_F": 256}, num_warps=4),
    triton.Config({"BLOCK_B": 32, "BLOCK_F": 128}, num_warps=4),
    triton.Config({"BLOCK_B": 32, "BLOCK_F": 256}, num_warps=8),
    triton.Config({"BLOCK_B": 64, "BLOCK_F": 128}, num_warps=8),
    triton.Config({"BLOCK_B": 8, "BLOCK_F": 512}, num_warps=4),
]
_BANK_GRAD_CONFIGS = [
    triton.Config({"BLOCK_F": 256}, num_warps=4),
    triton.Config({"BLOCK_F": 128}, num_warps=4),
    triton.Config({"BLOCK_F": 512}, num_warps=8),
    triton.Config({"BLOCK_F": 1024}, num_warps=8),
]
_ROUTING_GRAD_CONFIGS = _BANK_GRAD_CONFIGS


@tuned(_MIX_CONFIGS, key=["num_groups", "features"])
@triton.jit
def mix_fwd_kernel(
    routing_pointer, bank_pointer, output_pointer,
    batch, num_groups, num_cardinals, features,
    routing_batch_stride, routing_group_stride, routing_cardinal_stride,
    bank_group_stride, bank_cardinal_stride, bank_feature_stride,
    output_batch_stride, output_cardinal_stride, output_feature_stride,
    ACC_DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """mixed[b, c, f] = sum_j routing[b, j, c] * bank[j, c, f].

    Pointers: routing (B, k, d), bank (k, d, F), output (B, d, F); any strides.
    Grid: (cdiv(F, BLOCK_F) * d * cdiv(B, BLOCK_B),). Each program owns a (BLOCK_B, BLOCK_F) tile
    of one cardinal and reads each bank row of it once for all BLOCK_B samples.
    """
    pid = tl.program_id(0).to(tl.int64)
    num_f_blocks = tl.cdiv(features, BLOCK_F)
    f_block = pid % num_f_blocks
    cardinal = (pid // num_f_blocks) % num_cardinals
    b_block = pid // (num_f_blocks * num_cardinals)

    offs_b = b_block * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_f = f_block * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_b = offs_b < batch
    mask_f = offs_f < features

    routing_rows = (routing_pointer + offs_b * routing_batch_stride
                    + cardinal * routing_cardinal_stride)
    bank_row = bank_pointer + cardinal * bank_cardinal_stride + offs_f * bank_feature_stride
    acc = tl.zeros((BLOCK_B, BLOCK_F), dtype=ACC_DTYPE)
    for group in range(num_groups):
        weights = tl.load(routing_rows + group * routing_group_stride, mask=mask_b, other=0.0)
        values = tl.load(bank_row + group * bank_group_stride, mask=mask_f, other=0.0)
        acc += weights.to(ACC_DTYPE)[:, None] * values.to(ACC_DTYPE)[None, :]

    output = (
        output_pointer
        + offs_b[:, None] * output_batch_stride
        + cardinal * output_cardinal_stride
        + offs_f[None, :] * output_feature_stride
    )
    tl.store(output, acc.to(output_pointer.dtype.element_ty),
             mask=mask_b[:, None] & mask_f[None, :])


@tuned(_BANK_GRAD_CONFIGS, key=["num_groups", "features"])
@triton.jit
def mix_bwd_bank_kernel(
    routing_pointer, grad_pointer, grad_bank_pointer,
    batch, num_groups, num_cardinals, features,
    routing_batch_stride, routing_group_stride, routing_cardinal_stride,
    grad_batch_stride, grad_cardinal_stride, grad_feature_stride,
    grad_bank_group_stride, grad_bank_cardinal_stride, grad_bank_feature_stride,
    ACC_DTYPE: tl.constexpr, BLOCK_GROUPS: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """grad_bank[j, c, f] = sum_b routing[b, j, c] * grad[b, c, f].

    Pointers: routing (B, k, d), grad (B, d, F), grad_bank (k, d, F); any strides.
    Grid: (cdiv(F, BLOCK_F) * d,). Each program owns all k groups of one F tile of one cardinal
    (BLOCK_GROUPS >= k), so each gradient row is read once and summed in a fixed order
    (deterministic, no atomics).
    """
    pid = tl.program_id(0).to(tl.int64)
    num_f_blocks = tl.cdiv(features, BLOCK_F)
    f_block = pid % num_f_blocks
    cardinal = pid // num_f_blocks

    offs_j = tl.arange(0, BLOCK_GROUPS)
    offs_f = f_block * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_j = offs_j < num_groups
    mask_f = offs_f < features

    routing_col = (routing_pointer + offs_j * routing_group_stride
                   + cardinal * routing_cardinal_stride)
    grad_row = grad_pointer + cardinal * grad_cardinal_stride + offs_f * grad_feature_stride
    acc = tl.zeros((BLOCK_GROUPS, BLOCK_F), dtype=ACC_DTYPE)
    for sample in range(batch):
        # int64 before it multiplies a stride: B * d * F passes 2**31 for large layers.
        sample = tl.cast(sample, tl.int64)
        weights = tl.load(routing_col + sample * routing_batch_stride, mask=mask_j, other=0.0)
        grads = tl.load(grad_row + sample * grad_batch_stride, mask=mask_f, other=0.0)
        acc += weights.to(ACC_DTYPE)[:, None] * grads.to(ACC_DTYPE)[None, :]

    grad_bank = (
        grad_bank_pointer
        + offs_j[:, None] * grad_bank_group_stride
        + cardinal * grad_bank_cardinal_stride
        + offs_f[None, :] * grad_bank_feature_stride
    )
    tl.store(grad_bank, acc.to(grad_bank_pointer.dtype.element_ty),
             mask=mask_j[:, None] & mask_f[None, :])


@tuned(_ROUTING_GRAD_CONFIGS, key=["num_groups", "features"])
@triton.jit
def mix_bwd_routing_kernel(
    bank_pointer, grad_pointer, grad_routing_pointer,
    num_groups, num_cardinals, features,
    bank_group_stride, bank_cardinal_stride, bank_feature_stride,
    grad_batch_stride, grad_cardinal_stride, grad_feature_stride,
    grad_routing_batch_stride, grad_routing_group_stride, grad_routing_cardinal_stride,
    ACC_DTYPE: tl.constexpr, BLOCK_GROUPS: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """grad_routing[b, j, c] = sum_f bank[j, c, f] * grad[b, c, f].

    Pointers: bank (k, d, F), grad (B, d, F), grad_routing (B, k, d); any strides.
    Grid: (B * d,). Each program reduces the whole F axis of one (sample, cardinal) for all k
    groups, so the result is written once, with no atomics and no partial buffers.
    """
    pid = tl.program_id(0).to(tl.int64)
    cardinal = pid % num_cardinals
    sample = pid // num_cardinals

    offs_j = tl.arange(0, BLOCK_GROUPS)
    mask_j = offs_j < num_groups
    bank_rows = bank_pointer + offs_j[:, None] * bank_group_stride + cardinal * bank_cardinal_stride
    grad_row = grad_pointer + sample * grad_batch_stride + cardinal * grad_cardinal_stride
    acc = tl.zeros((BLOCK_GROUPS, BLOCK_F), dtype=ACC_DTYPE)
    for f_start in range(0, features, BLOCK_F):
        offs_f = f_start + tl.arange(0, BLOCK_F)
        mask_f = offs_f < features
        values = tl.load(bank_rows + offs_f[None, :] * bank_feature_stride,
                         mask=mask_j[:, None] & mask_f[None, :], other=0.0)
        grads = tl.load(grad_row + offs_f * grad_feature_stride, mask=mask_f, other=0.0)
        acc += values.to(ACC_DTYPE) * grads.to(ACC_DTYPE)[None, :]

    total = tl.sum(acc, axis=1)
    grad_routing = (
        grad_routing_pointer
        + sample * grad_routing_batch_stride
        + offs_j * grad_routing_group_stride
        + cardinal * grad_routing_cardinal_stride
    )
    tl.store(grad_routing, total.to(grad_routing_pointer.dtype.element_ty), mask=mask_j)


def mix_fwd(routing: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Mix banks per sample. routing (B, k, d), bank (k, d, F) -> (B, d, F) in bank's dtype."""
    check_launchable(routing, bank)
    batch, num_groups, num_cardinals = routing.shape
    features = bank.shape[2]
    output = torch.empty((batch, num_cardinals, features), dtype=bank.dtype, device=bank.device)
    if output.numel() == 0:
        return output

    def grid(meta):
        return (triton.cdiv(features, meta["BLOCK_F"]) * num_cardinals
                * triton.cdiv(batch, meta["BLOCK_B"]),)

    mix_fwd_kernel[grid](
        routing, bank, output,
        batch, num_groups, num_cardinals, features,
        *routing.stride(), *bank.stride(), *output.stride(),
        ACC_DTYPE=accumulator_dtype(bank.dtype),
    )
    return output


def mix_bwd(
    grad: torch.Tensor, routing: torch.Tensor, bank: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`mix_fwd`.

    Args:
        grad: (B, d, F), the gradient of the mixed output.
        routing: (B, k, d). bank: (k, d, F).

    Returns:
        grad_routing (B, k, d) in routing's dtype and grad_bank (k, d, F) in bank's dtype.
    """
    check_launchable(grad, routing, bank)
    batch, num_groups, num_cardinals = routing.shape
    features = bank.shape[2]
    grad_routing = torch.empty_like(routing, memory_format=torch.contiguous_format)
    grad_bank = torch.empty_like(bank, memory_format=torch.contiguous_format)
    if batch == 0 or features == 0:
        return grad_routing.zero_(), grad_bank.zero_()
    acc_dtype = accumulator_dtype(bank.dtype)
    block_groups = triton.next_power_of_2(num_groups)

    mix_bwd_bank_kernel[lambda meta: (triton.cdiv(features, meta["BLOCK_F"]) * num_cardinals,)](
        routing, grad, grad_bank,
        batch, num_groups, num_cardinals, features,
        *routing.stride(), *grad.stride(), *grad_bank.stride(),
        ACC_DTYPE=acc_dtype, BLOCK_GROUPS=block_groups,
    )
    mix_bwd_routing_kernel[(batch * num_cardinals,)](
        bank, grad, grad_routing,
        num_groups, num_cardinals, features,
        *bank.stride(), *grad.stride(), *grad_routing.stride(),
        ACC_DTYPE=acc_dtype, BLOCK_GROUPS=block_groups,
    )
    return grad_routing, grad_bank
