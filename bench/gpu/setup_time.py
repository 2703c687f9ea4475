"""Where the time before the timed repeats goes: Triton compiles, autotuning, the rest.

A first call of a Triton path compiles kernels and may autotune them; on a short GPU lease that
time decides what gets measured, so the lease records it apart from the kernel times. Compiles
are counted by Triton's compilation listener (``triton.knobs.compilation.listener``, Triton 3.4
and later; on older versions the compile fields stay None); autotuning by the telemetry of
``triton_nsr.kernels.tuned_configs``.
"""

from __future__ import annotations

import time

from triton_nsr.kernels import tuned_configs


class SetupClock:
    """Counts Triton compiles while installed; :meth:`since` splits a span's setup time.

    Example::

        clock = SetupClock().install()
        before = clock.snapshot()
        run_something()
        clock.since(before)   # {'wall_s', 'compiles', 'compile_s', 'autotune_s', ...}
    """

    def __init__(self) -> None:
        self.compiles = 0
        self.cache_hits = 0
        self.compile_s = 0.0
        self.compile_in_autotune_s = 0.0
        self.available = False
        self._previous = None

    def install(self) -> SetupClock:
        try:
            from triton import knobs
        except ImportError:
            return self
        self._previous = knobs.compilation.listener
        knobs.compilation.listener = self._listen
        self.available = True
        return self

    def uninstall(self) -> None:
        if self.available:
            from triton import knobs

            knobs.compilation.listener = self._previous
            self.available = False

    def _listen(self, *, src, metadata, metadata_group, times, cache_hit) -> None:
        if cache_hit:
            self.cache_hits += 1
        else:
            self.compiles += 1
            seconds = times.total * 1e-6
            self.compile_s += seconds
            if tuned_configs.telemetry.autotuning:
                self.compile_in_autotune_s += seconds
        if self._previous is not None:
            self._previous(src=src, metadata=metadata, metadata_group=metadata_group,
                           times=times, cache_hit=cache_hit)

    def snapshot(self) -> dict:
        return {"time": time.perf_counter(), "compiles": self.compiles,
                "cache_hits": self.cache_hits, "compile_s": self.compile_s,
                "compile_in_autotune_s": self.compile_in_autotune_s,
                **tuned_configs.telemetry.counters()}

    def since(self, before: dict) -> dict:
        """Setup spent since ``before``: wall seconds, Triton compiles (count, seconds, disk
        cache hits), autotuning (shape classes, benchmark seconds without its compiles), table
        hits and launches on a first config (no stored or tuned one)."""
        now = self.snapshot()

        def delta(name: str) -> float:
            return now[name] - before[name]

        compiled = self.available
        return {
            "wall_s": round(delta("time"), 3),
            "compiles": int(delta("compiles")) if compiled else None,
            "compile_s": round(delta("compile_s"), 3) if compiled else None,
            "compile_cache_hits": int(delta("cache_hits")) if compiled else None,
            "autotuned": int(delta("autotuned")),
            "autotune_bench_s": round(delta("autotune_s") - delta("compile_in_autotune_s"), 3),
            "table_hits": int(delta("table_hits")),
            "first_config_launches": int(delta("first_config_launches")),
        }
