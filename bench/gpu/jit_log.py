"""Keep what Triton's JIT really compiled during a GPU run, to set beside the kernel report.

The kernel report (``python -m triton_nsr.kernels.inspection.report``) compiles the launches
it expects a layer to make, on a CPU. On a GPU the JIT compiles the launches the layer really
makes. With ``BENCH_JIT_LOG=DIR`` in the environment, every bench process that calls
:func:`install` (the lease, the diagnosis's child, the split timings) records each of this
package's kernels the JIT compiles or finds in its cache:

- ``DIR/compiles.jsonl``: one JSON line per compile: kernel, cache hash, constexprs and
  divisibility attributes by argument name, signature, warps and stages, shared memory, whether
  it was a cache hit, and which process;
- ``DIR/files/<hash>/``: the kernel's PTX, TTGIR and cubin, copied from Triton's cache once per
  hash.

``python -m bench.gpu.jit_compare`` reads them back on any machine: the same analysis the report
runs, on the GPU's own files, and the same specialisation compiled here, side by side.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

ENV_VAR = "BENCH_JIT_LOG"
MANIFEST = "compiles.jsonl"
FILES = "files"
# What the report reads: MMA, waits and operand routes (PTX), operand homes (TTGIR), registers
# and spills (cubin).
SUFFIXES = (".ptx", ".ttgir", ".cubin")
_installed: JitLog | None = None


def _plain(value):
    """A JSON value for a constexpr: numbers, booleans, None and strings as they are, a Triton
    dtype as {"dtype": name} (bench.gpu.jit_compare rebuilds it), anything else by its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return {"dtype": value.name}
    return {"repr": repr(value)}


def _options(metadata: dict) -> dict:
    """The compile options among the metadata (all but the libraries' paths, which are this
    machine's: the cache key hashes those files' contents)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return {}
    return {name: metadata[name] for name in CUDAOptions.__dataclass_fields__
            if name in metadata and name != "extern_libs"}


class JitLog:
    """A compilation listener that records this package's kernels into ``directory``."""

    def __init__(self, directory: Path, process: str) -> None:
        self.directory = Path(directory)
        self.process = process
        self._previous = None

    def install(self) -> JitLog:
        from triton import knobs

        (self.directory / FILES).mkdir(parents=True, exist_ok=True)
        self._previous = knobs.compilation.listener
        knobs.compilation.listener = self._listen
        return self

    def _listen(self, *, src, metadata, metadata_group, times, cache_hit) -> None:
        try:
            self._record(src, metadata, metadata_group, cache_hit)
        finally:
            if self._previous is not None:
                self._previous(src=src, metadata=metadata, metadata_group=metadata_group,
                               times=times, cache_hit=cache_hit)

    def _record(self, src, metadata, metadata_group, cache_hit) -> None:
        fn = getattr(src, "fn", None)
        module = getattr(getattr(fn, "fn", None), "__module__", "") or ""
        if not module.startswith("triton_nsr."):
            return
        names = fn.arg_names
        import triton

        entry = {
            "kernel": src.name,
            "triton": triton.__version__,
            "module": module,
            # The kernel's source (with the functions it calls): bench.gpu.jit_compare reads the
            # files against the same source, or its line table names the wrong statements.
            "source_key": fn.cache_key,
            "hash": metadata["hash"],
            "process": self.process,
            "cache_hit": bool(cache_hit),
            "signature": dict(src.signature),
            "constexprs": {names[key[0]]: _plain(value) for key, value in src.constants.items()
                           if len(key) == 1},
            "attrs": {names[key[0]]: [list(pair) for pair in value]
                      for key, value in src.attrs.items() if len(key) == 1},
            "num_warps": metadata.get("num_warps"),
            "num_stages": metadata.get("num_stages"),
            "num_ctas": metadata.get("num_ctas"),
            "options": _options(metadata),
            "shared": metadata.get("shared"),
        }
        target = self.directory / FILES / entry["hash"]
        if not target.exists():
            target.mkdir(parents=True)
            for name, path in metadata_group.items():
                if name.endswith(SUFFIXES):
                    shutil.copy(path, target / name)
        with open(self.directory / MANIFEST, "a") as file:
            # Insertion order kept: the cache key spells the attributes in argument order.
            file.write(json.dumps(entry) + "\n")


def install(process: str) -> JitLog | None:
    """Start recording when ``BENCH_JIT_LOG`` names a directory; once per process."""
    global _installed
    directory = os.environ.get(ENV_VAR)
    if not directory or _installed is not None:
        return _installed
    try:
        _installed = JitLog(Path(directory), process).install()
    except ImportError:  # no Triton: nothing is compiled, nothing to record
        return None
    return _installed


def read(directory: Path) -> list[dict]:
    """The manifest's entries, in the order they were compiled."""
    with open(Path(directory) / MANIFEST) as file:
        return [json.loads(line) for line in file if line.strip()]
