"""Compile every kernel for a GPU target with the real Triton compiler, no GPU needed.

The interpreter checks what the kernels compute, not whether Triton's compiler accepts them
(dot shapes, dtypes, control flow) or whether a config fits the chip's shared memory. Triton ships
ptxas, so the full pipeline down to a cubin runs on any machine:

    python -m triton_nsr.kernels.compile_check            # every kernel x dtype x config, sm_90
    python -m triton_nsr.kernels.compile_check --first 1  # the first config of each list only

Run it without TRITON_INTERPRET set: the interpreter replaces the jitted functions.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Hopper (H100/H200): 227 KiB of shared memory per block at most.
HOPPER_SHARED_MEMORY = 232448

DTYPES = {
    # name: (pointer type, accumulator, dot precision)
    "float32-tf32": ("fp32", "float32", "tf32"),
    "float32-ieee": ("fp32", "float32", "ieee"),
    "float16": ("fp16", "float32", "ieee"),
    "bfloat16": ("bf16", "float32", "ieee"),
    "float64": ("fp64", "float64", "ieee"),
}


@dataclass
class CompileResult:
    kernel: str
    dtype: str
    config: str
    seconds: float
    shared_memory: int
    registers: int
    stack: int
    error: str | None


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes per thread) from the cuobjdump Triton ships.

    A stack above zero means ptxas spilled registers: the config runs, but slowly.
    """
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run([tool, "-res-usage", file.name], capture_output=True,
                              text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return (int(match[1]), int(match[2])) if match else (-1, -1)


def _kernels():
    from triton_nsr.kernels import conv, conv_backward, mix

    return [conv.conv_fwd_kernel, conv_backward.conv_bwd_input_kernel,
            conv_backward.conv_bwd_weight_kernel, mix.mix_fwd_kernel, mix.mix_bwd_bank_kernel,
            mix.mix_bwd_routing_kernel]


def _constexprs(dtype: str, index_bits: int) -> dict:
    """Every non-tile constexpr a kernel may take; each kernel keeps the ones it declares."""
    import triton.language as tl

    _, acc, precision = DTYPES[dtype]
    return {"ACC_DTYPE": getattr(tl, acc), "PRECISION": precision, "HAS_BIAS": True,
            "BLOCK_GROUPS": 4, "INDEX_DTYPE": getattr(tl, f"int{index_bits}")}


def compile_all(arch: int = 90, first: int | None = None, dtypes=None,
                index_bits: int = 32) -> list[CompileResult]:
    """Compile each kernel for each dtype and autotune config; return one result per compile.

    ``index_bits`` picks the conv kernels' in-sample offset type (int32 is the common case;
    int64 is what tensors past 2**31 elements get).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter has no compiler to check")
    target = GPUTarget("cuda", arch, 32)
    results = []
    for tuner in _kernels():
        fn = tuner.fn
        configs = tuner.configs[:first] if first else tuner.configs
        for dtype in dtypes or DTYPES:
            pointer = DTYPES[dtype][0]
            for config in configs:
                consts = {name: value for name, value in _constexprs(dtype, index_bits).items()
                          if name in fn.arg_names}
                consts.update(config.kwargs)
                signature = {
                    name: "constexpr" if name in consts
                    else f"*{pointer}" if name.endswith("_pointer") else "i32"
                    for name in fn.arg_names
                }
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                label = ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
                label += f", warps={config.num_warps}, stages={config.num_stages}"
                start = time.perf_counter()
                try:
                    compiled = triton.compile(ASTSource(fn, signature, consts), target=target,
                                              options=options)
                    shared, error = compiled.metadata.shared, None
                    registers, stack = _resource_usage(compiled.asm["cubin"])
                    if shared > HOPPER_SHARED_MEMORY:
                        error = f"needs {shared} bytes of shared memory"
                except Exception as exc:  # report every failure, keep compiling the rest
                    shared, registers, stack = 0, 0, 0
                    error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                results.append(CompileResult(fn.__name__, dtype, label,
                                             time.perf_counter() - start, shared, registers,
                                             stack, error))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90 = Hopper)")
    parser.add_argument("--first", type=int, default=None,
                        help="only the first N configs of each kernel's autotune list")
    parser.add_argument("--dtype", action="append", choices=sorted(DTYPES),
                        help="only these dtypes (repeatable); default all")
    parser.add_argument("--index-bits", type=int, choices=(32, 64), default=32,
                        help="in-sample offset width of the conv kernels (default 32)")
    args = parser.parse_args(argv)
    results = compile_all(args.arch, args.first, args.dtype, args.index_bits)
    for r in results:
        status = "ok " if r.error is None else "FAIL"
        print(f"{status} {r.kernel:24s} {r.dtype:13s} smem={r.shared_memory:6d} "
              f"regs={r.registers:3d} stack={r.stack:5d} {r.seconds:4.1f}s  {r.config}"
              + (f"\n     {r.error}" if r.error else ""))
    failures = sum(r.error is not None for r in results)
    spilling = sum(r.error is None and r.stack > 0 for r in results)
    print(f"{len(results) - failures} compiled ({spilling} of them spill registers), "
          f"{failures} failed (sm_{args.arch})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
