"""What Triton's JIT compiled on a GPU, beside the kernel report and the same compile made here.

A GPU run with ``BENCH_JIT_LOG`` (``make gpu``) keeps every kernel of this package the JIT
compiled, with its specialisation (bench/gpu/jit_log.py). For each distinct compile (cache hash)
this command:

1. reads the GPU's own PTX, TTGIR and cubin with the report's analysis (MMA, wgmma wait depth,
   each GEMM operand's route from global memory and its home at the MMA, registers, spills,
   shared memory) and applies the report's Hopper criteria;
2. compiles the same specialisation here (the JIT's signature, constexprs, divisibility
   attributes, warps and stages; sm_90) and reads it the same way: equal hashes mean the same
   compiler inputs, equal findings the same binary's properties;
3. looks the compile made here up in the stored kernel report of the same Triton version
   (docs/kernels/triton-<version>.json) by its cache hash: a hit means the report compiled
   that very launch. (The GPU's own hash cannot be looked up: Triton's cache key covers its
   installed files and the ptxas version, and on the H200 machines of 2026-11-30 no hash
   matched this project's CPU machines'.)

    python -m bench.gpu.jit_compare bench/results/<run>_jit.json            # a stored comparison
    python -m bench.gpu.jit_compare OUT/jit_kernels.tar.xz --json OUT.json   # compare anew

Compare at the GPU run's commit (a worktree of it): the analysis reads the kernels' source.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from bench.gpu import jit_log

FINDINGS = ("mma", "wait_depth", "registers", "spill_bytes", "shared_memory", "operands")
REPORTS = Path(__file__).resolve().parents[2] / "docs" / "kernels"


def open_log(source: Path) -> tuple[list[dict], Path]:
    """(manifest entries, the folder of per-hash files) from a log folder or its archive."""
    source = Path(source)
    if source.is_dir():
        root = source
    else:
        root = Path(tempfile.mkdtemp(prefix="jit_log_"))
        with tarfile.open(source) as archive:
            archive.extractall(root, filter="data")
        root = next(p.parent for p in root.rglob(jit_log.MANIFEST))
    return jit_log.read(root), root / jit_log.FILES


def kernel_function(entry: dict):
    """The @triton.jit function the entry names (its module at this checkout; the module may
    hold it inside its autotuning wrapper)."""
    from triton.runtime.jit import JITFunction

    found = getattr(importlib.import_module(entry["module"]), entry["kernel"])
    return found if isinstance(found, JITFunction) else found.fn


def _constexpr(value):
    """A constexpr as the JIT passed it, from the log's JSON (jit_log._plain)."""
    if isinstance(value, dict):
        if "dtype" not in value:
            raise ValueError(f"cannot rebuild the constexpr {value['repr']}")
        import triton.language as tl

        return tl.dtype(value["dtype"])
    return value


def config_label(entry: dict) -> str:
    """The entry's config as the report labels it (compiled.config_label): its BLOCK_*
    constexprs, warps and stages."""
    import triton

    from triton_nsr.kernels.inspection.compiled import config_label as label

    tiles = {name: value for name, value in entry["constexprs"].items()
             if name.startswith("BLOCK_")}
    return label(triton.Config(tiles, num_warps=entry["num_warps"],
                               num_stages=entry["num_stages"]))


def check_source(entry: dict) -> None:
    """Refuse to read a compile against other kernel source than it was made from: operand
    routes come from the PTX line table, which names lines of that source. (Logs without a
    source key: check out the run's commit.)"""
    known = entry.get("source_key")
    if known is not None and kernel_function(entry).cache_key != known:
        raise SystemExit(f"{entry['kernel']} was compiled from other source than this "
                         "checkout's: run bench.gpu.jit_compare at the GPU run's commit")


def inspect_gpu_files(entry: dict, files: Path):
    """The report's findings on the files the GPU's JIT wrote for this entry."""
    from triton_nsr.kernels.inspection.compiled import inspect_compiled

    check_source(entry)
    folder = files / entry["hash"]
    name = entry["kernel"]
    asm = {"ptx": (folder / f"{name}.ptx").read_text(),
           "ttgir": (folder / f"{name}.ttgir").read_text(),
           "cubin": (folder / f"{name}.cubin").read_bytes()}
    kernel = SimpleNamespace(asm=asm, metadata=SimpleNamespace(shared=entry["shared"]))
    result = inspect_compiled(kernel, kernel_function(entry), config_label(entry),
                              entry["constexprs"])
    result.hash = entry["hash"]
    return result


