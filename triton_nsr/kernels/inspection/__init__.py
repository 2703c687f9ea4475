"""What the compiler makes of the kernels, without a GPU: tools, not part of a layer call.

capture.py records the launches a real layer call makes (kernels stood in for), compiled.py
compiles one for sm_90 as Triton's JIT would and reads the result, traffic.py models each
launch's bytes from L2, and report.py writes docs/kernels.md from all of it:

    python -m triton_nsr.kernels.inspection.report
"""
