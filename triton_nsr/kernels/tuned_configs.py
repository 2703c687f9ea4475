"""Launch configs from a committed table of tuned configs, so a short GPU run need not autotune.

Triton's autotuner compiles and benchmarks every config of a kernel for every new shape class,
serially: hundreds of compiles for the benchmark suite, more than a short GPU lease can spend.
A lease run (``python -m bench lease``) writes the winners it measured to a table; committed
beside this module as ``tuned_configs.json``, the table is read by default, so a known shape
class launches its stored config at once: one compile, no benchmarks.

The table holds one section per (kernel, kernel source hash, config list hash, Triton version,
device name); a change to any of them makes the section unusable and the kernel is tuned again.
An entry's key is the shape class Triton's autotuner keys on: the values of the kernel's ``key``
arguments, then the dtype of every tensor argument.

What happens without a stored config is the :class:`Policy` in force (:func:`use`): autotune (the
default, Triton's own benchmark settings), autotune with short benchmarks and a cap on the number
of shape classes (a lease), or launch the first config of the list (fixed, repeatable configs).
Under Triton's CPU interpreter nothing is tuned: the first config is used, always.

Set ``TRITON_NSR_TUNED_CONFIGS`` to another table file, or to ``none`` to ignore the table.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton

from triton_nsr.kernels.known_launches import KnownLaunches

TABLE_PATH = Path(__file__).with_name("tuned_configs.json")
TABLE_SCHEMA = 1


@dataclass(frozen=True)
class Policy:
    """What a kernel does for a shape class the table does not hold.

    autotune: False launches the first config of the list; True runs Triton's autotuner, for at
        most ``max_autotunes`` shape classes in this process (None: no cap; past the cap, the
        first config), each config benchmarked for ``warmup_ms`` + ``rep_ms`` (None: Triton's
        defaults, 25 + 100 ms).
    record: a list that collects a :class:`Launch` per launch instead of launching anything
        (the lease's dry run counts compiles this way, without a GPU).
    """

    autotune: bool = True
    max_autotunes: int | None = None
    warmup_ms: int | None = None
    rep_ms: int | None = None
    record: list | None = None


@dataclass(frozen=True)
class Launch:
    """One recorded launch: the kernel, its shape class and Triton's specialization of it."""

    kernel: TunedKernel
    key: tuple
    specialization: tuple


@dataclass
class Telemetry:
    """What the tuned kernels of this process did, for the lease's accounting.

    ``autotune_s`` is wall time inside Triton's autotuner (its compiles included);
    ``autotuning`` is True while it runs, so a compile listener can tell those compiles apart.
    ``new_entries`` holds the winners autotuned here: {section id: {entry key: entry}}.
    """

    table_hits: int = 0
    autotuned: int = 0
    autotune_s: float = 0.0
    first_config_launches: int = 0
    autotuning: bool = False
    new_entries: dict = field(default_factory=dict)

    def counters(self) -> dict:
        return {"table_hits": self.table_hits, "autotuned": self.autotuned,
                "autotune_s": self.autotune_s, "first_config_launches": self.first_config_launches}


telemetry = Telemetry()
_policy = Policy()
# Set while a tool forces a kernel choice (inspection.capture.kernel_gradient_variant): known
# launches stand aside, as under the recording and fixed-config policies.
_known_launches_suspended = False
# Every tuned kernel, for forget_known_launches.
_KERNELS: list[TunedKernel] = []


@contextlib.contextmanager
def use(policy: Policy) -> Iterator[Policy]:
    """Launch every tuned kernel under ``policy`` inside the block."""
    global _policy
    saved, _policy = _policy, policy
    try:
        yield policy
    finally:
        _policy = saved


def _python_function(kernel):
    """The Python function under a jitted (or interpreted) Triton function."""
    return kernel.fn


_DEF_LINE = re.compile(r"^[ \t]*def ", re.MULTILINE)


def function_source(function) -> str:
    """A function's source from its ``def`` line on, dedented: what Triton compiles.

    The decorators above it (``@tuned(configs, key=...)``, ``@triton.jit``) are left out, as
    Triton's own cache key leaves them out: the config list is hashed on its own
    (:func:`configs_hash`), and a key list names arguments, it is not kernel code. So renaming
    the list a decorator names, or moving a kernel verbatim, keeps its stored section valid.
    """
    source = textwrap.dedent(inspect.getsource(function))
    return source[_DEF_LINE.search(source).start():]


def source_hash(kernel) -> str:
    """sha256 of the kernel's source and of every jitted function it calls, recursively
    (each from its ``def`` line: :func:`function_source`)."""
    digest = hashlib.sha256()
    seen = set()
    pending = [kernel]
    while pending:
        current = _python_function(pending.pop())
        if current.__qualname__ in seen:
            continue
        seen.add(current.__qualname__)
        digest.update(function_source(current).encode())
        for name in sorted(current.__code__.co_names):
            callee = current.__globals__.get(name)
            if inspect.isfunction(getattr(callee, "fn", None)):
                pending.append(callee)
    return digest.hexdigest()


def describe(config: triton.Config) -> str:
    """'BLOCK_M=64, BLOCK_N=32, warps=4, stages=3': a config as the table and logs show it."""
    text = ", ".join(f"{name}={value}" for name, value in config.kwargs.items())
    return f"{text}, warps={config.num_warps}, stages={config.num_stages}"


def configs_hash(configs: list[triton.Config]) -> str:
    """sha256 of the config list, in order (an entry stores its config's index)."""
    text = "\n".join(f"{describe(c)}, ctas={c.num_ctas}, maxnreg={c.maxnreg}" for c in configs)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_key(key: tuple) -> str:
    return "|".join(str(value) for value in key)


def specialization(named_args: dict) -> tuple:
    """What Triton compiles a new binary for besides constexprs: each integer argument's
    divisibility by 16 and equality to 1, and each tensor's dtype."""
    spec = []
    for value in named_args.values():
        if isinstance(value, bool):
            spec.append(value)
        elif isinstance(value, int):
            spec.append(1 if value == 1 else 16 if value % 16 == 0 else 0)
        elif hasattr(value, "dtype"):
            spec.append(str(value.dtype))
    return tuple(spec)


def table_path() -> Path | None:
    setting = os.environ.get("TRITON_NSR_TUNED_CONFIGS")
    if setting is None:
        return TABLE_PATH
    return None if setting.lower() == "none" else Path(setting)


def load_table(path: Path | None = None) -> dict:
    """The table at ``path`` (default: :func:`table_path`); an empty one when there is none.

    Raises ValueError naming the file when it exists but is not a table of this schema.
    """
    path = table_path() if path is None else path
    if path is None or not Path(path).exists():
        return {"schema": TABLE_SCHEMA, "sections": []}
    table = json.loads(Path(path).read_text())
    if table.get("schema") != TABLE_SCHEMA or not isinstance(table.get("sections"), list):
        raise ValueError(f"{path} is not a tuned-config table of schema {TABLE_SCHEMA}")
    return table


def section_id(section: dict) -> tuple:
    return (section["kernel"], section["source_hash"], section["configs_hash"],
            section["triton"], section["device"])


def merge(table: dict, new_entries: dict) -> dict:
    """``table`` with ``new_entries`` ({section id: {key: entry}}) added.

    A new section replaces the stored sections of the same kernel, Triton version and device
    whose source or config list differ: those can never be used again.
    """
    sections = {section_id(s): {**s, "entries": dict(s["entries"])} for s in table["sections"]}
    for ident, entries in new_entries.items():
        kernel, source, configs, version, device = ident
        for other in list(sections):
            if (other[0], other[3], other[4]) == (kernel, version, device) and other != ident:
                del sections[other]
        section = sections.setdefault(ident, {
            "kernel": kernel, "source_hash": source, "configs_hash": configs, "triton": version,
            "device": device, "entries": {}})
        section["entries"].update(entries)
    ordered = sorted(sections.values(), key=lambda s: (s["kernel"], s["device"], s["triton"]))
    for section in ordered:
        section["entries"] = dict(sorted(section["entries"].items()))
    return {"schema": TABLE_SCHEMA, "sections": ordered}


def write_table(path: Path, table: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path


@contextlib.contextmanager
def known_launches_suspended() -> Iterator[None]:
    """Inside the block every launch takes the JIT (known_launches stand aside)."""
    global _known_launches_suspended
    saved, _known_launches_suspended = _known_launches_suspended, True
    try:
        yield
    finally:
        _known_launches_suspended = saved


def forget_known_launches() -> None:
    """Every tuned kernel forgets its known launches (autotune.clear_launch_plans calls it)."""
    for kernel in _KERNELS:
        if kernel.known is not None:
            kernel.known.clear()


@dataclass(frozen=True)
class Target:
    """Where a table section applies: the Triton version and the device name."""

    triton: str
    device: str

    @classmethod
    def here(cls) -> Target:
        import torch

        return cls(triton.__version__, torch.cuda.get_device_name())


# Compile options every launch states. Triton 3.6 fuses a * b + c into one FMA by default; 3.9
# still does, but warns at the first compile where TRITON_DEFAULT_FP_FUSION is unset, and says
# 3.10 will not. Stated, the kernels round alike on every version, as they were measured and as
# the kernel report compiles them.
COMPILE_OPTIONS = {"enable_fp_fusion": True}

# Interpreter launches are serialised: for the length of a launch the interpreter replaces the
# functions of triton.language with its own, process-wide, and keeps the program id in one
# global builder, so a second thread's launch would run on half-restored functions or another
# program's ids.
_interpreter_lock = threading.Lock()


# Argument types that never carry a dtype (shape_class skips them without a lookup).
_PLAIN_TYPES = frozenset((int, float, bool, str, type(None)))


class TunedKernel:
    """A jitted kernel launched with a stored, autotuned or first config (see the module doc).

    ``kernel[grid](*args, **kwargs)`` as with ``triton.autotune``; ``fn`` and ``configs`` are
    the jitted function and the config list, as on Triton's autotuner.
    """

    def __init__(self, fn, configs: list[triton.Config], key: list[str],
                 interpreted: bool, prune=None) -> None:
        self.fn = fn
        self.configs = configs
        self.key = key
        self.interpreted = interpreted
        self.early_config_prune = prune
        python = _python_function(fn)
        self.name = python.__name__
        self.arg_names = list(inspect.signature(python).parameters)
        # Triton 3.9's autotuner refuses a key name that is no argument, 3.6's dropped it
        # silently: refuse it here, on every version and under the interpreter, at import.
        unknown = [name for name in key if name not in self.arg_names]
        if unknown:
            raise ValueError(
                f"{self.name}: autotune key names {', '.join(map(repr, unknown))}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not among its arguments "
                f"({', '.join(self.arg_names)})")
        self._chosen: dict[tuple, dict] = {}
        self._autotuners: dict[tuple, object] = {}
        self._sections: dict[Target, dict] = {}
        self.known = None if interpreted else KnownLaunches(self.arg_names)
        _KERNELS.append(self)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            return self._launch(grid, args, kwargs)

        return launch

    def known_launches_on(self) -> bool:
        """Whether a known launch may be taken: under the autotuning policies only (a
        recording or a fixed config is a tool's mode, in which every launch takes the JIT),
        never under the interpreter or while a tool forces a kernel choice."""
        policy = _policy
        return (policy.autotune and policy.record is None and self.known is not None
                and not _known_launches_suspended)

    @functools.cached_property
    def source_hash(self) -> str:
        return source_hash(self.fn)

    def section_id(self, target: Target) -> tuple:
        return (self.name, self.source_hash, configs_hash(self.configs), target.triton,
                target.device)

    def stored(self, key: tuple, target: Target, table: dict | None = None) -> int | None:
        """Index of the stored config of shape class ``key`` on ``target``, or None."""
        if table is None and target in self._sections:
            entries = self._sections[target]
        else:
            ident = self.section_id(target)
            sections = (load_table() if table is None else table)["sections"]
            entries = next((s["entries"] for s in sections if section_id(s) == ident), {})
            if table is None:
                self._sections[target] = entries
        entry = entries.get(entry_key(key))
        return None if entry is None else entry["config"]

    def shape_class(self, named_args: dict) -> tuple:
        """The autotuner's key: the ``key`` arguments' values, then every tensor's dtype."""
        key = [named_args[name] for name in self.key if name in named_args]
        # Most arguments are integers: hasattr on them raises and catches an AttributeError,
        # the largest share of a launch's host time before this test.
        key += [str(value.dtype) for value in named_args.values()
                if type(value) not in _PLAIN_TYPES and hasattr(value, "dtype")]
        return tuple(key)

    def _launch(self, grid, args: tuple, kwargs: dict):
        policy = _policy
        known = self.known_launches_on()
        if known:
            kernel = self.known.launch(grid, args, kwargs)
            if kernel is not None:
                return kernel
        if policy.record is None and self.interpreted:
            if any(getattr(a, "dtype", None) == torch.bfloat16 for a in (*args, *kwargs.values())):
                # Its dot would multiply the raw 16 bits: refuse rather than return garbage.
                raise NotImplementedError(
                    f"{self.name}: Triton's CPU interpreter has no bfloat16 arithmetic; run "
                    "float32 or float16 there, or use backend='torch'")
            with _interpreter_lock:
                return self.fn[grid](*args, **kwargs, **self.configs[0].kwargs)
        named = dict(zip(self.arg_names, args)) | kwargs
        key = self.shape_class(named)
        if policy.record is not None:
            policy.record.append(Launch(self, key, specialization(named)))
            return None
        # The chosen config's launch arguments (tiles, warps, stages), kept per shape class.
        chosen = self._chosen.get(key)
        if chosen is None:
            index = None if table_path() is None else self.stored(key, Target.here())
            if index is not None:
                chosen = self._chosen[key] = self.configs[index].all_kwargs() | COMPILE_OPTIONS
                telemetry.table_hits += 1
            elif policy.autotune and (policy.max_autotunes is None
                                      or telemetry.autotuned < policy.max_autotunes):
                kernel = self._autotune(key, grid, args, kwargs, policy)
                if known and kernel is not None:
                    self.known.learn(grid, args, kwargs, self._chosen[key], kernel)
                return kernel
            else:
                telemetry.first_config_launches += 1
                chosen = self.configs[0].all_kwargs() | COMPILE_OPTIONS
        kernel = self.fn[grid](*args, **kwargs, **chosen)
        if known and kernel is not None:
            self.known.learn(grid, args, kwargs, chosen, kernel)
        return kernel

    def autotuner(self, warmup_ms: int | None = None, rep_ms: int | None = None):
        """Triton's autotuner over this kernel's configs, key and pruner; each config
        benchmarked for ``warmup_ms`` + ``rep_ms`` (None, None: Triton's own settings)."""
        do_bench = None
        if (warmup_ms, rep_ms) != (None, None):
            from triton.testing import do_bench as bench

            def do_bench(call, quantiles, warmup=warmup_ms or 25, rep=rep_ms or 100):
                return bench(call, warmup=warmup, rep=rep, quantiles=quantiles)

        pruning = ({"early_config_prune": self.early_config_prune}
                   if self.early_config_prune else None)
        return triton.autotune(configs=self.configs, key=self.key, do_bench=do_bench,
                               prune_configs_by=pruning)(self.fn)

    def _autotune(self, key: tuple, grid, args: tuple, kwargs: dict, policy: Policy):
        """Run Triton's autotuner for ``key``; keep and report its winner."""
        settings = (policy.warmup_ms, policy.rep_ms)
        tuner = self._autotuners.get(settings)
        if tuner is None:
            tuner = self._autotuners[settings] = self.autotuner(*settings)
        start = time.perf_counter()
        telemetry.autotuning = True
        try:
            result = tuner[grid](*args, **kwargs, **COMPILE_OPTIONS)
        finally:
            telemetry.autotuning = False
            telemetry.autotune_s += time.perf_counter() - start
        best = tuner.best_config
        self._chosen[key] = best.all_kwargs() | COMPILE_OPTIONS
        telemetry.autotuned += 1
        timings = getattr(tuner, "configs_timings", None) or {}
        median = timings.get(best, [None])[0]
        index = next(i for i, config in enumerate(self.configs) if config is best)
        ident = self.section_id(Target.here())
        telemetry.new_entries.setdefault(ident, {})[entry_key(key)] = {
            "config": index, "label": describe(best),
            "ms": None if median is None else float(median),
            "candidates": len(timings),
        }
        return result
