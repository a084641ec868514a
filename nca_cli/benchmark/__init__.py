"""Benchmarks of single-pass inference: largest input within a memory budget, memory and time
against input size, and the fused step against the PyTorch step."""
