"""Latency, FLOPs and fidelity measurement."""
