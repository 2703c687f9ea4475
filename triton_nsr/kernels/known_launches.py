"""A launch seen before goes straight to the compiled kernel's launcher.

Triton's JIT spends tens of microseconds a launch before the kernel's launcher runs: it binds
and specialises every argument, hashes a cache key, finds the kernel, evaluates the grid and
builds launch metadata; our tuned kernel adds its shape class and the config lookup. For a
launch it has seen, none of that changes. So a ``TunedKernel`` keeps, per launch plan (the
launcher's decisions per shape class, ``autotune.launch_plan``, whose grid is one object per
plan), the compiled kernel, the grid evaluated for the chosen config and every argument after the
tensors, and on a later launch checks only what Triton would have specialised differently:
each tensor's dtype and 16-byte alignment, the integer arguments and constexprs (the same
objects when they come from the same plan), the current device. Then it reads the current
stream (CUDA graph capture and user streams depend on it) and calls the launcher.

A launch plan goes one step further with a :class:`LaunchSite`: its grid and constexprs are
bound once and the known launch it took last is kept, so a repeated call compares its other
arguments with one tuple comparison and checks its tensors' dtypes and alignment, with no
lookup, keyword comparison or closure per launch. A caller that knows its tensors' dtypes and
alignments from a key it already checked (a layer plan: its key has the dtypes, and it checks
the addresses once a call) passes a *signature*, an object that stands for them: a site that
took its kept launch under the same signature skips the tensors' check.

Launch metadata is built only when a launch hook is set (a profiler's), as Triton builds it.
The interpreter, and the tuned-config policies other than the default (recording, a fixed
config, a capped autotune), never use known launches (``tuned_configs``), and forgetting the
launch plans forgets them too.
"""

from __future__ import annotations

import operator
from functools import reduce

import torch
from triton import knobs
from triton.runtime import driver

# Known launches kept per kernel before all are forgotten (a plan's entry is small), and per
# plan (its tensors' dtypes and alignments) before the oldest is.
MAX_KNOWN = 1024
MAX_PER_PLAN = 8
TMA_ALIGN_MASK = 15
_DTYPE = operator.attrgetter("dtype")
_ADDRESS = torch.Tensor.data_ptr
# Bumped whenever any kernel forgets its known launches: a site's kept launch is then stale.
_generation = 0


def _hooked() -> bool:
    """Whether a launch hook is set: Triton >= 3.4 keeps a chain that may be empty."""
    runtime = knobs.runtime
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


