"""Benchmarks and reports for triton_nsr."""
