"""detbench's benchmarking and validation engine. Suites import what they need from here."""
from harness.compare import Tolerance, tensors_close, tolerance_for
from harness.suite import Case, Comparison, Impl, Suite

__all__ = ["Case", "Comparison", "Impl", "Suite", "Tolerance", "tensors_close", "tolerance_for"]