class KnownLaunch:
    """One launch plan's launch, ready: the compiled kernel, the grid, the constexprs after the
    positional arguments (as Triton's launcher takes them), and what a later launch must match:
    the ``count`` leading tensors' dtypes and 16-byte alignment, the other positional arguments
    (floats may differ: Triton does not specialise on them) and the constexprs."""

    __slots__ = ("grid_source", "constants", "floats", "kwargs", "count", "signature",
                 "dtypes", "all_aligned", "device", "grid", "kernel", "run", "function",
                 "metadata", "tail")

    def __init__(self, grid_source, args: tuple, kwargs: dict, count: int, device: int,
                 grid: tuple, kernel, tail: tuple) -> None:
        # The plan's grid is held, so its identity, the key, is never reused while this lives.
        self.grid_source = grid_source
        self.constants = args[count:]
        self.floats = frozenset(i for i, value in enumerate(self.constants)
                                if type(value) is float)
        self.kwargs = dict(kwargs)
        self.count = count
        self.signature = _signature(args, count)
        self.dtypes = tuple(dtype for dtype, _ in self.signature)
        self.all_aligned = all(aligned for _, aligned in self.signature)
        self.device = device
        self.grid = grid
        self.kernel = kernel
        self.run = kernel.run
        self.function = kernel.function
        self.metadata = kernel.packed_metadata
        self.tail = tail

    def matches(self, args: tuple, kwargs: dict) -> bool:
        count = self.count
        if kwargs != self.kwargs:
            return False
        return self.scalars_match(args[count:]) and self.tensors_match(args[:count])

    def tensors_match(self, tensors: tuple) -> bool:
        """Whether ``tensors`` (the ``count`` leading arguments) have this launch's dtypes and
        16-byte alignments. Mostly all aligned: one OR over the addresses tells."""
        try:
            if tuple(map(_DTYPE, tensors)) != self.dtypes:
                return False
            if self.all_aligned:
                return reduce(operator.or_, map(_ADDRESS, tensors)) & TMA_ALIGN_MASK == 0
            return _signature(tensors, len(tensors)) == self.signature
        except (AttributeError, TypeError):  # not a tensor where this launch had one
            return False

    def scalars_match(self, constants: tuple) -> bool:
        """Whether the arguments after the tensors are this launch's (floats may differ)."""
        if constants == self.constants:
            return True
        if len(constants) != len(self.constants):
            return False
        floats = self.floats
        return all(new == old or (i in floats and type(new) is float)
                   for i, (new, old) in enumerate(zip(constants, self.constants)))

    def launch(self, args: tuple, active):
        stream = active.get_current_stream(self.device)
        x, y, z = self.grid
        if _hooked():
            bound = (*args, *self.tail)
            self.run(x, y, z, stream, self.function, self.metadata,
                     self.kernel.launch_metadata(self.grid, stream, *bound),
                     knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *bound)
        else:
            self.run(x, y, z, stream, self.function, self.metadata, None, None, None, *args,
                     *self.tail)
        return self.kernel


def _signature(args: tuple, count: int) -> tuple:
    """(dtype, 16-byte aligned) of each of the ``count`` leading tensors."""
    return tuple([(tensor.dtype, tensor.data_ptr() & TMA_ALIGN_MASK == 0)
                  for tensor in args[:count]])


class KnownLaunches:
    """The known launches of one kernel, by the plan's grid object."""

    def __init__(self, arg_names: list[str]) -> None:
        self.arg_names = arg_names
        self._by_grid: dict = {}

    def launch(self, grid, args: tuple, kwargs: dict):
        """Launch as a known launch and return the compiled kernel, or None: not known."""
        entry = self.find(grid, args, kwargs)
        return None if entry is None else entry.launch(args, driver.active)

    def learn(self, grid, args: tuple, kwargs: dict, launched: dict, kernel) -> None:
        """Remember a launch the JIT just made: ``args`` and ``kwargs`` as the launcher passed
        them, ``launched`` what the JIT was given on top (the config's constexprs and
        options), ``kernel`` the CompiledKernel it returned. Launches whose tensors do not
        all lead the arguments, or whose keywords are not all constexprs after the positional
        arguments, are not remembered (they take the JIT every time)."""
        count = 0
        while count < len(args) and isinstance(args[count], torch.Tensor):
            count += 1
        if any(isinstance(value, torch.Tensor) for value in (*args[count:], *kwargs.values())):
            return
        named = dict(zip(self.arg_names, args)) | kwargs | launched
        if any(name not in named for name in self.arg_names):
            return  # a default Triton would fill in: leave it to the JIT
        if any(name in kwargs for name in self.arg_names[:len(args)]):
            return
        bound = [named[name] for name in self.arg_names]
        cells = grid(dict(zip(self.arg_names, bound))) if callable(grid) else grid
        cells = (*cells, 1, 1)[:3]
        if len(self._by_grid) >= MAX_KNOWN:
            self._by_grid.clear()
        entry = KnownLaunch(grid, args, kwargs, count, driver.active.get_current_device(),
                            tuple(cells), kernel, tuple(bound[len(args):]))
        entries = self._by_grid.setdefault(grid, [])
        entries.insert(0, entry)
        del entries[MAX_PER_PLAN:]

    def find(self, grid, args: tuple, kwargs: dict) -> KnownLaunch | None:
        """The known launch that ``args`` and ``kwargs`` would take on the current device."""
        entries = self._by_grid.get(grid)
        if not entries:  # nothing learned (a stood-in launch): no driver asked
            return None
        device = driver.active.get_current_device()
        for entry in entries:
            if entry.device == device and entry.matches(args, kwargs):
                return entry
        return None

    def clear(self) -> None:
        global _generation
        _generation += 1
        self._by_grid.clear()


