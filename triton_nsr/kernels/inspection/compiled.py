"""Compile a recorded launch for Hopper (sm_90) as Triton's JIT would, and read what came out.

No GPU is needed: Triton's backend compiles to PTX and, with the ptxas it ships, to a cubin on
any machine. The JIT's own binder specialises the recorded arguments (integers equal to 1 become
constants; integers and pointers divisible by 16 are marked so), so the compile is the one a real
launch of that shape triggers. From the result this module reads, per GEMM operand:

- how it comes from global memory: TMA (``cp.async.bulk.tensor``), ``cp.async`` of some width,
  or a synchronous ``ld.global`` of some width, attributed to the operand through the PTX line
  table (each instruction's ``.loc`` names the kernel source line of the ``tl.load``);
- how it enters the MMA: shared memory or registers (the operand types of TTGIR's dot);

and per kernel: the MMA instruction (wgmma, mma.sync or none), the deepest wgmma wait (how many
wgmma groups stay in flight), registers, spilled bytes, shared memory, and the shared buffers a
pipelined loop overwrites under a running MMA (from the TTGIR).
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import tempfile
import textwrap
from dataclasses import asdict, dataclass, field

# The dot operands of each GEMM kernel: (A, B) as (name, the kernel source's variables), where
# "shifted0|shifted1|shifted2" is one operand loaded into three variables (the column taps). The
# all-taps kernel's rows are dy and its shifted operand x, or the other way round (TRANSPOSED).
DOT_OPERANDS = {
    "conv_fwd_kernel": (("a", "a"), ("w", "w")),
    "conv_bwd_input_kernel": (("a", "a"), ("w", "w")),
    "conv_bwd_weight_kernel": (("dy", "dy"), ("x", "x")),
    "conv_bwd_weight_3x3_kernel": (("rows", "rows_new|rows_old"),
                                   ("shifted", "shifted0|shifted1|shifted2")),
}
# Hopper (H100/H200): 227 KiB of shared memory per block at most.
HOPPER_SHARED_MEMORY = 232448


@dataclass
class Operand:
    """How one dot operand travels: ``route`` from global memory, ``into_mma`` at the MMA."""

    name: str
    route: str
    into_mma: str


@dataclass
class Compiled:
    """What Triton made of one kernel x config for one launch."""

    kernel: str
    config: str
    mma: str
    wait_depth: int | None
    registers: int
    spill_bytes: int
    shared_memory: int
    operands: list[Operand] = field(default_factory=list)
    error: str | None = None
    # Triton's cache hash: equal for two compiles of the same source, specialisation, options
    # and Triton version (a GPU run's JIT log names the same hash for the same launch).
    hash: str | None = None
    # Shared-memory MMA operands the pipelined loop overwrites while an MMA may still read them
    # (shared_buffer_races), each as "name: S buffers, loaded D steps ahead".
    races: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def config_label(config) -> str:
    """'BLOCK_M=64 BLOCK_N=32 BLOCK_K=16 w4 s3': a config's constexprs, warps and stages."""
    tiles = " ".join(f"{name}={value}" for name, value in config.kwargs.items())
    return f"{tiles} w{config.num_warps} s{config.num_stages}".strip()