def compile_here(entry: dict, arch: int = 90):
    """The entry's specialisation compiled by this machine's Triton, with the same findings."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from triton_nsr.kernels.inspection.compiled import inspect_compiled

    fn = kernel_function(entry)
    index = {name: position for position, name in enumerate(fn.arg_names)}
    attrs = {(index[name],): pairs for name, pairs in entry["attrs"].items()}
    constexprs = {name: _constexpr(value) for name, value in entry["constexprs"].items()}
    source = ASTSource(fn, entry["signature"], constexprs, attrs)
    # JSON made the options' tuples lists; the cache key spells them as tuples.
    options = {name: tuple(value) if isinstance(value, list) else value
               for name, value in entry["options"].items()}
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    result = inspect_compiled(kernel, fn, config_label(entry), constexprs)
    result.hash = kernel.hash
    return result


def report_hashes(version: str, path: Path | None = None) -> dict[str, dict]:
    """hash -> the stored report's compile record, for the report of this Triton version."""
    path = path or REPORTS / f"triton-{version}.json"
    if not path.exists():
        return {}
    compiles = json.loads(path.read_text())["compiles"]
    return {record["hash"]: record for record in compiles.values() if record.get("hash")}


def compare(entries: list[dict], files: Path, triton_version: str | None = None,
            recompile: bool = True, report: Path | None = None) -> dict:
    """One row per distinct compile: GPU findings, verdict, here-compile agreement, report hit."""
    import triton

    from triton_nsr.kernels.inspection.compiled import hopper_shortfalls
    from triton_nsr.kernels.inspection.report import GEMM_KERNELS

    here_version = triton.__version__
    triton_version = triton_version or (entries[0]["triton"] if entries else here_version)
    in_report = report_hashes(triton_version, report)
    seen, rows = {}, []
    for entry in entries:
        if entry["hash"] in seen:
            seen[entry["hash"]]["processes"].add(entry["process"])
            continue
        gpu = inspect_gpu_files(entry, files)
        row = {"kernel": entry["kernel"], "config": gpu.config, "hash": entry["hash"],
               "processes": {entry["process"]}, "gpu": gpu.as_dict(),
               "shortfalls": hopper_shortfalls(gpu) if entry["kernel"] in GEMM_KERNELS else [],
               "in_report": None}
        if recompile:
            here = compile_here(entry)
            row["here_hash"] = here.hash
            row["same_hash"] = here.hash == entry["hash"]
            row["in_report"] = here.hash in in_report
            found, again = gpu.as_dict(), here.as_dict()
            row["differences"] = {name: [found[name], again[name]] for name in FINDINGS
                                  if found[name] != again[name]}
        seen[entry["hash"]] = row
        rows.append(row)
    for row in rows:
        row["processes"] = sorted(row["processes"])
    return {"gpu_triton": triton_version, "here_triton": here_version,
            "compiles": len(rows), "rows": rows}


def summary(result: dict) -> str:
    """Counts and the rows that differ, miss the criteria or are not in the report."""
    rows = result["rows"]
    gemm = [r for r in rows if r["kernel"].startswith("conv_")]
    kinds = Counter(r["kernel"] for r in rows)
    lines = [f"{result['compiles']} distinct compiles by the GPU's JIT (Triton "
             f"{result['gpu_triton']}); here Triton {result['here_triton']}",
             "  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
             f"GEMM compiles meeting the Hopper criteria: "
             f"{sum(not r['shortfalls'] for r in gemm)} of {len(gemm)}",
             ]
    if rows and "same_hash" in rows[0]:
        lines.append(f"in the stored report (compiled here, same hash): "
                     f"{sum(bool(r['in_report']) for r in rows)} of {len(rows)}")
        lines.append(f"same hash compiled here: {sum(r['same_hash'] for r in rows)} of "
                     f"{len(rows)}; same findings: {sum(not r['differences'] for r in rows)} "
                     f"of {len(rows)}")
    for r in rows:
        notes = []
        if r["shortfalls"]:
            notes.append("misses: " + "; ".join(r["shortfalls"]))
        if r.get("differences"):
            notes.append(f"differs here: {r['differences']}")
        if notes:
            lines.append(f"  {r['kernel']} {r['config']} [{r['hash'][:8]}]: " + " | ".join(notes))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path,
                        help="a JIT log (folder or archive) or a stored comparison (.json)")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    parser.add_argument("--gpu-triton", help="the GPU's Triton version (default: this one)")
    parser.add_argument("--no-recompile", action="store_true",
                        help="read the GPU's files only; compile nothing here")
    parser.add_argument("--report", type=Path,
                        help="the kernel report's data to look compiles up in (default: "
                             "docs/kernels/triton-<the GPU's version>.json)")
    args = parser.parse_args(argv)
    if args.source.suffix == ".json":
        result = json.loads(args.source.read_text())
    else:
        entries, files = open_log(args.source)
        result = compare(entries, files, args.gpu_triton, recompile=not args.no_recompile,
                         report=args.report)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