class LaunchSite:
    """One launch plan's launch of one tuned kernel: ``site(tensors, scalars)`` is
    ``kernel[grid](*tensors, *scalars, **constexprs)``.

    The grid and the constexprs are bound when the plan is made; after a launch the site keeps
    the known launch it took. A later call takes it when known launches are on (the tuned
    kernel's policy), nothing was forgotten since, the device is the same, ``scalars`` equal
    its arguments (floats aside) and the tensors have its dtypes and alignments; anything else
    goes through the tuned kernel as a first launch does. Any other kernel object (a recorder,
    a test's spy) is launched by indexing it, every time.

    What the site keeps is one tuple, read and replaced whole, so that threads sharing a plan
    never launch one launch's kernel with another's trailing arguments: (the known launch, the
    generation it was kept in, the scalars it was last called with, those scalars followed by
    the launch's constexprs, the signature it was last called with).
    """

    __slots__ = ("kernel", "grid", "constexprs", "kept")

    def __init__(self, kernel, grid, constexprs: dict) -> None:
        self.kernel, self.grid, self.constexprs = kernel, grid, constexprs
        self.kept = None

    def __call__(self, tensors: tuple, scalars: tuple, signature=None):
        """Launch; ``signature``: None, or an object that stands for ``tensors``' dtypes and
        16-byte alignments (equal for every call that passes it: see the module doc)."""
        kept = self.kept
        if kept is not None and kept[1] == _generation and self.kernel.known_launches_on():
            entry, _, kept_scalars, suffix, kept_signature = kept
            active = driver.active
            if entry.device == active.get_current_device():
                if scalars is not kept_scalars:
                    suffix = (*scalars, *entry.tail) if entry.scalars_match(scalars) else None
                # tensors_match also compares the tensors' count (their dtypes' tuple).
                if suffix is not None and ((signature is kept_signature and signature is not None)
                                           or entry.tensors_match(tensors)):
                    if scalars is not kept_scalars or signature is not kept_signature:
                        self.kept = (entry, kept[1], scalars, suffix, signature)
                    if _hooked():
                        return entry.launch((*tensors, *scalars), active)
                    x, y, z = entry.grid
                    entry.run(x, y, z, active.get_current_stream(entry.device), entry.function,
                              entry.metadata, None, None, None, *tensors, *suffix)
                    return entry.kernel
        return self._first(tensors, scalars, signature)

    def _first(self, tensors: tuple, scalars: tuple, signature=None):
        """Launch through the tuned kernel (table, autotuner, JIT) and keep the known launch
        it took, and the signature it took it under."""
        args = (*tensors, *scalars)
        kernel = self.kernel
        if not hasattr(kernel, "known_launches_on"):
            return kernel[self.grid](*args, **self.constexprs)
        self.kept = None
        if not kernel.known_launches_on():
            return kernel._launch(self.grid, args, self.constexprs)
        generation = _generation
        # A launch known to the kernel (another plan's, or one this site left) is launched and
        # kept; a new one takes the tuned kernel's whole path, which learns it.
        entry = kernel.known.find(self.grid, args, self.constexprs)
        if entry is None:
            compiled = kernel._launch(self.grid, args, self.constexprs)
            entry = kernel.known.find(self.grid, args, self.constexprs)
        else:
            compiled = entry.launch(args, driver.active)
        # A launch whose tensors do not all lead its arguments is matched in full each time.
        if entry is not None and entry.count == len(tensors):
            self.kept = (entry, generation, scalars, (*scalars, *entry.tail), signature)
        return compiled