def bind(fn, args: tuple, kwargs: dict, arch: int = 90):
    """The JIT's binder on a launch's arguments (config constexprs among ``kwargs``): (target,
    signature, constants, attrs, options), exactly what ``JITFunction.run`` computes before it
    compiles (minus the device)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization,
                                                          options)
    return target, signature, constexprs, attrs, options


def _launch_kwargs(launch, config) -> dict:
    """What a launch of ``config`` passes besides the arguments: its constexprs, launch options
    and the compile options every launch states (tuned_configs.COMPILE_OPTIONS)."""
    from triton_nsr.kernels.tuned_configs import COMPILE_OPTIONS

    return {**launch.kwargs, **config.all_kwargs(), **COMPILE_OPTIONS}


def _bind(tuner, launch, config, arch: int):
    return bind(tuner.fn, launch.args, _launch_kwargs(launch, config), arch)


def specialisation_key(tuner, launch, config, arch: int = 90) -> str:
    """A string equal for two launches exactly when the JIT compiles the same binary."""
    _, signature, constexprs, attrs, options = _bind(tuner, launch, config, arch)
    return repr((tuner.fn.__name__, sorted(signature.items()), sorted(constexprs.items()),
                 sorted(attrs.items()), sorted(options.__dict__.items())))


def compile_bound(fn, args: tuple, kwargs: dict, arch: int = 90):
    """Compile the jitted ``fn`` for sm_``arch`` as a launch with ``args`` and ``kwargs`` (the
    config's constexprs among them) would; returns Triton's CompiledKernel."""
    import triton
    from triton.compiler import ASTSource

    target, signature, constexprs, attrs, options = bind(fn, args, kwargs, arch)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def compile_launch(tuner, launch, config, arch: int = 90):
    """Compile ``tuner``'s kernel for ``launch`` with ``config``; returns Triton's CompiledKernel.

    The signature, constants and divisibility attributes are those of a real launch (bind).
    """
    return compile_bound(tuner.fn, launch.args, _launch_kwargs(launch, config), arch)


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes per thread) from the cuobjdump Triton ships.

    A stack above zero means ptxas spilled registers.
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


def load_lines(fn, variable: str) -> list[int]:
    """Source lines (file numbering) of the ``variable = tl.load(...)`` statements in ``fn``.

    ``variable`` may name several variables, "x0|x1": the lines of all of them.
    """
    names = variable.split("|")
    source, first = inspect.getsourcelines(fn.fn)
    tree = ast.parse(textwrap.dedent("".join(source)))
    lines: list[int] = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and any(isinstance(t, ast.Name) and t.id in names for t in node.targets)):
            lines += range(node.lineno + first - 1, node.end_lineno + first)
    if not lines:
        raise ValueError(f"{fn.__name__} has no '{variable} = tl.load(...)' statement")
    return lines


_GLOBAL_LOAD = re.compile(
    r"(cp\.async\.bulk\.tensor|cp\.async\.c[ag]\.shared\.global[^,]*,[^,]*,\s*(0x[0-9a-f]+|\d+)"
    r"|ld\.global(?:\.[a-z]+)*\.(?:v(\d)\.)?[bfu](\d+))")


def global_loads_by_line(ptx: str, source_file: str,
                         llir: str | None = None) -> dict[int, set[str]]:
    """{kernel source line: {'TMA', 'cp.async 16B', 'ld.global 2B', ...}} read from the PTX.

    Each instruction is charged to the last ``.loc`` naming ``source_file`` before it
    (instructions of inlined helpers carry the caller's line in their ``inlined_at``). Given
    the LLVM IR, synchronous loads are read from it instead (:func:`llir_loads_by_line`): in
    Triton 3.9 a predicated ``ld.global`` comes out of LLVM under the ``.loc`` of whatever was
    scheduled before it (3 lines off in the TF32 kernel gradient), while the IR names its own.
    """
    files = dict(re.findall(r'\.file\s+(\d+)\s+"([^"]+)"', ptx))
    wanted = {number for number, path in files.items()
              if os.path.basename(path) == os.path.basename(source_file)}
    line = None
    found: dict[int, set[str]] = {}
    for text in ptx.splitlines():
        loc = re.match(r"\s*\.loc\s+(\d+)\s+(\d+)\s+\d+(?:.*inlined_at\s+(\d+)\s+(\d+))?", text)
        if loc:
            if loc[1] in wanted:
                line = int(loc[2])
            elif loc[3] in wanted:
                line = int(loc[4])
            continue
        match = _GLOBAL_LOAD.search(text)
        if not match or line is None:
            continue
        kind = _load_kind(match)
        if llir is None or not kind.startswith("ld.global"):
            found.setdefault(line, set()).add(kind)
    if llir is not None:
        for line, kinds in llir_loads_by_line(llir, source_file).items():
            found.setdefault(line, set()).update(kinds)
    return found


def _load_kind(match) -> str:
    """'TMA', 'cp.async NB' or 'ld.global NB' for a _GLOBAL_LOAD match."""
    if match[1].startswith("cp.async.bulk.tensor"):
        return "TMA"
    if match[2]:
        return f"cp.async {int(match[2], 0)}B"
    return f"ld.global {int(match[3] or 1) * int(match[4]) // 8}B"


_DI_FILE = re.compile(r'^(![0-9]+) = !DIFile\(filename: "([^"]+)"', re.M)
_DI_SCOPE = re.compile(r"^(![0-9]+) = (?:distinct )?!DI(?:Subprogram|LexicalBlockFile|LexicalBlock)"
                       r"\(.*?file: (![0-9]+)", re.M)
_DI_LOCATION = re.compile(r"^(![0-9]+) = !DILocation\(line: (\d+), column: \d+, scope: "
                          r"(![0-9]+)(?:, inlinedAt: (![0-9]+))?", re.M)
_LLVM_LOAD = re.compile(r"= load (?:<(\d+) x )?(i\d+|half|bfloat|float|double)[^,]*, "
                        r"ptr addrspace\(1\)")
_LLVM_BITS = {"half": 16, "bfloat": 16, "float": 32, "double": 64}


def llir_loads_by_line(llir: str, source_file: str) -> dict[int, set[str]]:
    """{kernel source line: {'ld.global 16B', ...}}: the synchronous global loads of the LLVM
    IR (Triton's inline-assembly ``ld.global`` and LLVM's own loads from address space 1),
    each charged to its own ``!dbg`` location, or the first location in ``source_file`` of the
    chain it was inlined at."""
    files = dict(_DI_FILE.findall(llir))
    scopes = dict(_DI_SCOPE.findall(llir))
    locations = {name: (int(line), scope, inlined)
                 for name, line, scope, inlined in _DI_LOCATION.findall(llir)}
    wanted = os.path.basename(source_file)

    def line_of(location):
        while location in locations:
            line, scope, inlined = locations[location]
            if os.path.basename(files.get(scopes.get(scope), "")) == wanted:
                return line
            location = inlined
        return None

    found: dict[int, set[str]] = {}
    for text in llir.splitlines():
        debug = re.search(r"!dbg (![0-9]+)", text)
        line = line_of(debug[1]) if debug else None
        if line is None:
            continue
        kinds = [_load_kind(m) for m in _GLOBAL_LOAD.finditer(text)
                 if m[0].startswith("ld.global")]
        load = _LLVM_LOAD.search(text)
        if load:
            bits = _LLVM_BITS.get(load[2]) or int(load[2][1:])
            kinds.append(f"ld.global {int(load[1] or 1) * bits // 8}B")
        for kind in kinds:
            found.setdefault(line, set()).add(kind)
    return found


def route_of(kinds: set[str]) -> str:
    """One phrase for how an operand leaves global memory, the slowest form named last."""
    if not kinds:
        return "not found"
    order = sorted(kinds, key=lambda k: (k != "TMA", k.split()[0] != "cp.async",
                                         -int(k.split()[-1].rstrip("B")) if k != "TMA" else 0))
    return " + ".join(order)


def _dot_operand_homes(ttgir: str) -> tuple[str, str]:
    """(A, B) homes at the main-loop dot: 'shared memory' for memdescs, else 'registers'."""
    match = re.search(r"= (?:ttng\.warp_group_dot|tt\.dot)\s+[^:]*:\s*([^*]+)\*\s*([^-]+)->", ttgir)
    if not match:
        return ("none", "none")
    return tuple("shared memory" if "memdesc" in part else "registers"
                 for part in match.groups())


_MEMDESC_VIEW = re.compile(r"(%[\w.]+) = ttg\.(?:memdesc_index|memdesc_trans|memdesc_subslice|"
                           r"memdesc_reinterpret|memdesc_subview)\s+(%[\w.]+)")


def shared_buffer_races(ttgir: str) -> list[str]:
    """Shared-memory operands of an asynchronous wgmma that the pipelined loop may overwrite
    while that wgmma still reads them, as "name: S buffers, loaded D steps ahead".

    A load pipelined D steps ahead into a ring of S shared buffers writes step i + D's tile into
    buffer (i + D) mod S during step i. When the loop leaves step i's wgmma in flight (a
    ``warp_group_dot_wait`` with pendings > 0), that buffer must not be step i's: S > D. D is
    the number of buffers the prologue fills (constant indices). Triton 3.6 and 3.9 give a
    loaded tile that also feeds something other than the MMA (a sum, a store) one buffer
    fewer than its siblings, S = D, which is this race.
    """
    allocs = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"(%[\w.]+) = ttg\.local_alloc : \(\) -> !ttg\.memdesc<(\d+)x", ttgir)}
    if not allocs or not any(int(p) > 0 for p in re.findall(
            r"warp_group_dot_wait .*pendings = (\d+)", ttgir)):
        return []
    source = {m.group(1): m.group(2) for m in _MEMDESC_VIEW.finditer(ttgir)}

    def alloc_of(name):
        seen = set()
        while name in source and name not in seen:
            seen.add(name)
            name = source[name]
        return name if name in allocs else None

    races = []
    for match in re.finditer(r"ttng\.warp_group_dot (%[\w.]+), (%[\w.]+),[^\n]*isAsync = true",
                             ttgir):
        for operand in match.groups():
            alloc = alloc_of(operand)
            if alloc is None:
                continue
            ahead = len(set(re.findall(rf"memdesc_index {re.escape(alloc)}\[(%c\d+_i32)\]",
                                       ttgir)))
            name = re.sub(r"_\d+$", "", alloc.lstrip("%"))
            finding = f"{name}: {allocs[alloc]} buffers, loaded {ahead} steps ahead"
            if ahead and allocs[alloc] <= ahead and finding not in races:
                races.append(finding)
    return races


def dot_operands(kernel_name: str, constexprs: dict | None = None) -> tuple:
    """A GEMM kernel's (A, B) dot operands as DOT_OPERANDS names them; the per-tap kernel
    gradient with X_IN_REGISTERS multiplies x^T by dy^T, so x is its A."""
    operands = DOT_OPERANDS[kernel_name]
    if (constexprs or {}).get("X_IN_REGISTERS"):
        return operands[::-1]
    return operands


def inspect_compiled(kernel, fn, label: str, constexprs: dict | None = None) -> Compiled:
    """Read MMA, wait depth, registers, spills, shared memory and operand routes
    (``constexprs``: the launch's, where they decide which operand is the dot's A)."""
    ptx, ttgir = kernel.asm["ptx"], kernel.asm["ttgir"]
    if "wgmma.mma_async" in ptx:
        mma = "wgmma"
    elif "mma.sync" in ptx:
        mma = "mma.sync"
    else:
        mma = "none"
    waits = [int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)]
    registers, stack = _resource_usage(kernel.asm["cubin"])
    result = Compiled(fn.__name__, label, mma, max(waits) if waits else None, registers, stack,
                      kernel.metadata.shared, races=shared_buffer_races(ttgir))
    if fn.__name__ in DOT_OPERANDS:
        loads = global_loads_by_line(ptx, inspect.getsourcefile(fn.fn), kernel.asm.get("llir"))
        homes = _dot_operand_homes(ttgir)
        for (name, variables), home in zip(dot_operands(fn.__name__, constexprs), homes):
            kinds = set().union(*(loads.get(line, set()) for line in load_lines(fn, variables)))
            result.operands.append(Operand(name, route_of(kinds), home))
    if result.shared_memory > HOPPER_SHARED_MEMORY:
        result.error = f"needs {result.shared_memory} bytes of shared memory"
    return result


def hopper_shortfalls(result: Compiled) -> list[str]:
    """What keeps a GEMM kernel's compile off the Hopper fast path; empty when none.

    The criteria: wgmma; every operand by TMA or 16-byte cp.async; a wgmma wait depth of at
    least 1 in the main loop (the next loads overlap the running MMA); no register spills; no
    shared buffer overwritten under a running MMA (shared_buffer_races).
    """
    if result.error:
        return [result.error]
    shortfalls = []
    if result.mma != "wgmma":
        shortfalls.append(f"MMA is {result.mma}")
    for operand in result.operands:
        if operand.route not in ("TMA", "cp.async 16B"):
            shortfalls.append(f"{operand.name} by {operand.route}")
    if not result.wait_depth:
        shortfalls.append(f"wgmma wait depth {result.wait_depth}")
    if result.spill_bytes:
        shortfalls.append(f"{result.spill_bytes} B spilled")
    shortfalls += [f"race on {race}" for race in result.races]
    return shortfalls


def compile_and_inspect(tuner, launch, config, arch: int = 90) -> Compiled:
    """compile_launch + inspect_compiled; a compiler failure becomes the record's ``error``."""
    label = config_label(config)
    try:
        kernel = compile_launch(tuner, launch, config, arch)
    except Exception as exc:  # a failing config is a finding to report, not a crash
        return Compiled(tuner.fn.__name__, label, "none", None, 0, 0, 0,
                        error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    result = inspect_compiled(kernel, tuner.fn, label, launch.named)
    result.hash = kernel.hash
    return result
