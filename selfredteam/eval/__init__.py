"""Evaluation: safety benchmarks, Wilson-interval rates, attack diversity."""
