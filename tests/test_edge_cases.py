"""Edge cases of the triton path: index widths past 2**31 elements, threads in the interpreter."""

import os
import re
import subprocess
import sys
import threading

import pytest
import torch

from tests.utils import assert_close, per_sample_loop
from triton_nsr import NSRConv2d

pytest.importorskip("triton")

# Compiles the mixing and router kernels for sm_90 (no GPU needed) with every integer argument an
# i32, as Triton specialises them for a 512 -> 512 3x3 layer at batch 911, and prints each one's
# TTIR.
_PRINT_MIX_TTIR = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton_nsr.kernels import mix, router
for tuner in (mix.mix_fwd_kernel, mix.mix_bwd_kernel, router.router_pool_kernel,
              router.router_bwd_kernel):
    fn, config = tuner.fn, tuner.configs[0]
    # The mixing with the router's second half in it (ROUTE) and the TF32 copy: every stride.
    flags = {"HAS_SECOND": True, "HAS_BIAS": True, "NEED_BANK": True, "NEED_ROUTING": True,
             "HAS_COPY": True, "ROUTE": True, "HAS_MLP_BIAS": True}
    consts = {name: value for name, value in
              {"ACC_DTYPE": tl.float32, "BLOCK_GROUPS": 4, "BLOCK_CARDINALS": 16,
               "BLOCK_B": 4, "CHANNELS_INNER": True,
               "BLOCK_F": mix.MIX_BWD_BLOCK_F, "ROUTE_BLOCK_C": router.ROUTE_BLOCK_C,
               **flags, **config.kwargs}.items()
              if name in fn.arg_names}
    signature = {name: "constexpr" if name in consts
                 else "*fp32" if name.endswith("_pointer")
                 else "fp32" if name.startswith("temperature") else "i32"
                 for name in fn.arg_names}
    compiled = triton.compile(ASTSource(fn, signature, consts),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": config.num_warps})
    print("KERNEL", fn.__name__)
    print(compiled.asm["ttir"])
"""


def test_mixing_and_router_kernels_widen_batch_strides_to_int64():
    # B * out * Cg * kh * kw passes 2**31 at batch ~911 for a 512 -> 512 3x3 layer: a sample
    # index times a batch stride must then be computed in 64 bits. Strides and the batch fit
    # in i32 on their own, so only the kernel's arithmetic can get this right; the compiled IR
    # shows it without allocating the 8 GB such a gradient needs.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", _PRINT_MIX_TTIR], capture_output=True,
                            text=True, env=env, timeout=600, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr[-4000:]
    kernels = result.stdout.split("KERNEL ")[1:]
    assert len(kernels) == 4
    for text in kernels:
        name, ir = text.split("\n", 1)
        body = ir.split("tt.func", 1)[1].split("\n", 1)[1]  # past the signature
        strides = set(re.findall(r"%(\w+_batch_stride)\b", body))
        assert strides, name
        for stride in strides:
            for use in (line.strip() for line in body.splitlines()
                        if re.search(rf"%{stride}\b", line)):
                assert re.search(rf"arith\.extsi %{stride} : i32 to i64", use), (
                    f"{name}: {stride} used in 32 bits: {use}")


def test_two_threads_share_one_layer():
    # The interpreter swaps triton.language for its own functions during a launch and back
    # after it, process-wide: without a lock, one thread's launch ran half-unpatched.
    layer = NSRConv2d(4, 6, 3, 2, 3, padding=1, dtype=torch.float64, backend="triton")
    params = (layer.weight, layer.bias, layer.mlp[0].weight, layer.mlp[0].bias)
    inputs = [torch.randn(2, 4, 7, 6, dtype=torch.float64) for _ in range(2)]
    results, errors = {}, []
    start = threading.Barrier(2)

    def work(index):
        try:
            x = inputs[index].clone().requires_grad_()
            start.wait()
            for _ in range(2):
                out = layer(x)
                (grad_x,) = torch.autograd.grad(out.square().sum(), x)
            results[index] = out.detach(), grad_x
        except Exception as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    for index, x in enumerate(inputs):
        x = x.clone().requires_grad_()
        expected = per_sample_loop(x, *params, 2, 3, padding=1)
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
        out, grad_x = results[index]
        assert_close(out, expected.detach(), f"output of thread {index}")
        assert_close(grad_x, expected_grad, f"input gradient of thread {index}")
