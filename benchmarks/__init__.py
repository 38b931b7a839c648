"""Benchmarks, run from the project root (``python -m benchmarks.compare_methods``); a regular package so
that no other ``benchmarks`` module on the path (some wheels ship one) can shadow this folder."""
