"""Throughput, memory and compile-time benchmarks (python -m benchmarks.run --help)."""
