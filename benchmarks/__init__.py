"""Throughput and scaling benchmarks against the usual ways (loops, PyTorch)."""
