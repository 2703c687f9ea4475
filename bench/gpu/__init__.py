"""The tools made for GPU runs (`make gpu`, docs/design.md "GPU lease"), apart from the benchmark.

lease.py runs the benchmark's priority-ordered steps within a time budget (its plan in plan.py,
its correctness smoke in smoke.py, its compile accounting in setup_time.py); diagnose.py,
splits.py and layer_probe.py look into one kernel or one layer call when something is wrong or
slow; jit_log.py keeps what Triton's JIT compiled and jit_compare.py sets it beside the kernel
report; host_time.py measures the host time of the layer's launch path.
"""
