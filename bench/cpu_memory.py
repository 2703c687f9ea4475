"""Peak memory of the CPU cases, measured in a child process from the kernel's own accounting.

torch has no allocator statistics on CPU and tracemalloc does not see its allocations, so the
child reads the resident set the kernel reports. For each (case, provider, pass) it builds the
tensors and runs one untimed call (one-time set-up such as Adam's state and oneDNN's caches
lands there), then resets the high-water mark (writing 5 to /proc/self/clear_refs), reads
VmRSS, runs one call and reads VmHWM: 'extra' = VmHWM - VmRSS is what the call needs above the
idle process holding its model and inputs. The kernel keeps these counters per CPU and sums
them approximately, so a figure is good to a few hundred KiB (a call needing nothing may read
slightly below zero): ample for calls that need tens of MiB and more.

The child runs with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_): every
tensor-sized block is then mapped on allocation and unmapped on free, so freed memory does not
linger in the heap to be reused unseen by the next call. The timing runs in the parent, with the
allocator a user gets.

Run as ``python -m bench.cpu_memory THREADS`` with a JSON list of [case dict, provider, pass] on
stdin; prints a JSON list of {"case", "provider", "pass", "baseline_bytes", "peak_bytes",
"extra_bytes"}.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
MMAP_THRESHOLD_BYTES = 64 * 1024


def available() -> str | None:
    """None when this system can measure peak memory this way, else why not."""
    if not STATUS.exists() or not CLEAR_REFS.exists():
        return "needs Linux's /proc/self/status and /proc/self/clear_refs"
    try:
        CLEAR_REFS.write_text("5")
    except OSError as error:
        return f"cannot reset the high-water mark ({error})"
    return None


def _status_bytes(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"{field} is not in {STATUS}")


def peak_of_call(fn) -> dict:
    """Resident bytes before one call of ``fn``, the peak during it, and the difference."""
    gc.collect()
    CLEAR_REFS.write_text("5")
    baseline = _status_bytes("VmRSS")
    fn()
    peak = _status_bytes("VmHWM")
    return {"baseline_bytes": baseline, "peak_bytes": peak, "extra_bytes": peak - baseline}


def _measure(jobs: list, threads: int) -> list[dict]:
    """In the child: the peak memory of each [case dict, provider, pass] in ``jobs``."""
    import torch

    from bench import cpu_cases

    torch.set_num_threads(threads)
    rows = []
    for case_dict, provider, pass_ in jobs:
        case = cpu_cases.case_from_dict(case_dict)
        fn = cpu_cases.build(case, provider, pass_)
        fn()
        rows.append({"case": case.name, "provider": provider, "pass": pass_,
                     **peak_of_call(fn)})
        del fn
    return rows


def measure(jobs: list[tuple[dict, str, str]], threads: int) -> list[dict]:
    """Peak memory of each (case dict, provider, pass), all in one fresh child process.

    Raises RuntimeError with the child's error output when it fails.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES)}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "bench.cpu_memory", str(threads)],
                          input=json.dumps(jobs), capture_output=True, text=True, cwd=root,
                          env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.stdin.read()), int(sys.argv[1]))))
